/**
 * Pruning in the page: the same rules as `GraphView` in `contrastlens.server.view` (which the server's
 * export uses), applied to the sent edges of a decoded CLG1 graph, without a server round trip.
 *
 * - cum-mass p, per transition: the sent edges are sorted by |w| descending with cumulative sums c_k
 *   (float64, `Transition.cum`); k* = the first k with c_k >= p * total_mass (binary search), keep the
 *   first k*+1 edges plus the ties of the last kept |w|. If no k reaches it (p > sent_mass / total_mass),
 *   keep every sent edge and report the transition as "at the limit" of what was sent.
 * - node threshold tau in [0, 1]: a node is kept when |R| >= tau * max|R| of its layer, or it is the final
 *   node (last layer, last position); an edge is kept when both of its ends are.
 * - subgraph: only the ancestors of the final node over the kept edges (and the edges among them).
 *
 * Everything works on typed arrays: one pass over the cum-mass prefix of each transition for the node
 * test, one more for the subgraph, so a re-prune of 100k+ edges takes a few milliseconds.
 */

import type { Graph } from "./clg";

export interface PruneParams {
  /** cumulative-mass fraction in (0, 1] */
  p: number;
  /** node threshold in [0, 1], relative to the layer's max |R| */
  tau: number;
  /** keep only the ancestors of the final node */
  subgraph: boolean;
}

export interface Pruned {
  params: PruneParams;
  /** per transition: length of the cum-mass prefix */
  prefix: Int32Array;
  /** per transition: 1 for each kept edge of the prefix (length = prefix[t]) */
  keep: Uint8Array[];
  /** per transition: number of kept edges */
  kept: Int32Array;
  keptEdges: number;
  /** per layer: 1 for each node shown (kept by tau and, with subgraph, an ancestor of the final node) */
  nodes: Uint8Array[];
  keptNodes: number;
  /** transitions where p asks for more mass than was sent (all sent edges kept) */
  atLimit: number[];
  /** the largest p that every transition can honour: min over transitions of sent_mass / total_mass */
  maxP: number;
}

/** The number of edges the cum-mass rule keeps of a sorted transition (before the node test). */
export function cumMassPrefix(cum: Float64Array, vals: Float32Array, totalMass: number, p: number): number {
  const count = cum.length;
  if (count === 0) return 0;
  const goal = p * totalMass;
  if (!(cum[count - 1] >= goal)) return count; // not reachable with what was sent: keep all
  // first k with cum[k] >= goal
  let lo = 0;
  let hi = count - 1;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (cum[mid] >= goal) hi = mid;
    else lo = mid + 1;
  }
  let k = lo;
  const last = Math.abs(vals[k]);
  while (k + 1 < count && Math.abs(vals[k + 1]) === last) k++;
  return k + 1;
}

/** Nodes kept by the node threshold: |R| >= tau * max|R| per layer, plus the final node. */
export function nodeMask(g: Graph, tau: number): Uint8Array[] {
  const out: Uint8Array[] = [];
  const last = g.layers.length - 1;
  for (let l = 0; l < g.layers.length; l++) {
    const r = g.rel[l];
    const m = new Uint8Array(g.n);
    if (tau <= 0) {
      m.fill(1);
    } else {
      let mx = 0;
      for (let i = 0; i < r.length; i++) {
        const a = Math.abs(r[i]);
        if (a > mx) mx = a;
      }
      const thr = tau * mx;
      for (let i = 0; i < r.length; i++) m[i] = Math.abs(r[i]) >= thr ? 1 : 0;
    }
    if (l === last) m[g.n - 1] = 1;
    out.push(m);
  }
  return out;
}

export function maxSendableP(g: Graph): number {
  let mp = 1;
  for (const t of g.transitions) {
    if (t.totalMass > 0) mp = Math.min(mp, t.sentMass / t.totalMass);
  }
  return mp;
}

export function prune(g: Graph, params: PruneParams): Pruned {
  const T = g.transitions.length;
  const prefix = new Int32Array(T);
  const keep: Uint8Array[] = [];
  const kept = new Int32Array(T);
  const atLimit: number[] = [];
  const nm = nodeMask(g, params.tau);
  for (let k = 0; k < T; k++) {
    const t = g.transitions[k];
    const len = cumMassPrefix(t.cum, t.vals, t.totalMass, params.p);
    if (t.count > 0 && !(t.cum[t.count - 1] >= params.p * t.totalMass)) atLimit.push(k);
    prefix[k] = len;
    const ms = nm[t.s];
    const mt = nm[t.t];
    const kk = new Uint8Array(len);
    const rows = t.rows;
    const cols = t.cols;
    let c = 0;
    for (let e = 0; e < len; e++) {
      if (mt[rows[e]] & ms[cols[e]]) {
        kk[e] = 1;
        c++;
      }
    }
    keep.push(kk);
    kept[k] = c;
  }
  let nodes = nm;
  if (params.subgraph) {
    const last = g.layers.length - 1;
    const reach = g.layers.map(() => new Uint8Array(g.n));
    reach[last][g.n - 1] = nm[last][g.n - 1];
    // consumers of a layer have a later target layer: go by target layer, last first
    const order = Array.from({ length: T }, (_, k) => k).sort((a, b) => g.transitions[b].t - g.transitions[a].t);
    for (const k of order) {
      const t = g.transitions[k];
      const rt = reach[t.t];
      const rs = reach[t.s];
      const kk = keep[k];
      const rows = t.rows;
      const cols = t.cols;
      let c = 0;
      for (let e = 0; e < kk.length; e++) {
        if (kk[e]) {
          if (rt[rows[e]]) {
            rs[cols[e]] = 1;
            c++;
          } else {
            kk[e] = 0;
          }
        }
      }
      kept[k] = c;
    }
    nodes = reach;
  }
  let keptEdges = 0;
  for (let k = 0; k < T; k++) keptEdges += kept[k];
  let keptNodes = 0;
  for (const m of nodes) for (let i = 0; i < m.length; i++) keptNodes += m[i];
  return { params: { ...params }, prefix, keep, kept, keptEdges, nodes, keptNodes, atLimit, maxP: maxSendableP(g) };
}

/** One-hop neighbours of a node over the kept edges: [transition, edge index, other end is src?]. */
export interface Incident {
  k: number;
  e: number;
  /** true: the edge comes into the node (the other end is the source) */
  incoming: boolean;
}

export function incidentEdges(g: Graph, pr: Pruned, layer: number, pos: number, limit = Infinity): Incident[] {
  const out: Incident[] = [];
  for (let k = 0; k < g.transitions.length; k++) {
    const t = g.transitions[k];
    if (t.t !== layer && t.s !== layer) continue;
    const kk = pr.keep[k];
    for (let e = 0; e < kk.length && out.length < limit; e++) {
      if (!kk[e]) continue;
      if (t.t === layer && t.rows[e] === pos) out.push({ k, e, incoming: true });
      else if (t.s === layer && t.cols[e] === pos) out.push({ k, e, incoming: false });
    }
  }
  // strongest first
  out.sort((a, b) => Math.abs(g.transitions[b.k].vals[b.e]) - Math.abs(g.transitions[a.k].vals[a.e]));
  return out;
}

/** Σ R per layer (over all positions, or only the shown nodes). */
export function layerSums(g: Graph, shown?: Uint8Array[]): Float64Array {
  const out = new Float64Array(g.layers.length);
  for (let l = 0; l < g.layers.length; l++) {
    const r = g.rel[l];
    const m = shown?.[l];
    let s = 0;
    for (let i = 0; i < r.length; i++) if (!m || m[i]) s += r[i];
    out[l] = s;
  }
  return out;
}
