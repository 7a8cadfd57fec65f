/**
 * The whole view state, and its round trip through the URL hash (the "share" link).
 *
 * The hash is `#` + URLSearchParams: readable keys, every value percent-encoded, defaults left out, so
 * `decodeState(encodeState(s))` equals `s` for every valid state (tested). Unknown keys are ignored and
 * malformed values fall back to their defaults: an old or hand-edited link still opens.
 *
 *   m      model id                      cmp   second model (compare)
 *   case   "<file>::<id>"                prompt, chat=1   a typed prompt (chat template on)
 *   app    appended ids "1,2,3"          t, c  target / contrast: "#123" (an id) or "=text"
 *   norm   heatmap normalisation         x=1   an explanation was run
 *   g=1    a graph was built; gmid=0 (no mid nodes), glayers=emb,0,3, gnt=<node threshold>, gsp=<send p>
 *   p, tau, sub=1, hidemid=1             the pruning / view of the graph
 *   pins   "layer@pos,..."               labels "layer@pos:text|..."   groups "label:a@1,b@2|..."
 *   sel    the selected node
 */

export type TokenChoice = { id: number } | { text: string } | null;

export type InputState =
  | { kind: "prompt"; prompt: string; chat: boolean }
  | { kind: "case"; file: string; id: string };

export type Norm = "max_abs" | "sum_abs" | "abs_sum";
export const NORMS: Norm[] = ["max_abs", "sum_abs", "abs_sum"];

export interface GraphOptions {
  mid: boolean;
  /** null: every layer */
  layers: string[] | null;
  nodeThreshold: number;
  sendP: number;
}

export interface Group {
  label: string;
  nodes: string[];
}

export interface ViewState {
  model: string | null;
  compare: string | null;
  input: InputState;
  append: number[];
  target: TokenChoice;
  contrast: TokenChoice;
  norm: Norm;
  explained: boolean;
  graph: GraphOptions | null;
  p: number;
  tau: number;
  subgraph: boolean;
  hideMid: boolean;
  pins: string[];
  labels: Record<string, string>;
  groups: Group[];
  selected: string | null;
}

export const DEFAULT_GRAPH: GraphOptions = { mid: true, layers: null, nodeThreshold: 0, sendP: 0.98 };

export function defaultState(): ViewState {
  return {
    model: null, compare: null, input: { kind: "prompt", prompt: "", chat: false }, append: [], target: null,
    contrast: null, norm: "max_abs", explained: false, graph: null, p: 0.9, tau: 0, subgraph: false, hideMid: false,
    pins: [], labels: {}, groups: [], selected: null,
  };
}

function choiceToString(c: TokenChoice): string | null {
  if (c === null) return null;
  return "id" in c ? `#${c.id}` : `=${c.text}`;
}

function choiceFromString(s: string | null): TokenChoice {
  if (s === null || s === "") return null;
  if (s.startsWith("#")) {
    const id = Number(s.slice(1));
    return Number.isInteger(id) && id >= 0 ? { id } : null;
  }
  if (s.startsWith("=")) return { text: s.slice(1) };
  return null;
}

const NODE_RE = /^[A-Za-z0-9_.]+@\d+$/;

function num(s: string | null, dflt: number, lo: number, hi: number): number {
  if (s === null || s.trim() === "") return dflt;
  const v = Number(s);
  return Number.isFinite(v) && v >= lo && v <= hi ? v : dflt;
}

function ints(s: string | null): number[] {
  if (!s) return [];
  const out: number[] = [];
  for (const part of s.split(",")) {
    const v = Number(part);
    if (part !== "" && Number.isInteger(v) && v >= 0) out.push(v);
  }
  return out;
}

function nodes(s: string | null): string[] {
  if (!s) return [];
  return s.split(",").filter((x) => NODE_RE.test(x));
}

// group labels and node labels may hold any text: escape the separators ("|", ":", ",", "\") with "\"
function esc(s: string): string {
  return s.replace(/[\\|:,]/g, (ch) => `\\${ch}`);
}

/** Split on an unescaped separator. */
function splitEsc(s: string, sep: string): string[] {
  const out: string[] = [];
  let cur = "";
  for (let i = 0; i < s.length; i++) {
    const ch = s[i];
    if (ch === "\\" && i + 1 < s.length) {
      cur += ch + s[i + 1];
      i++;
    } else if (ch === sep) {
      out.push(cur);
      cur = "";
    } else {
      cur += ch;
    }
  }
  out.push(cur);
  return out;
}

function unesc(s: string): string {
  return s.replace(/\\(.)/g, "$1");
}

export function encodeState(s: ViewState): string {
  const q = new URLSearchParams();
  if (s.model) q.set("m", s.model);
  if (s.compare) q.set("cmp", s.compare);
  if (s.input.kind === "case") {
    q.set("case", `${s.input.file}::${s.input.id}`);
  } else {
    if (s.input.prompt) q.set("prompt", s.input.prompt);
    if (s.input.chat) q.set("chat", "1");
  }
  if (s.append.length) q.set("app", s.append.join(","));
  const t = choiceToString(s.target);
  if (t !== null) q.set("t", t);
  const c = choiceToString(s.contrast);
  if (c !== null) q.set("c", c);
  if (s.norm !== "max_abs") q.set("norm", s.norm);
  if (s.explained) q.set("x", "1");
  if (s.graph) {
    q.set("g", "1");
    if (!s.graph.mid) q.set("gmid", "0");
    if (s.graph.layers) q.set("glayers", s.graph.layers.join(","));
    if (s.graph.nodeThreshold !== DEFAULT_GRAPH.nodeThreshold) q.set("gnt", String(s.graph.nodeThreshold));
    if (s.graph.sendP !== DEFAULT_GRAPH.sendP) q.set("gsp", String(s.graph.sendP));
  }
  const d = defaultState();
  if (s.p !== d.p) q.set("p", String(s.p));
  if (s.tau !== d.tau) q.set("tau", String(s.tau));
  if (s.subgraph) q.set("sub", "1");
  if (s.hideMid) q.set("hidemid", "1");
  if (s.pins.length) q.set("pins", s.pins.join(","));
  const lab = Object.entries(s.labels).filter(([k, v]) => NODE_RE.test(k) && v !== "");
  if (lab.length) q.set("labels", lab.map(([k, v]) => `${k}:${esc(v)}`).join("|"));
  if (s.groups.length) q.set("groups", s.groups.map((g) => `${esc(g.label)}:${g.nodes.join(",")}`).join("|"));
  if (s.selected) q.set("sel", s.selected);
  return q.toString();
}

export function decodeState(hash: string): ViewState {
  const s = defaultState();
  const q = new URLSearchParams(hash.startsWith("#") ? hash.slice(1) : hash);
  s.model = q.get("m") || null;
  s.compare = q.get("cmp") || null;
  const cs = q.get("case");
  const sep = cs ? cs.lastIndexOf("::") : -1;
  if (cs && sep > 0) {
    s.input = { kind: "case", file: cs.slice(0, sep), id: cs.slice(sep + 2) };
  } else {
    s.input = { kind: "prompt", prompt: q.get("prompt") ?? "", chat: q.get("chat") === "1" };
  }
  s.append = ints(q.get("app"));
  s.target = choiceFromString(q.get("t"));
  s.contrast = choiceFromString(q.get("c"));
  const norm = q.get("norm");
  if (norm && (NORMS as string[]).includes(norm)) s.norm = norm as Norm;
  s.explained = q.get("x") === "1";
  if (q.get("g") === "1") {
    const gl = q.get("glayers");
    s.graph = {
      mid: q.get("gmid") !== "0",
      layers: gl ? gl.split(",").filter((x) => /^[A-Za-z0-9_.]+$/.test(x)) : null,
      nodeThreshold: num(q.get("gnt"), DEFAULT_GRAPH.nodeThreshold, 0, 1e9),
      sendP: num(q.get("gsp"), DEFAULT_GRAPH.sendP, 1e-6, 1),
    };
    if (s.graph.layers && s.graph.layers.length === 0) s.graph.layers = null;
  }
  s.p = num(q.get("p"), s.p, 1e-6, 1);
  s.tau = num(q.get("tau"), s.tau, 0, 1);
  s.subgraph = q.get("sub") === "1";
  s.hideMid = q.get("hidemid") === "1";
  s.pins = nodes(q.get("pins"));
  const lab = q.get("labels");
  if (lab) {
    for (const part of splitEsc(lab, "|")) {
      const [k, ...rest] = splitEsc(part, ":");
      if (NODE_RE.test(k) && rest.length) s.labels[k] = unesc(rest.join(":"));
    }
  }
  const gr = q.get("groups");
  if (gr) {
    for (const part of splitEsc(gr, "|")) {
      const bits = splitEsc(part, ":");
      if (bits.length < 2) continue;
      const members = nodes(bits[bits.length - 1]);
      const label = unesc(bits.slice(0, -1).join(":"));
      if (members.length) s.groups.push({ label, nodes: members });
    }
  }
  const sel = q.get("sel");
  s.selected = sel && NODE_RE.test(sel) ? sel : null;
  return s;
}
