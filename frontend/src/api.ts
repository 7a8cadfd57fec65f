/**
 * The client side of the wire contract (docs/explorer-api.md): JSON requests under /api/, the token, the
 * one-line errors, and jobs followed over Server-Sent Events (with a polling fallback) and cancelled with
 * DELETE.
 *
 * Token: read once from the page URL (`?token=`), kept in sessionStorage, removed from the address bar,
 * and sent as `Authorization: Bearer <token>`; EventSource cannot set headers, so it gets `?token=`.
 */

const TOKEN_KEY = "contrastlens.token";

export function initToken(): void {
  const url = new URL(location.href);
  const t = url.searchParams.get("token");
  if (t !== null) {
    try {
      sessionStorage.setItem(TOKEN_KEY, t);
    } catch {
      memToken = t;
    }
    url.searchParams.delete("token");
    history.replaceState(null, "", url.pathname + (url.search === "?" ? "" : url.search) + url.hash);
  }
}

let memToken: string | null = null;

export function token(): string | null {
  try {
    return sessionStorage.getItem(TOKEN_KEY) ?? memToken;
  } catch {
    return memToken;
  }
}

export class ApiError extends Error {
  constructor(message: string, readonly status: number, readonly code: string) {
    super(message);
    this.name = "ApiError";
  }
}

export class Cancelled extends Error {
  constructor() {
    super("cancelled");
    this.name = "Cancelled";
  }
}

function headers(json: boolean): Record<string, string> {
  const h: Record<string, string> = {};
  const t = token();
  if (t) h.Authorization = `Bearer ${t}`;
  if (json) h["Content-Type"] = "application/json";
  return h;
}

/** One line from anything the server (or the network) says. */
async function failure(r: Response): Promise<ApiError> {
  let msg = `${r.status} ${r.statusText}`.trim();
  let code = "http";
  try {
    const body = await r.json();
    if (body && body.error && typeof body.error.message === "string") {
      msg = body.error.message;
      code = String(body.error.code ?? code);
    } else if (body && typeof body.detail === "string") {
      msg = body.detail;
    }
  } catch {
    /* not JSON */
  }
  return new ApiError(msg.split("\n")[0], r.status, code);
}

async function send(method: string, path: string, body?: unknown): Promise<Response> {
  let r: Response;
  try {
    r = await fetch(path, {
      method, headers: headers(body !== undefined), body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch {
    throw new ApiError("cannot reach the explorer server (is `contrastlens serve` still running?)", 0, "network");
  }
  if (!r.ok) throw await failure(r);
  return r;
}

export async function getJSON<T>(path: string): Promise<T> {
  return (await send("GET", path)).json() as Promise<T>;
}

export async function postJSON<T>(path: string, body: unknown): Promise<T> {
  return (await send("POST", path, body)).json() as Promise<T>;
}

export async function del<T>(path: string): Promise<T> {
  return (await send("DELETE", path)).json() as Promise<T>;
}

export async function getBytes(path: string): Promise<ArrayBuffer> {
  return (await send("GET", path)).arrayBuffer();
}

/** A download: the body and the file name from Content-Disposition (or `fallback`). */
export async function getFile(path: string, fallback: string): Promise<{ blob: Blob; name: string }> {
  const r = await send("GET", path);
  const cd = r.headers.get("Content-Disposition") ?? "";
  const m = /filename\*=UTF-8''([^;]+)|filename="?([^";]+)"?/i.exec(cd);
  const name = m ? decodeURIComponent(m[1] ?? m[2]) : fallback;
  return { blob: await r.blob(), name };
}

export function withToken(path: string): string {
  const t = token();
  if (!t) return path;
  return `${path}${path.includes("?") ? "&" : "?"}token=${encodeURIComponent(t)}`;
}

// ------------------------------------------------------------------------------------------------ jobs
export interface Progress {
  stage?: string;
  done?: number;
  total?: number;
}

export interface JobInfo {
  job: string;
  kind?: string;
  status: "queued" | "running" | "done" | "failed" | "cancelled";
  progress?: Progress;
  error?: { status?: number; code?: string; message?: string } | null;
  cached?: boolean;
  key?: string;
}

function jobFailure(info: JobInfo): ApiError {
  const e = info.error ?? {};
  return new ApiError(String(e.message ?? "the job failed"), Number(e.status ?? 500), String(e.code ?? "failed"));
}

/**
 * Wait for a job: progress over SSE (`/api/jobs/{job}/events`), then resolve on `done`, reject with the
 * job's error on `failed` and with Cancelled on `cancelled`. If the event stream breaks, poll instead.
 */
export function waitJob(start: JobInfo, onProgress: (p: Progress, status: string) => void): Promise<JobInfo> {
  if (start.status === "done") return Promise.resolve(start);
  if (start.status === "failed") return Promise.reject(jobFailure(start));
  if (start.status === "cancelled") return Promise.reject(new Cancelled());
  const id = encodeURIComponent(start.job);
  return new Promise<JobInfo>((resolve, reject) => {
    let finished = false;
    const finish = (info: JobInfo) => {
      if (finished) return;
      finished = true;
      if (info.status === "done") resolve(info);
      else if (info.status === "cancelled") reject(new Cancelled());
      else reject(jobFailure(info));
    };
    const poll = async () => {
      while (!finished) {
        try {
          const info = await getJSON<JobInfo>(`/api/jobs/${id}`);
          if (info.progress) onProgress(info.progress, info.status);
          if (info.status === "done" || info.status === "failed" || info.status === "cancelled") {
            finish(info);
            return;
          }
        } catch (e) {
          finished = true;
          reject(e);
          return;
        }
        await new Promise((r) => setTimeout(r, 400));
      }
    };
    let es: EventSource;
    try {
      es = new EventSource(withToken(`/api/jobs/${id}/events`));
    } catch {
      void poll();
      return;
    }
    const parse = (ev: MessageEvent): JobInfo | null => {
      try {
        return JSON.parse(ev.data as string) as JobInfo;
      } catch {
        return null;
      }
    };
    es.addEventListener("progress", (ev) => {
      const p = parse(ev as MessageEvent) as Progress | null;
      if (p) onProgress(p, "running");
    });
    for (const kind of ["done", "failed", "cancelled"]) {
      es.addEventListener(kind, (ev) => {
        es.close();
        const info = parse(ev as MessageEvent) ?? { job: start.job, status: kind as JobInfo["status"] };
        finish({ ...info, status: info.status ?? (kind as JobInfo["status"]) });
      });
    }
    es.onerror = () => {
      if (finished) return;
      es.close();
      void poll(); // the stream broke (proxy, server restart): ask directly
    };
  });
}

export function cancelJob(job: string): Promise<unknown> {
  return del(`/api/jobs/${encodeURIComponent(job)}`);
}
