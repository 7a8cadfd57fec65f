// A CLG1 writer for the tests, written from docs/explorer-api.md (independent of the decoder).
export interface TEdges {
  src: string;
  tgt: string;
  rows: number[];
  cols: number[];
  vals: number[];
  totalMass?: number;
}

export function encodeCLG1(n: number, layers: string[], rel: number[][], trans: TEdges[],
  extra: Record<string, unknown> = {}, index: "uint16" | "int32" = "uint16"): Uint8Array {
  const arrays: Record<string, { dtype: string; offset: number; length: number }> = {};
  const chunks: { off: number; bytes: Uint8Array }[] = [];
  let off = 0;
  const add = (name: string, dtype: string, data: number[]) => {
    const ta = dtype === "float32" ? new Float32Array(data) : dtype === "uint16" ? new Uint16Array(data)
      : new Int32Array(data);
    const bytes = new Uint8Array(ta.buffer.slice(0));
    arrays[name] = { dtype, offset: off, length: data.length };
    chunks.push({ off, bytes });
    off += Math.ceil(bytes.length / 8) * 8;
  };
  layers.forEach((l, i) => add(`rel:${l}`, "float32", rel[i]));
  const transitions = trans.map((t, k) => {
    // sort by |w| descending (stable), as the server sends
    const order = t.vals.map((_, i) => i).sort((a, b) => Math.abs(t.vals[b]) - Math.abs(t.vals[a]) || a - b);
    add(`e${k}:rows`, index, order.map((i) => t.rows[i]));
    add(`e${k}:cols`, index, order.map((i) => t.cols[i]));
    add(`e${k}:vals`, "float32", order.map((i) => t.vals[i]));
    const sent = t.vals.reduce((a, v) => a + Math.abs(Math.fround(v)), 0);
    return { src: t.src, tgt: t.tgt, count: t.vals.length, total_mass: t.totalMass ?? sent, sent_mass: sent,
      rows: `e${k}:rows`, cols: `e${k}:cols`, vals: `e${k}:vals` };
  });
  const header = { wire_version: 1, key: "k", model: "m", n, layers, tokens: Array.from({ length: n }, (_, i) => `t${i}`),
    special: Array.from({ length: n }, (_, i) => i === 0), logit_diff: 1.5, spec: {}, provenance: {}, segments: {},
    send: { p: 0.98, max_edges: 1000, node_threshold: 0 }, arrays, transitions, ...extra };
  let text = JSON.stringify(header);
  while ((8 + new TextEncoder().encode(text).length) % 8 !== 0) text += " ";
  const h = new TextEncoder().encode(text);
  const out = new Uint8Array(8 + h.length + off);
  out.set([0x43, 0x4c, 0x47, 0x31]);
  new DataView(out.buffer).setUint32(4, h.length, true);
  out.set(h, 8);
  for (const c of chunks) out.set(c.bytes, 8 + h.length + c.off);
  return out;
}
