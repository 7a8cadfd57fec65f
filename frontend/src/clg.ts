/**
 * Decoding of the binary graph format CLG1 (docs/explorer-api.md, "Binary graph format").
 *
 *   bytes 0-3  b"CLG1"; bytes 4-7 uint32 LE H; bytes 8..8+H a UTF-8 JSON header (space padded to a
 *   multiple of 8); then the arrays, each at header.arrays[name].offset from byte 8+H, 8-byte aligned, LE.
 *
 * The arrays are viewed in place (no copy) when the buffer is little-endian-compatible and aligned, which
 * is the case for every payload the server writes. Per transition the sent edges (target position j =
 * rows, source position i = cols, weight = vals) arrive sorted by |w| descending; `decode` adds the
 * cumulative |w| (float64) that the cum-mass pruning searches.
 */

export const MAGIC = "CLG1";
export const WIRE_VERSION = 1;

export type DType = "float32" | "uint16" | "int32";

export interface ArraySpec {
  dtype: DType;
  offset: number;
  length: number;
}

export interface TransitionSpec {
  src: string;
  tgt: string;
  count: number;
  total_mass: number;
  sent_mass: number;
  rows: string;
  cols: string;
  vals: string;
}

export interface GraphHeader {
  wire_version: number;
  key?: string;
  model?: string;
  n: number;
  layers: string[];
  tokens: string[];
  special?: boolean[];
  logit_diff?: number;
  spec?: Record<string, unknown>;
  provenance?: Record<string, unknown>;
  segments?: Record<string, [number, number][]>;
  send?: { p: number; max_edges: number; node_threshold: number };
  arrays: Record<string, ArraySpec>;
  transitions: TransitionSpec[];
  [extra: string]: unknown;
}

export type IndexArray = Uint16Array | Int32Array;

export interface Transition {
  src: string;
  tgt: string;
  /** indices of src / tgt in `Graph.layers` */
  s: number;
  t: number;
  count: number;
  totalMass: number;
  sentMass: number;
  /** target positions j */
  rows: IndexArray;
  /** source positions i */
  cols: IndexArray;
  vals: Float32Array;
  /** cum[k] = sum_{m <= k} |vals[m]| (float64) */
  cum: Float64Array;
}

export interface Graph {
  header: GraphHeader;
  n: number;
  layers: string[];
  tokens: string[];
  special: boolean[];
  /** rel[l][pos]: node relevance of layer l */
  rel: Float32Array[];
  transitions: Transition[];
  /** total number of sent edges */
  edges: number;
  /** bytes of the payload */
  bytes: number;
}

export class FormatError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "FormatError";
  }
}

function view(buf: ArrayBuffer, base: number, spec: ArraySpec, name: string): Float32Array | Uint16Array | Int32Array {
  const size = spec.dtype === "uint16" ? 2 : 4;
  const start = base + spec.offset;
  const end = start + spec.length * size;
  if (!Number.isInteger(spec.offset) || !Number.isInteger(spec.length) || spec.offset < 0 || spec.length < 0) {
    throw new FormatError(`array ${name}: bad offset/length`);
  }
  if (end > buf.byteLength) throw new FormatError(`array ${name} runs past the end of the payload (truncated file?)`);
  const aligned = start % size === 0;
  switch (spec.dtype) {
    case "float32":
      return aligned ? new Float32Array(buf, start, spec.length) : new Float32Array(buf.slice(start, end));
    case "uint16":
      return aligned ? new Uint16Array(buf, start, spec.length) : new Uint16Array(buf.slice(start, end));
    case "int32":
      return aligned ? new Int32Array(buf, start, spec.length) : new Int32Array(buf.slice(start, end));
    default:
      throw new FormatError(`array ${name}: unknown dtype ${String((spec as ArraySpec).dtype)}`);
  }
}

const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

/** Parse a CLG1 payload. Throws FormatError with a one-line message on anything malformed. */
export function decode(input: ArrayBuffer | Uint8Array): Graph {
  let buf: ArrayBuffer;
  if (input instanceof Uint8Array) {
    buf = input.byteOffset === 0 && input.byteLength === input.buffer.byteLength
      ? (input.buffer as ArrayBuffer)
      : (input.slice().buffer as ArrayBuffer);
  } else {
    buf = input;
  }
  if (!LITTLE_ENDIAN) throw new FormatError("this browser is big-endian; CLG1 graphs need a little-endian machine");
  if (buf.byteLength < 8) throw new FormatError("not a CLG1 graph (too short)");
  const head = new Uint8Array(buf, 0, 8);
  const magic = String.fromCharCode(head[0], head[1], head[2], head[3]);
  if (magic !== MAGIC) throw new FormatError(`not a CLG1 graph (starts with ${JSON.stringify(magic)})`);
  const hlen = new DataView(buf).getUint32(4, true);
  if (8 + hlen > buf.byteLength) throw new FormatError("CLG1 header runs past the end of the payload");
  let header: GraphHeader;
  try {
    header = JSON.parse(new TextDecoder().decode(new Uint8Array(buf, 8, hlen))) as GraphHeader;
  } catch (e) {
    throw new FormatError(`CLG1 header is not valid JSON: ${(e as Error).message}`);
  }
  if (header.wire_version !== WIRE_VERSION) {
    throw new FormatError(`CLG1 wire version ${header.wire_version}; this page reads version ${WIRE_VERSION}`);
  }
  const n = header.n;
  if (!Number.isInteger(n) || n < 1) throw new FormatError("CLG1 header: n must be a positive integer");
  if (!Array.isArray(header.layers) || header.layers.length < 1) throw new FormatError("CLG1 header: no layers");
  const base = 8 + hlen;
  const arrays = header.arrays ?? {};
  const get = (name: string) => {
    const spec = arrays[name];
    if (!spec) throw new FormatError(`CLG1 header names array ${name}, which is missing`);
    return view(buf, base, spec, name);
  };
  const layerIndex = new Map<string, number>();
  header.layers.forEach((l, i) => layerIndex.set(l, i));
  const rel: Float32Array[] = header.layers.map((l) => {
    const a = get(`rel:${l}`);
    if (!(a instanceof Float32Array) || a.length !== n) throw new FormatError(`rel:${l} must be float32 [${n}]`);
    return a;
  });
  let edges = 0;
  const transitions: Transition[] = (header.transitions ?? []).map((t) => {
    const s = layerIndex.get(t.src);
    const tt = layerIndex.get(t.tgt);
    if (s === undefined || tt === undefined) throw new FormatError(`transition ${t.src} -> ${t.tgt}: unknown layer`);
    const rows = get(t.rows);
    const cols = get(t.cols);
    const vals = get(t.vals);
    if (rows instanceof Float32Array || cols instanceof Float32Array || !(vals instanceof Float32Array)) {
      throw new FormatError(`transition ${t.src} -> ${t.tgt}: rows/cols must be integers, vals float32`);
    }
    if (rows.length !== t.count || cols.length !== t.count || vals.length !== t.count) {
      throw new FormatError(`transition ${t.src} -> ${t.tgt}: array lengths differ from count ${t.count}`);
    }
    const cum = new Float64Array(t.count);
    let c = 0;
    for (let k = 0; k < t.count; k++) {
      c += Math.abs(vals[k]);
      cum[k] = c;
    }
    edges += t.count;
    return {
      src: t.src, tgt: t.tgt, s, t: tt, count: t.count, totalMass: t.total_mass, sentMass: t.sent_mass,
      rows, cols, vals, cum,
    };
  });
  const tokens = Array.isArray(header.tokens) ? header.tokens.map(String) : [];
  while (tokens.length < n) tokens.push("");
  const special = Array.isArray(header.special) ? header.special.map(Boolean) : [];
  while (special.length < n) special.push(false);
  return { header, n, layers: header.layers.slice(), tokens, special, rel, transitions, edges, bytes: buf.byteLength };
}

/** Is `name` a mid layer ("3.mid")? */
export function isMid(layer: string): boolean {
  return layer.endsWith(".mid");
}

/** "layer@pos", the node id used in the URL, the exports and the server's node-link JSON. */
export function nodeId(layer: string, pos: number): string {
  return `${layer}@${pos}`;
}

export function parseNodeId(id: string): { layer: string; pos: number } | null {
  const at = id.lastIndexOf("@");
  if (at <= 0) return null;
  const pos = Number(id.slice(at + 1));
  if (!Number.isInteger(pos) || pos < 0) return null;
  return { layer: id.slice(0, at), pos };
}
