/**
 * The token heatmap of an explanation: one span per input token, its background the signed, normalised
 * relevance (red supports the target, blue the contrast; the colour of contrastlens.viz), special tokens
 * greyed; hover shows the raw and every normalised value; the segment sums beside it.
 *
 * Each span carries `data-pos`, `data-r` (the raw relevance, as the API sent it) and `data-v` (the value
 * in the chosen normalisation), so what is shown can be checked against the API.
 */

import { clear, fmt, h, signedColour, visible } from "./dom";
import type { Norm } from "./state";

export interface Explanation {
  key: string;
  model: string;
  method: string;
  n_tokens: number;
  ids: number[];
  tokens: string[];
  special: boolean[];
  logit_diff: number;
  target: { id: number; str: string };
  contrast: { id: number | null; str: string | null };
  top_logits: { rank: number; id: number; token: string; logit: number }[];
  input_relevance: number[];
  norms: Record<Norm, number[]>;
  segments: Record<string, [number, number][]>;
  segment_sums: Record<string, number>;
  layer_sums: number[];
  seconds: number;
  hidden_relevance?: boolean;
}

export const NORM_HELP: Record<Norm, string> = {
  max_abs: "R / max|R|: the strongest token is full colour",
  sum_abs: "R / Σ|R|: each token's share of all relevance",
  abs_sum: "R / |ΣR|: relative to the net total (can exceed 1)",
};

/**
 * The token masks of the three segments, as Explanation.segment_masks: instruction = tokens in its
 * ranges; answer = tokens in its ranges that are not instruction; query = every other token. Special
 * tokens belong to none. Null without segments (a typed prompt).
 */
export function segmentMasks(ex: Explanation): Record<string, Uint8Array> | null {
  if (!ex.segments || Object.keys(ex.segments).length === 0) return null;
  const n = ex.n_tokens;
  const span = (name: string) => {
    const m = new Uint8Array(n);
    for (const [a, b] of ex.segments[name] ?? []) for (let i = Math.max(0, a); i < Math.min(n, b); i++) m[i] = 1;
    return m;
  };
  const inst = span("instruction");
  const ans = span("answer");
  const query = new Uint8Array(n);
  for (let i = 0; i < n; i++) {
    if (ex.special[i]) {
      inst[i] = 0;
      ans[i] = 0;
      continue;
    }
    if (inst[i]) ans[i] = 0;
    query[i] = inst[i] || ans[i] ? 0 : 1;
  }
  return { instruction: inst, query, answer: ans };
}

/** Per-segment sums of the normalised relevance, as Explanation.segment_sums (and their total). */
export function segmentSums(ex: Explanation, norm: Norm): Record<string, number> {
  const v = ex.norms[norm];
  const masks = segmentMasks(ex);
  const out: Record<string, number> = { instruction: 0, query: 0, answer: 0 };
  if (masks) {
    for (const name of ["instruction", "query", "answer"]) {
      let s = 0;
      const m = masks[name];
      for (let i = 0; i < ex.n_tokens; i++) if (m[i]) s += v[i] ?? 0;
      out[name] = s;
    }
  }
  out.total = out.instruction + out.query + out.answer;
  return out;
}

function segmentOf(masks: Record<string, Uint8Array> | null, i: number): string | null {
  if (!masks) return null;
  for (const name of ["instruction", "query", "answer"]) if (masks[name][i]) return name;
  return null;
}

export function renderHeatmap(box: HTMLElement, ex: Explanation, norm: Norm, onClick: (pos: number) => void,
  compact = false): void {
  clear(box);
  const vals = ex.norms[norm] ?? ex.norms.max_abs;
  const text = h("div", { class: compact ? "heat-tokens compact" : "heat-tokens", role: "list" });
  const frag = document.createDocumentFragment();
  const masks = segmentMasks(ex);
  for (let i = 0; i < ex.n_tokens; i++) {
    const tok = ex.tokens[i] ?? "";
    const special = !!ex.special[i];
    const seg = segmentOf(masks, i);
    const span = h("span", {
      class: `tok${special ? " special" : ""}${seg ? ` seg-${seg}` : ""}`, "data-pos": i,
      "data-r": String(ex.input_relevance[i]), "data-v": String(vals[i]), role: "listitem",
      title: `#${i} ${JSON.stringify(tok)} (id ${ex.ids[i]})${special ? " special token" : ""}`
        + `${seg ? `, ${seg}` : ""}\nR = ${fmt(ex.input_relevance[i], 6)}\nmax_abs ${fmt(ex.norms.max_abs[i])}`
        + ` · sum_abs ${fmt(ex.norms.sum_abs[i])} · abs_sum ${fmt(ex.norms.abs_sum[i])}`,
    }, tok.includes("\n") ? visible(tok).replace(/↵/g, "↵\n") : tok === "" ? "∅" : tok);
    if (!special) span.style.backgroundColor = signedColour(vals[i] ?? 0);
    span.addEventListener("click", () => onClick(i));
    frag.append(span);
  }
  text.append(frag);
  box.append(text);
}

export function renderSegments(box: HTMLElement, ex: Explanation, norm: Norm): void {
  clear(box);
  const sums = segmentSums(ex, norm);
  const masks = segmentMasks(ex);
  const has = masks !== null;
  const tbl = h("table", { class: "seg-table" },
    h("thead", {}, h("tr", {}, h("th", {}, "segment"), h("th", { class: "num" }, `Σ ${norm}`), h("th", {}, ""))));
  const body = h("tbody");
  const mx = Math.max(1e-12, ...["instruction", "query", "answer"].map((k) => Math.abs(sums[k])));
  for (const name of ["instruction", "query", "answer", "total"]) {
    const v = sums[name];
    const bar = h("span", { class: "bar" });
    bar.style.width = `${Math.round((Math.min(1, Math.abs(v) / mx)) * 60)}px`;
    bar.style.backgroundColor = signedColour(v >= 0 ? 1 : -1, 0.7);
    const m = masks?.[name];
    const tok = m ? m.reduce((a, x) => a + x, 0) : 0;
    body.append(h("tr", { "data-seg": name, "data-v": String(v) },
      h("td", {}, name !== "total" ? h("span", { class: `seg-key seg-${name}` }) : null, name,
        name !== "total" ? h("span", { class: "muted" }, ` ${tok} tok`) : null),
      h("td", { class: "num" }, has ? fmt(v) : "–"), h("td", {}, name !== "total" && has ? bar : null)));
  }
  tbl.append(body);
  box.append(tbl);
  box.append(h("p", { class: "muted small" }, has
    ? "Underlined in the heatmap: instruction (purple), answer so far (orange); the rest is the query."
    : "No segments: a typed prompt has none; cases do (instruction / query / answer)."));
}
