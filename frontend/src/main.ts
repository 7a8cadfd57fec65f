/**
 * The explorer page: wires the controls to the API (api.ts), the heatmap (heatmap.ts) and the canvas graph
 * (graphview.ts), and keeps the whole view in the URL hash (state.ts).
 *
 * Flow: model -> input (typed prompt or case, optional appended tokens) -> next-token logits -> target and
 * contrast (top-k click, typed text shown with its tokenisation, or #id) -> explanation (a job; heatmap,
 * Δℓ, segment sums) and graph (a job; a CLG1 payload pruned and drawn here). Every change of model or
 * input clears the results that depended on it, and every asynchronous answer is dropped when the input
 * changed while it was computed (`gen`), so a stale result is never shown.
 *
 * Timings (performance.now(), ms) are exposed on `window.__clTimings` for the browser tests and the
 * benchmark: decode_ms, prune_ms, draw_ms, draw_sync_ms (bytes in hand -> decoded, pruned and drawn),
 * first_paint_ms (bytes in hand -> the next frame after the first draw), open_ms (the same from the file
 * pick or the result request, reading / download included), reprune_ms (a slider input -> pruned and
 * redrawn), reprunes (every one).
 */

import { ApiError, Cancelled, cancelJob, getBytes, getFile, getJSON, initToken, type JobInfo, postJSON, waitJob }
  from "./api";
import { decode, FormatError, type Graph, isMid, nodeId, parseNodeId } from "./clg";
import { $, clear, download, fmt, fmtInt, h, signedColour, visible } from "./dom";
import { type GraphView as GV, GraphView, type NodeRef, toSVG } from "./graphview";
import { type Explanation, NORM_HELP, renderHeatmap, renderSegments } from "./heatmap";
import { prune, type Pruned } from "./prune";
import { decodeState, DEFAULT_GRAPH, encodeState, type GraphOptions, type Norm, type TokenChoice, type ViewState }
  from "./state";

interface ModelInfo {
  id: string;
  kind: string;
  label: string;
  available: boolean;
}
interface CaseRow {
  id: string;
  benchmark: string;
  item_id: string;
  status: string;
  clean: boolean;
  passed: boolean;
  model_source: string;
  target_str: string | null;
  contrast_str: string | null;
  delta_logit: number | null;
}
interface CasesResp {
  files: { file: string; cases: CaseRow[] }[];
  errors: { file: string; message: string }[];
}
interface Rollout {
  rank: number;
  token_id: number;
  token_str: string;
  logit: number;
  continuation: string;
  passed: boolean | null;
  source: string;
}
interface CaseDetail extends CaseRow {
  model_id: string | null;
  prompt: string;
  completion: string;
  completion_before_err: string | null;
  failure_index: number | null;
  target_id: number | null;
  contrast_id: number | null;
  details: Record<string, unknown>;
  method: string | null;
  rollouts: Rollout[];
}
interface TopRow {
  rank: number;
  id: number;
  token: string;
  logit: number;
}
interface LogitsResp {
  n_tokens: number;
  tokens: string[];
  ids: number[];
  top: TopRow[];
}
interface TokenizeResp {
  ids: number[];
  pieces: string[];
  single: boolean;
}
interface NeuronsResp {
  kind: string;
  total: number;
  size?: number;
  rows: Record<string, unknown>[];
}

interface Timings {
  decode_ms?: number;
  prune_ms?: number;
  draw_ms?: number;
  first_paint_ms?: number;
  draw_sync_ms?: number;
  open_ms?: number;
  reprune_ms?: number;
  reprunes: number[];
  edges?: number;
  kept?: number;
  n?: number;
  layers?: number;
  bytes?: number;
}

declare global {
  interface Window {
    __clTimings: Timings;
    __clReady?: boolean;
    __clView?: GV;
    __clGraphJob?: string | null;
  }
}

const timings: Timings = { reprunes: [] };
window.__clTimings = timings;

let S: ViewState = decodeState(location.hash);
let models: ModelInfo[] = [];
let logits: LogitsResp | null = null;
let explanation: Explanation | null = null;
let graph: Graph | null = null;
let graphBytes: ArrayBuffer | null = null;
let graphJob: string | null = null;
let graphSource = "";
let pruned: Pruned | null = null;
let currentJob: string | null = null;
let gen = 0; // bumped whenever the input changes: answers for an older input are dropped

const view = new GraphView($<HTMLCanvasElement>("#graph-canvas"), {
  onSelect: (node, additive) => selectNode(node, additive),
  onHover: (node, x, y) => showTooltip(node, x, y),
});
window.__clView = view;

// ------------------------------------------------------------------------------------- small things
function saveURL(): void {
  const hash = encodeState(S);
  history.replaceState(null, "", `${location.pathname}${location.search}${hash ? `#${hash}` : ""}`);
}

let saveTimer = 0;
function saveURLSoon(): void {
  clearTimeout(saveTimer);
  saveTimer = window.setTimeout(saveURL, 150);
}

function showError(e: unknown): void {
  if (e instanceof Cancelled) {
    setNote("Cancelled.");
    return;
  }
  const msg = e instanceof ApiError ? e.message : e instanceof FormatError ? e.message
    : e instanceof Error ? `${e.name}: ${e.message}` : String(e);
  $("#error-text").textContent = msg.split("\n")[0];
  $("#error").hidden = false;
}

function clearError(): void {
  $("#error").hidden = true;
}

function setNote(text: string): void {
  $("#server-status").textContent = text;
}

async function guard(fn: () => Promise<void>): Promise<void> {
  clearError();
  try {
    await fn();
  } catch (e) {
    showError(e);
  }
}

function apiInput(append: number[] = S.append): Record<string, unknown> {
  const base: Record<string, unknown> = S.input.kind === "case"
    ? { case: { file: S.input.file, id: S.input.id } }
    : { prompt: S.input.prompt, chat: S.input.chat };
  if (append.length) base.append = append;
  return base;
}

function requireInput(): void {
  if (!S.model) throw new ApiError("choose a model first (step 1)", 400, "bad_request");
  if (S.input.kind === "prompt" && !S.input.prompt) throw new ApiError("type a prompt first (step 2)", 400, "bad_request");
}

function choiceText(c: TokenChoice, dflt: string): string {
  if (c === null) return dflt;
  if ("id" in c) {
    const row = logits?.top.find((r) => r.id === c.id);
    return row ? `${JSON.stringify(row.token)} #${c.id}` : `#${c.id}`;
  }
  return JSON.stringify(c.text);
}

// ------------------------------------------------------------------------------------------ jobs
async function runJob(label: string, start: Promise<JobInfo>): Promise<JobInfo> {
  const info = await start;
  if (info.status === "done") return info;
  currentJob = info.job;
  $("#job-label").textContent = label;
  const bar = $<HTMLProgressElement>("#job-progress");
  bar.removeAttribute("value");
  $("#job-stage").textContent = info.status === "queued" ? "queued" : "";
  $("#job").hidden = false;
  try {
    return await waitJob(info, (p, status) => {
      if (p.total && p.total > 0) {
        bar.max = p.total;
        bar.value = p.done ?? 0;
      }
      $("#job-stage").textContent = [p.stage ?? status, p.total ? `${p.done ?? 0}/${p.total}` : ""]
        .filter(Boolean).join(" ");
    });
  } finally {
    if (currentJob === info.job) {
      currentJob = null;
      $("#job").hidden = true;
    }
  }
}

// ---------------------------------------------------------------------------------- invalidation
/** The input (model, prompt, case, appended ids) changed: everything computed from it goes. */
function inputChanged(): void {
  gen++;
  logits = null;
  clearResults();
  S.pins = [];
  S.labels = {};
  S.groups = [];
  S.selected = null;
  renderTopK();
  $("#continuation").hidden = true;
  saveURLSoon();
}

/** Target or contrast changed: explanation, graph and comparison go (the logits stay). */
function clearResults(): void {
  gen++;
  explanation = null;
  S.explained = false;
  if (graphJob !== null || S.graph) setGraph(null, null, "");
  S.graph = null;
  $("#dl").textContent = "";
  const hm = $("#heatmap");
  clear(hm);
  hm.classList.add("muted");
  hm.textContent = "Press “Explain” to see which input tokens push towards the target (red) or the contrast (blue).";
  clear($("#segments"));
  $("#compare-card").hidden = true;
  S.compare = null;
  saveURLSoon();
}

// ------------------------------------------------------------------------------------------ models
async function loadModels(): Promise<void> {
  const r = await getJSON<{ models: ModelInfo[] }>("/api/models");
  models = r.models;
  for (const sel of [$<HTMLSelectElement>("#model"), $<HTMLSelectElement>("#compare-model")]) {
    clear(sel);
    sel.append(h("option", { value: "" }, sel.id === "model" ? "choose a model…" : "second model…"));
    const kinds: Record<string, string> = { catalog: "catalog", folder: "model folder", random: "tiny random (tests)" };
    const groups = new Map<string, HTMLOptGroupElement>();
    for (const m of models) {
      let og = groups.get(m.kind);
      if (!og) {
        og = h("optgroup", { label: kinds[m.kind] ?? m.kind });
        groups.set(m.kind, og);
        sel.append(og);
      }
      og.append(h("option", { value: m.id, disabled: !m.available }, `${m.label}${m.available ? "" : " (not downloaded)"}`));
    }
  }
  if (!models.length) $("#model-note").textContent = "The server offers no models: start it with --models DIR.";
}

function setModel(id: string | null): void {
  S.model = id;
  $<HTMLSelectElement>("#model").value = id ?? "";
  const m = models.find((x) => x.id === id);
  $("#model-note").textContent = m ? `${m.id}${m.kind === "random" ? " — random weights: the numbers mean nothing" : ""}` : "";
}

// ------------------------------------------------------------------------------------------- cases
async function loadCases(): Promise<void> {
  const sel = $<HTMLSelectElement>("#case");
  let r: CasesResp;
  try {
    r = await getJSON<CasesResp>("/api/cases");
  } catch (e) {
    clear(sel);
    sel.append(h("option", { value: "" }, "no cases (start the server with --cases DIR)"));
    if (!(e instanceof ApiError && e.status === 404)) throw e;
    return;
  }
  clear(sel);
  const n = r.files.reduce((a, f) => a + f.cases.length, 0);
  sel.append(h("option", { value: "" }, n ? `choose one of ${n} cases…` : "no cases (start the server with --cases DIR)"));
  for (const f of r.files) {
    const og = h("optgroup", { label: f.file });
    for (const c of f.cases) {
      const verdict = c.status === "localised" ? `${c.clean ? "clean" : "not clean"}, Δℓ ${fmt(c.delta_logit, 3)}` : c.status;
      og.append(h("option", { value: `${f.file}::${c.id}`, disabled: c.status !== "localised" },
        `${c.id} — ${c.passed ? "passed" : "failed"}, ${verdict}`));
    }
    sel.append(og);
  }
  if (r.errors.length) {
    $("#case-info").append(h("p", { class: "muted small" },
      `Unreadable case files: ${r.errors.map((e) => `${e.file}: ${e.message}`).join("; ")}`));
  }
}

async function showCase(file: string, id: string): Promise<void> {
  const g0 = gen;
  const c = await getJSON<CaseDetail>(`/api/case?file=${encodeURIComponent(file)}&id=${encodeURIComponent(id)}`);
  if (g0 !== gen) return;

  const box = $("#case-info");
  clear(box);
  const before = c.completion_before_err ?? "";
  box.append(
    h("p", {}, h("b", {}, c.benchmark), ` item ${c.item_id} · `,
      h("span", { class: c.passed ? "pass" : "fail" }, c.passed ? "✓ passed" : "✗ failed"),
      ` · ${c.status}${c.method ? ` by ${c.method}` : ""} · model ${c.model_source}`),
    h("p", { class: "small" }, "Failure token ", h("b", { class: "tgt" }, JSON.stringify(c.target_str)),
      " (target) vs ", h("b", { class: "ctr" }, JSON.stringify(c.contrast_str)), ` (contrast), Δℓ = ${fmt(c.delta_logit)}`),
    h("div", { class: "completion", title: "the model's completion; the failure token is marked" },
      h("span", { class: "muted" }, "completion: "), before,
      h("mark", { class: "fail-tok" }, c.target_str ?? ""), c.completion.slice(before.length + (c.target_str ?? "").length)),
  );
  if (c.rollouts.length) {
    const t = h("table", { class: "rollouts" }, h("thead", {}, h("tr", {}, h("th", {}, "rank"), h("th", {}, "token"),
      h("th", { class: "num" }, "logit"), h("th", {}, "verdict"), h("th", {}, "continuation"))));
    const b = h("tbody");
    for (const r of c.rollouts) {
      b.append(h("tr", {}, h("td", { class: "num" }, r.rank), h("td", { class: "mono" }, visible(r.token_str)),
        h("td", { class: "num" }, fmt(r.logit)),
        h("td", {}, r.passed === null ? "–" : h("span", { class: r.passed ? "pass" : "fail" }, r.passed ? "✓" : "✗")),
        h("td", { class: "cont", title: r.continuation }, r.continuation.slice(0, 80))));
    }
    t.append(b);
    box.append(h("p", { class: "small muted" }, "Rollouts: the top tokens at the failure position, continued greedily and re-scored"), t);
  }
  if (c.model_id && c.model_id !== S.model && models.some((m) => m.id === c.model_id && m.available)) {
    setModel(c.model_id);
    box.append(h("p", { class: "small muted" }, `Model set to the case's model, ${c.model_id}.`));
  } else if (!c.model_id) {
    box.append(h("p", { class: "small muted" }, `The case's model (${c.model_source}) is not offered by this server; pick one that shares its tokenizer.`));
  }
}

// ------------------------------------------------------------------------------------------ logits
async function loadLogits(): Promise<void> {
  requireInput();
  const g0 = gen;
  const r = await postJSON<LogitsResp>("/api/logits", { model: S.model, input: apiInput(), k: 10 });
  if (g0 !== gen) return;
  logits = r;
  renderTopK();
  updateChoices();
}

function renderTopK(): void {
  const box = $("#topk");
  clear(box);
  $("#topk-meta").textContent = "";
  if (!logits) {
    box.classList.add("muted");
    box.textContent = "Choose a model and an input, then press “Show next tokens”.";
    return;
  }
  box.classList.remove("muted");
  const tail = logits.tokens.slice(-6).map(visible).join("");
  $("#topk-meta").textContent = `after ${logits.n_tokens} tokens (…${tail})`;
  const t = h("table", { class: "topk" }, h("thead", {}, h("tr", {}, h("th", { class: "num" }, "rank"),
    h("th", {}, "token"), h("th", { class: "num" }, "id"), h("th", { class: "num" }, "logit"), h("th", {}, "use as"))));
  const b = h("tbody");
  const tid = S.target && "id" in S.target ? S.target.id : explanation?.target.id;
  const cid = S.contrast && "id" in S.contrast ? S.contrast.id : explanation?.contrast.id;
  for (const row of logits.top) {
    const isT = row.id === tid;
    const isC = row.id === cid;
    b.append(h("tr", { "data-id": row.id, class: isT ? "is-target" : isC ? "is-contrast" : "" },
      h("td", { class: "num" }, row.rank), h("td", { class: "mono tokcell" }, visible(row.token)),
      h("td", { class: "num muted" }, row.id), h("td", { class: "num" }, fmt(row.logit)),
      h("td", {},
        h("button", { type: "button", class: "mini t-btn", onclick: () => setChoice("target", { id: row.id }),
          title: "explain this token as the target" }, "target"),
        h("button", { type: "button", class: "mini c-btn", onclick: () => setChoice("contrast", { id: row.id }),
          title: "use this token as the contrast" }, "contrast"),
        h("button", { type: "button", class: "mini", onclick: () => void guard(() => continueWith(row)),
          title: "append this token and continue greedily" }, "continue ▸"))));
  }
  t.append(b);
  box.append(t);
}

async function continueWith(row: TopRow): Promise<void> {
  requireInput();
  const g0 = gen;
  const r = await postJSON<{ ids: number[]; text: string; tokens: string[]; stopped: boolean }>("/api/continue", {
    model: S.model, input: apiInput([...S.append, row.id]), max_new_tokens: 32,
  });
  if (g0 !== gen) return;
  const box = $("#continuation");
  clear(box);
  box.hidden = false;
  box.append(
    h("div", { class: "small muted" }, `With ${JSON.stringify(row.token)} appended, the model continues greedily${r.stopped ? " (and stops)" : ""}:`),
    h("div", { class: "cont-text" }, h("mark", {}, row.token), r.text),
    h("button", { type: "button", class: "mini", onclick: () => appendToken(row.id) },
      `append ${JSON.stringify(row.token)} to the input`),
    h("button", { type: "button", class: "mini link", onclick: () => { box.hidden = true; } }, "close"),
  );
}

function appendToken(id: number): void {
  S.append = [...S.append, id];
  inputChanged();
  renderAppend();
  void guard(loadLogits);
}

function renderAppend(): void {
  const row = $("#append-row");
  row.hidden = S.append.length === 0;
  const chips = $("#append-chips");
  clear(chips);
  for (const id of S.append) chips.append(h("span", { class: "chip mono" }, `#${id}`));
}

// ---------------------------------------------------------------------------------- target, contrast
function setChoice(which: "target" | "contrast", c: TokenChoice): void {
  if (which === "target") S.target = c;
  else S.contrast = c;
  clearResults();
  updateChoices();
  renderTopK();
  saveURL();
}

function updateChoices(): void {
  const isCase = S.input.kind === "case";
  const show = (el: HTMLElement, c: TokenChoice, dflt: string, resolved: { id: number | null; str: string | null } | null) => {
    clear(el);
    if (resolved) {
      el.append(`${JSON.stringify(resolved.str)} #${resolved.id}`);
      if (c === null) el.append(h("span", { class: "muted" }, ` (${dflt})`));
    } else {
      el.append(choiceText(c, dflt));
    }
  };
  show($("#target-show"), S.target, isCase ? "the case's target" : "the top-1 token", explanation?.target ?? null);
  show($("#contrast-show"), S.contrast, isCase ? "the case's contrast" : "the best other token",
    explanation?.contrast ?? null);
}

const tokTimers: Record<string, number> = {};
function onChoiceTyped(which: "target" | "contrast"): void {
  const input = $<HTMLInputElement>(`#${which}-input`);
  const info = $(`#${which}-tok`);
  clearTimeout(tokTimers[which]);
  const v = input.value;
  if (!v) {
    info.textContent = "";
    return;
  }
  if (/^#\d+$/.test(v)) {
    const id = Number(v.slice(1));
    const row = logits?.top.find((r) => r.id === id);
    clear(info);
    info.append(`token id ${id}${row ? ` = ${JSON.stringify(row.token)}` : ""} `, useButton(which, { id }));
    return;
  }
  tokTimers[which] = window.setTimeout(() => void tokenizePreview(which, v), 250);
}

function useButton(which: "target" | "contrast", c: TokenChoice): HTMLButtonElement {
  return h("button", { type: "button", class: "mini", onclick: () => setChoice(which, c) }, `use as ${which}`);
}

async function tokenizePreview(which: "target" | "contrast", text: string): Promise<void> {
  const info = $(`#${which}-tok`);
  if (!S.model) {
    info.textContent = "choose a model to see how this tokenises";
    return;
  }
  try {
    const r = await postJSON<TokenizeResp>("/api/tokenize", { model: S.model, text, input: apiInput() });
    if ($<HTMLInputElement>(`#${which}-input`).value !== text) return;
    clear(info);
    const pieces = h("span", { class: "pieces" });
    r.pieces.forEach((p, k) => pieces.append(h("span", { class: "piece mono", title: `id ${r.ids[k]}` }, visible(p))));
    info.append(pieces, r.single
      ? h("span", { class: "ok" }, ` one token (#${r.ids[0]}) `)
      : h("span", { class: "fail" }, ` ${r.ids.length} tokens: a ${which} must be exactly one token `));
    if (r.single) info.append(useButton(which, { text }));
  } catch (e) {
    info.textContent = e instanceof Error ? e.message : String(e);
  }
}

function onChoiceEnter(which: "target" | "contrast"): void {
  const v = $<HTMLInputElement>(`#${which}-input`).value;
  if (!v) return;
  if (/^#\d+$/.test(v)) setChoice(which, { id: Number(v.slice(1)) });
  else setChoice(which, { text: v });
}

// ------------------------------------------------------------------------------------- explanation
function explainBody(model: string): Record<string, unknown> {
  return { model, input: apiInput(), target: S.target, contrast: S.contrast, method: "attnlrp" };
}

async function fetchExplanation(model: string, label: string): Promise<Explanation> {
  const info = await runJob(label, postJSON<JobInfo>("/api/explain", explainBody(model)));
  return getJSON<Explanation>(`/api/jobs/${encodeURIComponent(info.job)}/result`);
}

async function runExplain(): Promise<void> {
  requireInput();
  const g0 = gen;
  const ex = await fetchExplanation(S.model!, `Explaining with ${S.model}…`);
  if (g0 !== gen) return;
  explanation = ex;
  S.explained = true;
  saveURL();
  renderExplanation();
  updateChoices();
  renderTopK();
}

function renderExplanation(): void {
  const ex = explanation;
  if (!ex) return;
  const dl = $("#dl");
  dl.textContent = `Δℓ = ℓ(${visible(ex.target.str)}) − ℓ(${visible(ex.contrast.str ?? "?")}) = ${fmt(ex.logit_diff)}`;
  dl.title = `target #${ex.target.id}, contrast #${ex.contrast.id}, ${ex.method}, ${fmt(ex.seconds, 3)} s`;
  const hm = $("#heatmap");
  hm.classList.remove("muted");
  renderHeatmap(hm, ex, S.norm, (pos) => jumpToColumn(pos));
  renderSegments($("#segments"), ex, S.norm);
  const ls = ex.layer_sums;
  if (ls && ls.length) {
    const seg = $("#segments");
    seg.append(h("p", { class: "small muted" }, `Σ R per layer (emb, 0, 1, …): ${ls.map((v) => fmt(v, 3)).join(", ")}`));
  }
  $("#norm-help").textContent = NORM_HELP[S.norm];
}

function jumpToColumn(pos: number): void {
  if (!graph) {
    setNote(`token ${pos}: build the graph to see it there`);
    return;
  }
  view.focusColumn(pos);
  const l = 0;
  S.selected = nodeId(graph.layers[l], pos);
  view.selected = pruned && pruned.nodes[l][pos] ? { l, pos } : null;
  renderSide();
  view.draw();
  $("#graph-card").scrollIntoView({ behavior: "auto", block: "start" });
  saveURLSoon();
}

// ------------------------------------------------------------------------------------------- graph
function graphOptions(): GraphOptions {
  const layersText = $<HTMLInputElement>("#opt-layers").value.trim();
  return {
    mid: $<HTMLInputElement>("#opt-mid").checked,
    layers: layersText ? layersText.split(/[\s,]+/).filter(Boolean) : null,
    nodeThreshold: Number($<HTMLInputElement>("#opt-nt").value) || 0,
    sendP: Number($<HTMLInputElement>("#opt-sp").value) || DEFAULT_GRAPH.sendP,
  };
}

function showGraphOptions(o: GraphOptions): void {
  $<HTMLInputElement>("#opt-mid").checked = o.mid;
  $<HTMLInputElement>("#opt-layers").value = o.layers ? o.layers.join(",") : "";
  $<HTMLInputElement>("#opt-nt").value = String(o.nodeThreshold);
  $<HTMLInputElement>("#opt-sp").value = String(o.sendP);
}

async function runGraph(opts: GraphOptions = graphOptions()): Promise<void> {
  requireInput();
  const g0 = gen;
  const body = { ...explainBody(S.model!), mid: opts.mid, layers: opts.layers, node_threshold: opts.nodeThreshold,
    send_p: opts.sendP };
  const info = await runJob(`Building the graph with ${S.model}…`, postJSON<JobInfo>("/api/graph", body));
  const t0 = performance.now();
  const bytes = await getBytes(`/api/jobs/${encodeURIComponent(info.job)}/result`);
  if (g0 !== gen) return;
  S.graph = opts;
  showGraph(bytes, info.job, `${S.model}`, t0);
  saveURL();
}

/** Decode, prune and draw a CLG1 payload; the timings go to window.__clTimings. */
function showGraph(bytes: ArrayBuffer, job: string | null, source: string, tLoad: number): void {
  const t0 = performance.now();
  const g = decode(bytes);
  const t1 = performance.now();
  graphBytes = bytes;
  setGraph(g, job, source);
  const t2 = performance.now();
  timings.decode_ms = t1 - t0;
  timings.draw_sync_ms = t2 - t0;
  timings.edges = g.edges;
  timings.n = g.n;
  timings.layers = g.layers.length;
  timings.bytes = g.bytes;
  requestAnimationFrame(() => {
    const now = performance.now();
    timings.first_paint_ms = now - t0;
    timings.open_ms = now - tLoad;
    document.body.dataset.graphPainted = String(Date.now());
  });
}

function setGraph(g: Graph | null, job: string | null, source: string): void {
  graph = g;
  graphJob = job;
  window.__clGraphJob = job;
  graphSource = source;
  if (!g) graphBytes = null;
  view.setGraph(g);
  const hideMid = $<HTMLInputElement>("#hide-mid");
  hideMid.disabled = !g || !g.layers.some(isMid);
  view.setHideMid(S.hideMid && !hideMid.disabled);
  hideMid.checked = S.hideMid;
  view.pinned = new Set(S.pins);
  view.groups = S.groups;
  view.labels = S.labels;
  const sel = S.selected ? parseNodeId(S.selected) : null;
  view.selected = g && sel && g.layers.includes(sel.layer) && sel.pos < g.n
    ? { l: g.layers.indexOf(sel.layer), pos: sel.pos } : null;
  for (const id of ["#exp-json", "#exp-np"]) {
    const b = $<HTMLButtonElement>(id);
    b.disabled = !g || !job;
    b.dataset.title ??= b.title;
    b.title = g && !job ? "needs a graph built on the server (Build graph); this one was opened from a file"
      : b.dataset.title;
  }
  for (const id of ["#exp-nodes", "#exp-edges", "#exp-png", "#exp-svg", "#exp-clg"]) $<HTMLButtonElement>(id).disabled = !g;
  sizeCanvas();
  if (g) {
    reprune(false);
  } else {
    pruned = null;
    const counts = $("#graph-counts");
    counts.textContent = "";
    delete counts.dataset.edges;
    delete counts.dataset.nodes;
    delete counts.dataset.sent;
    delete document.body.dataset.graphPainted;
    $("#limit-note").hidden = true;
    view.draw();
  }
  renderSide();
}

function sizeCanvas(): void {
  const rows = graph ? graph.layers.filter((l) => !(view.hideMid && isMid(l))).length : 6;
  const c = view.canvas;
  c.style.height = `${Math.max(320, Math.min(760, rows * 22 + 90))}px`;
  view.resize();
}

function reprune(timed: boolean): void {
  if (!graph) return;
  const t0 = performance.now();
  pruned = prune(graph, { p: S.p, tau: S.tau, subgraph: S.subgraph });
  const t1 = performance.now();
  view.setPruned(pruned);
  if (view.selected && !pruned.nodes[view.selected.l][view.selected.pos]) view.selected = null;
  const info = view.draw();
  const t2 = performance.now();
  timings.prune_ms = t1 - t0;
  timings.draw_ms = info.ms;
  timings.kept = pruned.keptEdges;
  if (timed) {
    timings.reprune_ms = t2 - t0;
    timings.reprunes.push(t2 - t0);
  }
  const counts = $("#graph-counts");
  counts.dataset.edges = String(pruned.keptEdges);
  counts.dataset.nodes = String(pruned.keptNodes);
  counts.dataset.sent = String(graph.edges);
  counts.textContent = `${graphSource ? `${graphSource} · ` : ""}${graph.n} tokens × ${graph.layers.length} layers · `
    + `${fmtInt(pruned.keptNodes)} nodes · ${fmtInt(pruned.keptEdges)} of ${fmtInt(graph.edges)} sent edges kept`
    + ` · ${(graph.bytes / 1e6).toFixed(2)} MB`;
  const note = $("#limit-note");
  if (pruned.atLimit.length) {
    note.hidden = false;
    note.textContent = `p = ${S.p} asks for more than the server sent for ${pruned.atLimit.length} of `
      + `${graph.transitions.length} transitions (sent: up to p = ${fmt(pruned.maxP, 3)}); all their sent edges are `
      + "kept. Rebuild with a higher “send p” (Graph options) to prune beyond it.";
  } else if (S.subgraph && pruned.keptEdges === 0) {
    note.hidden = false;
    note.textContent = "Nothing reaches the final node at this p and τ: raise p or lower τ (or untick the subgraph).";
  } else {
    note.hidden = true;
  }
  $("#p-out").textContent = S.p.toFixed(2);
  $("#tau-out").textContent = String(S.tau);
}

// ------------------------------------------------------------------------------------ side panel
function nodeLabel(l: number, pos: number): string {
  if (!graph) return "";
  return `${graph.layers[l]}@${pos} ${JSON.stringify(graph.tokens[pos])}`;
}

function showTooltip(node: NodeRef | null, x: number, y: number): void {
  const tip = $("#tooltip");
  if (!node || !graph) {
    tip.hidden = true;
    return;
  }
  const r = graph.rel[node.l][node.pos];
  tip.textContent = `${nodeLabel(node.l, node.pos)}  R = ${fmt(r, 5)}`;
  tip.hidden = false;
  tip.style.left = `${x + 14}px`;
  tip.style.top = `${y + 10}px`;
}

function selectNode(node: NodeRef | null, additive: boolean): void {
  if (!graph) return;
  if (additive && node) {
    const id = nodeId(graph.layers[node.l], node.pos);
    if (view.multi.has(id)) view.multi.delete(id);
    else view.multi.add(id);
  } else {
    view.selected = node;
    S.selected = node ? nodeId(graph.layers[node.l], node.pos) : null;
    if (!additive) view.multi.clear();
  }
  renderSide();
  view.draw();
  saveURLSoon();
}

function nodeRefOf(id: string): NodeRef | null {
  if (!graph) return null;
  const p = parseNodeId(id);
  if (!p) return null;
  const l = graph.layers.indexOf(p.layer);
  return l >= 0 && p.pos < graph.n ? { l, pos: p.pos } : null;
}

function renderSide(): void {
  const box = $("#side-node");
  clear(box);
  const g = graph;
  const sel = view.selected;
  if (!g || !sel) {
    box.classList.add("muted");
    box.textContent = g ? "Hover a node for its values; click to select it (shift-click: several)." : "";
  } else {
    box.classList.remove("muted");
    const id = nodeId(g.layers[sel.l], sel.pos);
    const r = g.rel[sel.l][sel.pos];
    const pinned = S.pins.includes(id);
    box.append(
      h("div", { class: "node-title", "data-node": id }, h("b", {}, id), " ", h("span", { class: "mono" }, visible(g.tokens[sel.pos]))),
      h("div", { class: "small" }, "R = ", h("b", { "data-r": String(r) }, fmt(r, 5)),
        ` · ${fmt((100 * Math.abs(r)) / Math.max(1e-30, maxAbs(g.rel[sel.l])), 3)}% of the layer's max |R|`),
      h("div", { class: "buttons" },
        h("button", { type: "button", class: "mini", id: "btn-pin", onclick: () => togglePin(id) }, pinned ? "Unpin" : "Pin"),
        h("button", { type: "button", class: "mini", id: "btn-neurons", disabled: !graphJob,
          title: graphJob ? "the hidden dimensions carrying this node's relevance" : "needs a graph built on the server",
          onclick: () => void guard(() => drillNode(sel, "dimensions")) }, "Dimensions"),
        isPost(g.layers[sel.l]) ? h("button", { type: "button", class: "mini", id: "btn-mlp", disabled: !graphJob,
          title: graphJob ? "the MLP neurons of this block at this position" : "needs a graph built on the server",
          onclick: () => void guard(() => drillNode(sel, "mlp_neurons")) }, "MLP neurons") : null,
        h("button", { type: "button", class: "mini link", onclick: () => selectNode(null, false) }, "deselect")),
    );
    box.append(trajectory(g, sel));
    const nb = view.neighbours(sel, 16);
    const inc = nb.filter((x) => x.incoming).slice(0, 8);
    const out = nb.filter((x) => !x.incoming).slice(0, 8);
    const list = (title: string, items: typeof nb) => {
      const ul = h("ul", { class: "edges" });
      for (const { k, e, incoming } of items) {
        const t = g.transitions[k];
        const other = incoming ? { l: t.s, pos: t.cols[e] } : { l: t.t, pos: t.rows[e] };
        const w = t.vals[e];
        const sw = h("span", { class: "swatch" });
        sw.style.backgroundColor = signedColour(w >= 0 ? 1 : -1, 0.8);
        ul.append(h("li", {}, sw, h("button", { type: "button", class: "link", onclick: () => selectNode(other, false) },
          `${incoming ? "←" : "→"} ${nodeLabel(other.l, other.pos)}`), ` w = ${fmt(w)} `,
        h("button", { type: "button", class: "mini", disabled: !graphJob, title: "per-dimension relevance of this edge",
          onclick: () => void guard(() => drillEdge(t.src, t.tgt, t.rows[e], t.cols[e], "edge_dimensions")) }, "dims"),
        isMid(t.src) && isPost(t.tgt) ? h("button", { type: "button", class: "mini", disabled: !graphJob,
          title: "the MLP neurons of this (position-local) edge",
          onclick: () => void guard(() => drillEdge(t.src, t.tgt, t.rows[e], t.cols[e], "mlp_neurons")) }, "mlp")
          : null));
      }
      return [h("div", { class: "small muted" }, title), items.length ? ul : h("div", { class: "small muted" }, "none kept")];
    };
    box.append(...list("strongest incoming edges (from earlier layers)", inc), ...list("strongest outgoing edges", out));
  }
  renderPins();
  renderMulti();
  renderGroups();
}

function maxAbs(a: Float32Array): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]));
  return m;
}

/** The token's relevance across the layers, as a small plot. */
function trajectory(g: Graph, sel: NodeRef): HTMLElement {
  const W = 270;
  const H = 110;
  const c = h("canvas", { width: W, height: H, class: "traj", "aria-label": "relevance of this token across layers" });
  const ctx = c.getContext("2d");
  const layers = g.layers.map((name, l) => ({ name, l })).filter((x) => !(view.hideMid && isMid(x.name)));
  const vals = layers.map((x) => g.rel[x.l][sel.pos]);
  if (ctx && vals.length) {
    const mx = Math.max(1e-30, ...vals.map(Math.abs));
    const X = (k: number) => 28 + (k / Math.max(1, vals.length - 1)) * (W - 40);
    const Y = (v: number) => H / 2 - (v / mx) * (H / 2 - 14);
    ctx.fillStyle = "#fff";
    ctx.fillRect(0, 0, W, H);
    ctx.strokeStyle = "#ccc";
    ctx.beginPath();
    ctx.moveTo(28, Y(0));
    ctx.lineTo(W - 12, Y(0));
    ctx.stroke();
    ctx.strokeStyle = "#555";
    ctx.beginPath();
    vals.forEach((v, k) => (k ? ctx.lineTo(X(k), Y(v)) : ctx.moveTo(X(k), Y(v))));
    ctx.stroke();
    vals.forEach((v, k) => {
      ctx.fillStyle = layers[k].l === sel.l ? "#000" : v >= 0 ? "rgb(214,39,40)" : "rgb(31,119,180)";
      ctx.beginPath();
      ctx.arc(X(k), Y(v), layers[k].l === sel.l ? 3.5 : 2.2, 0, 2 * Math.PI);
      ctx.fill();
    });
    ctx.fillStyle = "#555";
    ctx.font = "10px system-ui, sans-serif";
    ctx.fillText(fmt(mx, 3), 2, 12);
    ctx.fillText(layers[0].name, 22, H - 3);
    ctx.textAlign = "right";
    ctx.fillText(layers[layers.length - 1].name, W - 8, H - 3);
  }
  return h("div", { class: "traj-box" }, h("div", { class: "small muted" }, `token ${sel.pos}: R across layers`), c);
}

function togglePin(id: string): void {
  if (S.pins.includes(id)) {
    S.pins = S.pins.filter((x) => x !== id);
    delete S.labels[id];
  } else {
    S.pins = [...S.pins, id];
  }
  view.pinned = new Set(S.pins);
  renderSide();
  view.draw();
  saveURL();
}

function renderPins(): void {
  const box = $("#pins");
  clear(box);
  if (!S.pins.length) {
    box.classList.add("muted");
    box.textContent = "none: select a node and press “Pin” (p)";
    return;
  }
  box.classList.remove("muted");
  const ul = h("ul", { class: "pins" });
  for (const id of S.pins) {
    const ref = nodeRefOf(id);
    const r = ref && graph ? graph.rel[ref.l][ref.pos] : null;
    const label = h("input", { type: "text", class: "label-input", placeholder: "label", value: S.labels[id] ?? "",
      "aria-label": `label of ${id}` });
    label.addEventListener("change", () => {
      if (label.value) S.labels[id] = label.value;
      else delete S.labels[id];
      view.labels = S.labels;
      view.draw();
      saveURL();
    });
    ul.append(h("li", { "data-node": id },
      h("button", { type: "button", class: "link", onclick: () => ref && selectNode(ref, false) },
        ref && graph ? nodeLabel(ref.l, ref.pos) : id),
      r !== null ? ` R = ${fmt(r)} ` : " ", label,
      h("button", { type: "button", class: "mini", "aria-label": `unpin ${id}`, onclick: () => togglePin(id) }, "×")));
  }
  box.append(ul);
}

function renderMulti(): void {
  const box = $("#side-multi");
  clear(box);
  if (view.multi.size === 0) return;
  const label = h("input", { type: "text", id: "group-label", placeholder: "supernode label", "aria-label": "supernode label" });
  box.append(h("div", { class: "small" }, `${view.multi.size} nodes selected `, label,
    h("button", { type: "button", class: "mini", id: "btn-group", onclick: () => {
      S.groups = [...S.groups, { label: label.value || `group ${S.groups.length + 1}`, nodes: [...view.multi] }];
      view.groups = S.groups;
      view.multi.clear();
      renderSide();
      view.draw();
      saveURL();
    } }, "Group"),
    h("button", { type: "button", class: "mini link", onclick: () => { view.multi.clear(); renderSide(); view.draw(); } }, "clear")));
}

function renderGroups(): void {
  const box = $("#groups");
  clear(box);
  if (!S.groups.length) {
    box.classList.add("muted");
    box.textContent = "none: shift-click nodes, then “Group”";
    return;
  }
  box.classList.remove("muted");
  const ul = h("ul", { class: "groups" });
  S.groups.forEach((grp, k) => {
    let sum = 0;
    for (const id of grp.nodes) {
      const ref = nodeRefOf(id);
      if (ref && graph) sum += graph.rel[ref.l][ref.pos];
    }
    ul.append(h("li", { "data-group": grp.label }, h("b", {}, grp.label), ` ${grp.nodes.length} nodes, Σ R = ${fmt(sum)} `,
      h("button", { type: "button", class: "mini", "aria-label": `remove ${grp.label}`, onclick: () => {
        S.groups = S.groups.filter((_, j) => j !== k);
        view.groups = S.groups;
        renderSide();
        view.draw();
        saveURL();
      } }, "×")));
  });
  box.append(ul);
}

function isPost(layer: string): boolean {
  return /^\d+$/.test(layer);
}

async function drillNode(sel: NodeRef, kind: string): Promise<void> {
  if (!graph || !graphJob) return;
  await neurons({ graph: graphJob, layer: graph.layers[sel.l], pos: sel.pos, top_k: 10, kind },
    `${graph.layers[sel.l]}@${sel.pos}`);
}

async function drillEdge(src: string, tgt: string, j: number, i: number, kind: string): Promise<void> {
  if (!graphJob) return;
  await neurons({ graph: graphJob, edge: { src, tgt, j, i }, top_k: 10, kind }, `edge ${src}@${i} → ${tgt}@${j}`);
}

async function neurons(body: Record<string, unknown>, what: string): Promise<void> {
  const g0 = gen;
  const info = await runJob(`Neuron drill-down of ${what}…`, postJSON<JobInfo>("/api/neurons", body));
  const r = await getJSON<NeuronsResp>(`/api/jobs/${encodeURIComponent(info.job)}/result`);
  if (g0 !== gen) return;
  const box = $("#neurons");
  clear(box);
  const keys = r.rows.length ? Object.keys(r.rows[0]) : [];
  const cols = ["index", "relevance", ...keys.filter((k) => k !== "index" && k !== "relevance")];
  const t = h("table", { class: "neurons" }, h("thead", {}, h("tr", {}, ...cols.map((c) => h("th", {}, c)))));
  const b = h("tbody");
  for (const row of r.rows) {
    b.append(h("tr", {}, ...cols.map((c) => {
      const v = row[c];
      return h("td", { class: typeof v === "number" ? "num" : "" }, typeof v === "number" ? fmt(v) : String(v));
    })));
  }
  t.append(b);
  const kinds: Record<string, string> = { dimensions: "hidden dimensions", mlp_neurons: "MLP neurons",
    edge_dimensions: "per-dimension relevance of the edge" };
  const size = typeof r.size === "number" && r.size > 0 ? ` of ${r.size}` : "";
  box.append(h("h3", {}, `Neurons: ${what}`), h("div", { class: "small muted" },
    `${kinds[r.kind] ?? r.kind}: the top ${r.rows.length}${size} by |relevance| (all together: ${fmt(r.total)})`), t);
}

// ----------------------------------------------------------------------------------------- compare
async function runCompare(): Promise<void> {
  requireInput();
  const b = $<HTMLSelectElement>("#compare-model").value;
  if (!b) throw new ApiError("choose the second model to compare with", 400, "bad_request");
  const g0 = gen;
  if (!explanation) await runExplain();
  if (g0 !== gen || !explanation) return;
  const exB = await fetchExplanation(b, `Explaining with ${b}…`);
  if (g0 !== gen) return;
  S.compare = b;
  saveURL();
  renderCompare(explanation, exB);
}

function renderCompare(a: Explanation, b: Explanation): void {
  const card = $("#compare-card");
  card.hidden = false;
  const box = $("#compare");
  clear(box);
  const col = (ex: Explanation, side: string) => {
    const hm = h("div", { class: "heatmap" });
    renderHeatmap(hm, ex, S.norm, () => undefined, true);
    const seg = h("div", { class: "segments" });
    renderSegments(seg, ex, S.norm);
    return h("div", { class: "compare-col", "data-side": side, "data-dl": String(ex.logit_diff) },
      h("h3", {}, `${side}: ${ex.model}`),
      h("div", { class: "dl" }, `Δℓ = ${fmt(ex.logit_diff)}`),
      h("div", { class: "small muted" }, `target ${JSON.stringify(ex.target.str)} #${ex.target.id} vs contrast `
        + `${JSON.stringify(ex.contrast.str)} #${ex.contrast.id}`), hm, seg);
  };
  box.append(h("p", { class: "small" }, `Δℓ(A) − Δℓ(B) = ${fmt(a.logit_diff - b.logit_diff)}`
    + (a.target.id !== b.target.id || a.contrast.id !== b.contrast.id ? " — note: the two explain different tokens" : "")),
  h("div", { class: "compare-grid" }, col(a, "A"), col(b, "B")));
}

// ----------------------------------------------------------------------------------------- exports
function exportQuery(): string {
  return `p=${S.p}&tau=${S.tau}&subgraph=${S.subgraph ? 1 : 0}`;
}

async function serverExport(format: string, fallback: string): Promise<void> {
  if (!graph) throw new ApiError("build or open a graph first", 400, "bad_request");
  if (!graphJob) {
    if (format === "nodes.csv" || format === "edges.csv") {
      download(new Blob([clientCSV(format)], { type: "text/csv" }), fallback);
      return;
    }
    throw new ApiError("this graph was opened from a file: JSON and Neuronpedia exports need a graph built on the "
      + "server (Build graph)", 400, "bad_request");
  }
  const f = await getFile(`/api/jobs/${encodeURIComponent(graphJob)}/export?format=${encodeURIComponent(format)}&`
    + exportQuery(), fallback);
  download(f.blob, f.name);
}

function csvField(s: string): string {
  return /[",\n\r]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s;
}

function clientCSV(format: string): string {
  const g = graph!;
  const pr = pruned!;
  const lines: string[] = [];
  if (format === "nodes.csv") {
    lines.push("id,layer,pos,token,relevance");
    g.layers.forEach((layer, l) => {
      for (let i = 0; i < g.n; i++) {
        if (pr.nodes[l][i]) lines.push([`${layer}@${i}`, layer, i, csvField(g.tokens[i]), g.rel[l][i]].join(","));
      }
    });
  } else {
    lines.push("source,target,src_layer,src_pos,tgt_layer,tgt_pos,weight");
    g.transitions.forEach((t, k) => {
      const kk = pr.keep[k];
      for (let e = 0; e < kk.length; e++) {
        if (kk[e]) {
          lines.push([`${t.src}@${t.cols[e]}`, `${t.tgt}@${t.rows[e]}`, t.src, t.cols[e], t.tgt, t.rows[e], t.vals[e]]
            .join(","));
        }
      }
    });
  }
  return `${lines.join("\n")}\n`;
}

function exportPNG(): void {
  if (!graph) return;
  view.draw();
  view.canvas.toBlob((blob) => blob && download(blob, "contrastlens-graph.png"), "image/png");
}

function exportSVG(): void {
  if (!graph) return;
  view.draw();
  const svg = toSVG(view, `contrastlens graph ${graphSource}`);
  download(new Blob([svg], { type: "image/svg+xml" }), "contrastlens-graph.svg");
}

// -------------------------------------------------------------------------------------- file open
async function openGraphFile(file: File): Promise<void> {
  const t0 = performance.now();
  const bytes = await file.arrayBuffer();
  gen++;
  showGraph(bytes, null, file.name, t0);
  $("#graph-card").scrollIntoView({ block: "start" });
}

// --------------------------------------------------------------------------------------- wiring
function bind(): void {
  $("#error-close").addEventListener("click", clearError);
  $("#btn-cancel").addEventListener("click", () => {
    if (currentJob) void guard(async () => void (await cancelJob(currentJob!)));
  });
  const help = $("#help");
  const setHelp = (show: boolean) => {
    help.hidden = !show;
    $("#btn-help").setAttribute("aria-expanded", String(show));
    try {
      localStorage.setItem("contrastlens.help", show ? "shown" : "hidden");
    } catch {
      /* private mode */
    }
  };
  let helpPref: string | null = null;
  try {
    helpPref = localStorage.getItem("contrastlens.help");
  } catch {
    /* private mode */
  }
  help.hidden = helpPref === "hidden";
  $("#btn-help").addEventListener("click", () => setHelp(Boolean(help.hidden)));
  $("#help-close").addEventListener("click", () => setHelp(false));

  $<HTMLSelectElement>("#model").addEventListener("change", (ev) => {
    setModel((ev.target as HTMLSelectElement).value || null);
    inputChanged();
  });
  const tabs = (kind: "prompt" | "case") => {
    $("#tab-prompt").classList.toggle("active", kind === "prompt");
    $("#tab-case").classList.toggle("active", kind === "case");
    $("#tab-prompt").setAttribute("aria-selected", String(kind === "prompt"));
    $("#tab-case").setAttribute("aria-selected", String(kind === "case"));
    $("#pane-prompt").hidden = kind !== "prompt";
    $("#pane-case").hidden = kind !== "case";
  };
  $("#tab-prompt").addEventListener("click", () => {
    tabs("prompt");
    if (S.input.kind !== "prompt") {
      S.input = { kind: "prompt", prompt: $<HTMLTextAreaElement>("#prompt").value, chat: $<HTMLInputElement>("#chat").checked };
      inputChanged();
      updateChoices();
    }
  });
  $("#tab-case").addEventListener("click", () => {
    tabs("case");
    const v = $<HTMLSelectElement>("#case").value;
    if (v) selectCase(v);
  });
  tabsFn = tabs;
  $<HTMLTextAreaElement>("#prompt").addEventListener("input", (ev) => {
    S.input = { kind: "prompt", prompt: (ev.target as HTMLTextAreaElement).value, chat: $<HTMLInputElement>("#chat").checked };
    S.append = [];
    renderAppend();
    inputChanged();
    clearTimeout(typingTimer);
    typingTimer = window.setTimeout(() => {
      if (S.model && S.input.kind === "prompt" && S.input.prompt) void guard(loadLogits);
    }, 700);
  });
  $<HTMLTextAreaElement>("#prompt").addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" && (ev.ctrlKey || ev.metaKey)) {
      ev.preventDefault();
      void guard(loadLogits);
    }
  });
  $<HTMLInputElement>("#chat").addEventListener("change", (ev) => {
    if (S.input.kind === "prompt") {
      S.input = { ...S.input, chat: (ev.target as HTMLInputElement).checked };
      inputChanged();
    }
  });
  $<HTMLSelectElement>("#case").addEventListener("change", (ev) => {
    const v = (ev.target as HTMLSelectElement).value;
    if (v) selectCase(v);
  });
  $("#append-clear").addEventListener("click", () => {
    S.append = [];
    renderAppend();
    inputChanged();
    void guard(loadLogits);
  });
  $("#btn-logits").addEventListener("click", () => void guard(loadLogits));
  for (const which of ["target", "contrast"] as const) {
    const inp = $<HTMLInputElement>(`#${which}-input`);
    inp.addEventListener("input", () => onChoiceTyped(which));
    inp.addEventListener("keydown", (ev) => {
      if (ev.key === "Enter") {
        ev.preventDefault();
        onChoiceEnter(which);
      }
    });
    $(`#${which}-auto`).addEventListener("click", () => {
      inp.value = "";
      $(`#${which}-tok`).textContent = "";
      setChoice(which, null);
    });
  }
  $("#btn-explain").addEventListener("click", () => void guard(runExplain));
  $("#btn-graph").addEventListener("click", () => void guard(() => runGraph()));
  $("#btn-compare").addEventListener("click", () => void guard(runCompare));
  $<HTMLSelectElement>("#norm").addEventListener("change", (ev) => {
    S.norm = (ev.target as HTMLSelectElement).value as Norm;
    renderExplanation();
    saveURL();
  });

  const p = $<HTMLInputElement>("#p-slider");
  p.addEventListener("input", () => {
    S.p = Number(p.value);
    reprune(true);
    renderSide();
    saveURLSoon();
  });
  const tau = $<HTMLInputElement>("#tau-slider");
  tau.addEventListener("input", () => {
    S.tau = Number(tau.value);
    reprune(true);
    renderSide();
    saveURLSoon();
  });
  $<HTMLInputElement>("#subgraph").addEventListener("change", (ev) => {
    S.subgraph = (ev.target as HTMLInputElement).checked;
    reprune(true);
    renderSide();
    saveURL();
  });
  $<HTMLInputElement>("#hide-mid").addEventListener("change", (ev) => {
    S.hideMid = (ev.target as HTMLInputElement).checked;
    view.setHideMid(S.hideMid);
    sizeCanvas();
    view.draw();
    renderSide();
    saveURL();
  });
  $("#zoom-in").addEventListener("click", () => { view.zoomBy(1.6); view.draw(); });
  $("#zoom-out").addEventListener("click", () => { view.zoomBy(1 / 1.6); view.draw(); });
  $("#zoom-reset").addEventListener("click", () => { view.resetView(); view.focusCol = null; view.draw(); });

  $("#exp-json").addEventListener("click", () => void guard(() => serverExport("json", "graph.json")));
  $("#exp-np").addEventListener("click", () => void guard(() => serverExport("neuronpedia", "graph-neuronpedia.json")));
  $("#exp-nodes").addEventListener("click", () => void guard(() => serverExport("nodes.csv", "nodes.csv")));
  $("#exp-edges").addEventListener("click", () => void guard(() => serverExport("edges.csv", "edges.csv")));
  $("#exp-png").addEventListener("click", exportPNG);
  $("#exp-svg").addEventListener("click", exportSVG);
  $("#exp-clg").addEventListener("click", () => {
    const key = String(graph?.header.key ?? "graph").slice(0, 12);
    if (graphBytes) download(new Blob([graphBytes], { type: "application/octet-stream" }), `graph-${key}.clg1`);
  });
  $<HTMLInputElement>("#open-graph").addEventListener("change", (ev) => {
    const f = (ev.target as HTMLInputElement).files?.[0];
    if (f) void guard(() => openGraphFile(f));
    (ev.target as HTMLInputElement).value = "";
  });
  $("#btn-share").addEventListener("click", () => {
    saveURL();
    const url = location.href;
    const done = () => setNote("Share link copied (the access token is not part of it).");
    if (navigator.clipboard?.writeText) navigator.clipboard.writeText(url).then(done, () => prompt("Copy this link:", url));
    else prompt("Copy this link:", url);
  });

  window.addEventListener("resize", () => {
    if (graph) {
      view.resize();
      view.draw();
    }
  });
  document.addEventListener("keydown", (ev) => {
    const tag = (ev.target as HTMLElement).tagName;
    if (ev.key === "Escape") {
      if (view.selected || view.multi.size) selectNode(null, false);
      return;
    }
    if (tag === "INPUT" || tag === "TEXTAREA" || tag === "SELECT" || ev.ctrlKey || ev.metaKey || ev.altKey) return;
    const k = ev.key;
    if (k === "?") setHelp(Boolean(help.hidden));
    else if (k === "/") {
      ev.preventDefault();
      $("#prompt").focus();
    } else if (k === "e") void guard(runExplain);
    else if (k === "g") void guard(() => runGraph());
    else if (k === "+" || k === "=") { view.zoomBy(1.6); view.draw(); }
    else if (k === "-" || k === "_") { view.zoomBy(1 / 1.6); view.draw(); }
    else if (k === "0") { view.resetView(); view.draw(); }
    else if (k === "p" && view.selected && graph) togglePin(nodeId(graph.layers[view.selected.l], view.selected.pos));
    else if (k.startsWith("Arrow") && graph) {
      ev.preventDefault();
      const w = view.vx1 - view.vx0;
      const hh = view.vy1 - view.vy0;
      if (k === "ArrowLeft") view.pan(-w * 0.2, 0);
      if (k === "ArrowRight") view.pan(w * 0.2, 0);
      if (k === "ArrowUp") view.pan(0, hh * 0.2);
      if (k === "ArrowDown") view.pan(0, -hh * 0.2);
      view.draw();
    } else return;
  });
}

let typingTimer = 0;
let tabsFn: (kind: "prompt" | "case") => void = () => undefined;

function selectCase(v: string): void {
  const sep = v.lastIndexOf("::");
  const file = v.slice(0, sep);
  const id = v.slice(sep + 2);
  S.input = { kind: "case", file, id };
  S.append = [];
  renderAppend();
  inputChanged();
  updateChoices();
  void guard(async () => {
    await showCase(file, id);
    await loadLogits();
  });
}

// ---------------------------------------------------------------------------------------- startup
/** Apply the state from the URL: inputs, then logits, explanation, graph and view, as far as it goes. */
async function restore(): Promise<void> {
  const s = S;
  if (s.model && models.some((m) => m.id === s.model)) setModel(s.model);
  else if (s.model) throw new ApiError(`the link's model ${s.model} is not offered by this server`, 404, "not_found");
  if (s.input.kind === "prompt") {
    $<HTMLTextAreaElement>("#prompt").value = s.input.prompt;
    $<HTMLInputElement>("#chat").checked = s.input.chat;
    tabsFn("prompt");
  } else {
    tabsFn("case");
    $<HTMLSelectElement>("#case").value = `${s.input.file}::${s.input.id}`;
  }
  $<HTMLSelectElement>("#norm").value = s.norm;
  $<HTMLInputElement>("#p-slider").value = String(s.p);
  $<HTMLInputElement>("#tau-slider").value = String(s.tau);
  $<HTMLInputElement>("#subgraph").checked = s.subgraph;
  $<HTMLInputElement>("#hide-mid").checked = s.hideMid;
  $("#p-out").textContent = s.p.toFixed(2);
  $("#tau-out").textContent = String(s.tau);
  if (s.compare) $<HTMLSelectElement>("#compare-model").value = s.compare;
  showGraphOptions(s.graph ?? DEFAULT_GRAPH);
  renderAppend();
  updateChoices();
  const hasInput = s.input.kind === "case" || s.input.prompt !== "";
  if (!s.model || !hasInput) return;
  const keep = { explained: s.explained, graph: s.graph, compare: s.compare, pins: s.pins, labels: s.labels,
    groups: s.groups, selected: s.selected };
  if (s.input.kind === "case") await showCase(s.input.file, s.input.id);
  await loadLogits();
  if (keep.explained || keep.compare) await runExplain();
  if (keep.graph) {
    Object.assign(S, { pins: keep.pins, labels: keep.labels, groups: keep.groups, selected: keep.selected });
    await runGraph(keep.graph);
  }
  if (keep.compare) {
    $<HTMLSelectElement>("#compare-model").value = keep.compare;
    await runCompare();
  }
  saveURL();
}

/** Resolve the canvas fonts once up front (the first use of a font can cost a font-config lookup). */
function warmFonts(): void {
  const ctx = document.createElement("canvas").getContext("2d");
  if (!ctx) return;
  for (const f of ["11px system-ui, sans-serif", "10px ui-monospace, monospace", "14px system-ui, sans-serif"]) {
    ctx.font = f;
    ctx.fillText("Ag0↵", 0, 10);
  }
}

async function start(): Promise<void> {
  initToken();
  warmFonts();
  bind();
  sizeCanvas();
  view.draw();
  try {
    const health = await getJSON<{ ok: boolean; version: string; wire_version: number; auth: boolean }>("/api/health");
    setNote(`server ${health.version} · wire v${health.wire_version}${health.auth ? " · token" : ""}`);
    if (health.wire_version !== 1) {
      throw new ApiError(`this page speaks wire version 1 but the server speaks ${health.wire_version}: reinstall `
        + "contrastlens so that both come from the same version", 400, "wire");
    }
    await loadModels();
    await loadCases();
  } catch (e) {
    setNote("server unavailable");
    showError(e);
    window.__clReady = true;
    document.body.dataset.restored = "1";
    return;
  }
  window.__clReady = true;
  await guard(restore);
  document.body.dataset.restored = "1";
}

void start();
