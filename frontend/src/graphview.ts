/**
 * The graph on a <canvas>: layers as rows (bottom = emb, top = the last layer), token positions as
 * columns; node size by |R|, edge colour by sign (red: supports the target, blue: the contrast) and
 * width by |w|; pan (drag) and zoom (wheel, +/-, 0).
 *
 * Level of detail. Every draw makes two passes over the kept edges: the first counts the edges in view
 * in a histogram keyed by the float32 bit pattern of |w| (monotone in |w|, no logarithms), which gives
 * the |w| above which at most `edgeBudget` edges lie; the second draws those, batched into one path per
 * (sign, width) bucket, weakest first. So a zoomed-out 100k-edge graph draws its strongest edges only and
 * says so, and zooming in shows everything in view.
 *
 * Mid nodes hidden: a `l-1 -> l.mid` edge is drawn as `l-1 -> l` (the block's matrix equals the
 * attention sub-block's, docs/graph.md) and the diagonal `l.mid -> l` edges are not drawn; the kept-edge
 * counts are those of the whole pruned graph either way.
 */

import { type Graph, isMid, nodeId, type Transition } from "./clg";
import { BLUE, fmt, RED, visible } from "./dom";
import type { Pruned } from "./prune";
import type { Group } from "./state";

export interface NodeRef {
  l: number;
  pos: number;
}

export interface ViewEdge {
  k: number;
  e: number;
  incoming: boolean;
}

export interface GraphCallbacks {
  onSelect(node: NodeRef | null, additive: boolean): void;
  onHover(node: NodeRef | null, x: number, y: number): void;
  onDraw?(info: DrawInfo): void;
}

export interface DrawInfo {
  visibleEdges: number;
  drawnEdges: number;
  ms: number;
}

const N_BUCKETS = 6;
const WIDTHS = [0.5, 0.8, 1.2, 1.8, 2.6, 3.6];
const ALPHAS = [0.22, 0.32, 0.45, 0.6, 0.75, 0.9];
const MARGIN = { left: 70, right: 96, top: 22, bottom: 52 };

const absBits = new WeakMap<Float32Array, Uint32Array>();
function bitsOf(v: Float32Array): Uint32Array {
  let b = absBits.get(v);
  if (!b) {
    b = new Uint32Array(v.buffer, v.byteOffset, v.length);
    absBits.set(v, b);
  }
  return b;
}

export class GraphView {
  readonly canvas: HTMLCanvasElement;
  private ctx: CanvasRenderingContext2D;
  g: Graph | null = null;
  pr: Pruned | null = null;
  hideMid = false;
  edgeBudget = 40000;
  /** layer index -> row (-1: not drawn) */
  drawRow = new Int32Array(0);
  /** row -> layer index */
  rowLayer: number[] = [];
  vx0 = 0;
  vx1 = 1;
  vy0 = 0;
  vy1 = 1;
  selected: NodeRef | null = null;
  hover: NodeRef | null = null;
  multi = new Set<string>();
  pinned = new Set<string>();
  groups: Group[] = [];
  labels: Record<string, string> = {};
  focusCol: number | null = null;
  /** the segments the last draw stroked, for the SVG export: [x1, y1, x2, y2] and bucket (sign * 8 + level) */
  lastSegs = new Float32Array(0);
  lastBuckets = new Uint8Array(0);
  lastCount = 0;
  private layerSumCache: Float64Array | null = null;
  private dragging: { x: number; y: number; vx0: number; vy0: number; moved: boolean } | null = null;

  constructor(canvas: HTMLCanvasElement, private cb: GraphCallbacks) {
    this.canvas = canvas;
    const ctx = canvas.getContext("2d");
    if (!ctx) throw new Error("no 2D canvas");
    this.ctx = ctx;
    canvas.addEventListener("wheel", (ev) => this.onWheel(ev), { passive: false });
    canvas.addEventListener("mousedown", (ev) => this.onDown(ev));
    window.addEventListener("mousemove", (ev) => this.onMove(ev));
    window.addEventListener("mouseup", (ev) => this.onUp(ev));
    canvas.addEventListener("mouseleave", () => {
      if (this.hover) {
        this.hover = null;
        this.cb.onHover(null, 0, 0);
        this.draw();
      }
    });
  }

  setGraph(g: Graph | null): void {
    this.g = g;
    this.pr = null;
    this.selected = null;
    this.hover = null;
    this.multi.clear();
    this.focusCol = null;
    this.layerSumCache = null;
    this.layout();
    this.resetView();
  }

  setPruned(pr: Pruned): void {
    this.pr = pr;
  }

  setHideMid(hide: boolean): void {
    this.hideMid = hide;
    this.layout();
    this.vy0 = 0; // rows came or went: show them all (the horizontal view stays)
    this.vy1 = Math.max(1, this.rowLayer.length);
    if (this.selected && this.drawRow[this.selected.l] < 0) this.selected = null;
  }

  hasMid(): boolean {
    return !!this.g && this.g.layers.some(isMid);
  }

  private layout(): void {
    const g = this.g;
    if (!g) {
      this.drawRow = new Int32Array(0);
      this.rowLayer = [];
      return;
    }
    const L = g.layers.length;
    const row = new Int32Array(L).fill(-1);
    const rowLayer: number[] = [];
    for (let l = 0; l < L; l++) {
      if (this.hideMid && isMid(g.layers[l])) continue;
      row[l] = rowLayer.length;
      rowLayer.push(l);
    }
    // a hidden mid is drawn at its block's output row (or the next drawn row)
    this.drawRow = new Int32Array(L);
    for (let l = 0; l < L; l++) {
      if (row[l] >= 0) {
        this.drawRow[l] = row[l];
        continue;
      }
      let r = -1;
      for (let m = l + 1; m < L; m++) {
        if (row[m] >= 0) {
          r = row[m];
          break;
        }
      }
      this.drawRow[l] = r;
    }
    this.rowLayer = rowLayer;
  }

  resetView(): void {
    this.vx0 = 0;
    this.vx1 = this.g ? this.g.n : 1;
    this.vy0 = 0;
    this.vy1 = Math.max(1, this.rowLayer.length);
  }

  /** Centre the view on a column (zooming in so that about `span` columns show). */
  focusColumn(pos: number, span = 48): void {
    if (!this.g) return;
    const n = this.g.n;
    const w = Math.min(n, Math.max(span, 1));
    this.vx0 = Math.max(0, Math.min(n - w, pos + 0.5 - w / 2));
    this.vx1 = this.vx0 + w;
    this.focusCol = pos;
  }

  zoomBy(f: number, cx?: number, cy?: number): void {
    if (!this.g) return;
    const { x0, x1, y0, y1 } = this.plot();
    const px = cx ?? (x0 + x1) / 2;
    const py = cy ?? (y0 + y1) / 2;
    const wx = this.vx0 + ((px - x0) / (x1 - x0)) * (this.vx1 - this.vx0);
    const wy = this.vy0 + ((y1 - py) / (y1 - y0)) * (this.vy1 - this.vy0);
    const n = this.g.n;
    const R = this.rowLayer.length;
    const nw = Math.min(n, Math.max(4, (this.vx1 - this.vx0) / f));
    const nh = Math.min(R, Math.max(Math.min(R, 3), (this.vy1 - this.vy0) / f));
    const fx = (wx - this.vx0) / (this.vx1 - this.vx0);
    const fy = (wy - this.vy0) / (this.vy1 - this.vy0);
    this.vx0 = Math.max(0, Math.min(n - nw, wx - fx * nw));
    this.vx1 = this.vx0 + nw;
    this.vy0 = Math.max(0, Math.min(R - nh, wy - fy * nh));
    this.vy1 = this.vy0 + nh;
  }

  pan(dxCols: number, dyRows: number): void {
    if (!this.g) return;
    const w = this.vx1 - this.vx0;
    const hgt = this.vy1 - this.vy0;
    this.vx0 = Math.max(0, Math.min(this.g.n - w, this.vx0 + dxCols));
    this.vx1 = this.vx0 + w;
    this.vy0 = Math.max(0, Math.min(this.rowLayer.length - hgt, this.vy0 + dyRows));
    this.vy1 = this.vy0 + hgt;
  }

  private plot() {
    const w = this.canvas.width / this.dpr();
    const hgt = this.canvas.height / this.dpr();
    return { x0: MARGIN.left, x1: w - MARGIN.right, y0: MARGIN.top, y1: hgt - MARGIN.bottom, w, h: hgt };
  }

  private dpr(): number {
    return Math.max(1, Math.min(2, window.devicePixelRatio || 1));
  }

  /** Match the canvas's backing store to its CSS size. */
  resize(): void {
    const rect = this.canvas.getBoundingClientRect();
    const d = this.dpr();
    const w = Math.max(300, Math.round(rect.width * d));
    const hh = Math.max(200, Math.round(rect.height * d));
    if (this.canvas.width !== w || this.canvas.height !== hh) {
      this.canvas.width = w;
      this.canvas.height = hh;
    }
  }

  sx(col: number): number {
    const { x0, x1 } = this.plot();
    return x0 + ((col + 0.5 - this.vx0) / (this.vx1 - this.vx0)) * (x1 - x0);
  }

  sy(row: number): number {
    const { y0, y1 } = this.plot();
    return y1 - ((row + 0.5 - this.vy0) / (this.vy1 - this.vy0)) * (y1 - y0);
  }

  nodeAt(mx: number, my: number): NodeRef | null {
    const g = this.g;
    if (!g) return null;
    const { x0, x1, y0, y1 } = this.plot();
    if (mx < x0 - 4 || mx > x1 + 4 || my < y0 - 4 || my > y1 + 4) return null;
    const col = Math.floor(this.vx0 + ((mx - x0) / (x1 - x0)) * (this.vx1 - this.vx0));
    const row = Math.round(this.vy0 + ((y1 - my) / (y1 - y0)) * (this.vy1 - this.vy0) - 0.5);
    if (col < 0 || col >= g.n || row < 0 || row >= this.rowLayer.length) return null;
    const l = this.rowLayer[row];
    if (Math.abs(this.sy(row) - my) > Math.max(6, this.rowH() / 2)) return null;
    if (this.pr && !this.pr.nodes[l][col]) return null;
    return { l, pos: col };
  }

  private colW(): number {
    const { x0, x1 } = this.plot();
    return (x1 - x0) / (this.vx1 - this.vx0);
  }

  private rowH(): number {
    const { y0, y1 } = this.plot();
    return (y1 - y0) / (this.vy1 - this.vy0);
  }

  /** Kept edges at a node as drawn (with mid nodes hidden, the collapsed ones), strongest first. */
  /** Visits every kept edge whose transition's rows and whose columns are in view, with the key of its |w|
   * (the float's top 12 bits after the sign), transition by transition in the stored order (by |w|); ``fn``
   * returns false to skip the rest of that transition. */
  private visibleEdges(g: Graph, pr: Pruned, vx0: number, vx1: number, vy0: number, vy1: number,
                       fn: (t: Transition, e: number, key: number, rs: number, rt: number) => boolean): void {
    for (let k = 0; k < g.transitions.length; k++) {
      const t = g.transitions[k];
      const rs = this.drawRow[t.s];
      const rt = this.drawRow[t.t];
      if (rs < 0 || rt < 0 || rs === rt) continue;
      if (Math.max(rs, rt) < vy0 || Math.min(rs, rt) > vy1) continue;
      const kk = pr.keep[k];
      const rows = t.rows;
      const cols = t.cols;
      const bits = bitsOf(t.vals);
      for (let e = 0; e < kk.length; e++) {
        if (!kk[e]) continue;
        const i = cols[e];
        const j = rows[e];
        if ((i > j ? i : j) + 1 < vx0 || (i < j ? i : j) > vx1) continue;
        if (!fn(t, e, (bits[e] & 0x7fffffff) >>> 19, rs, rt)) break;
      }
    }
  }

  neighbours(node: NodeRef, limit = Infinity): ViewEdge[] {
    const g = this.g;
    const pr = this.pr;
    if (!g || !pr) return [];
    const row = this.drawRow[node.l];
    const out: ViewEdge[] = [];
    for (let k = 0; k < g.transitions.length; k++) {
      const t = g.transitions[k];
      const rs = this.drawRow[t.s];
      const rt = this.drawRow[t.t];
      if (rs === rt) continue; // a collapsed diagonal
      const into = this.hideMid ? rt === row : t.t === node.l;
      const outof = this.hideMid ? rs === row : t.s === node.l;
      if (!into && !outof) continue;
      const kk = pr.keep[k];
      for (let e = 0; e < kk.length; e++) {
        if (!kk[e]) continue;
        if (into && t.rows[e] === node.pos) out.push({ k, e, incoming: true });
        else if (outof && t.cols[e] === node.pos) out.push({ k, e, incoming: false });
      }
    }
    out.sort((a, b) => Math.abs(g.transitions[b.k].vals[b.e]) - Math.abs(g.transitions[a.k].vals[a.e]));
    return out.length > limit ? out.slice(0, limit) : out;
  }

  layerSums(): Float64Array {
    const g = this.g;
    if (!g) return new Float64Array(0);
    if (!this.layerSumCache) {
      this.layerSumCache = new Float64Array(g.layers.length);
      for (let l = 0; l < g.layers.length; l++) {
        let s = 0;
        const r = g.rel[l];
        for (let i = 0; i < r.length; i++) s += r[i];
        this.layerSumCache[l] = s;
      }
    }
    return this.layerSumCache;
  }

  draw(): DrawInfo {
    const t0 = performance.now();
    const ctx = this.ctx;
    const d = this.dpr();
    ctx.setTransform(d, 0, 0, d, 0, 0);
    ctx.textBaseline = "alphabetic";
    ctx.textAlign = "left";
    const P = this.plot();
    ctx.fillStyle = "#ffffff";
    ctx.fillRect(0, 0, P.w, P.h);
    const g = this.g;
    const pr = this.pr;
    if (!g || !pr) {
      ctx.fillStyle = "#666";
      ctx.font = "14px system-ui, sans-serif";
      ctx.fillText("No graph yet: run “Build graph”, or open a saved graph file (.clg1).", 20, 40);
      return { visibleEdges: 0, drawnEdges: 0, ms: 0 };
    }
    const R = this.rowLayer.length;
    const colW = this.colW();
    const rowH = this.rowH();
    const cx0 = Math.max(0, Math.floor(this.vx0));
    const cx1 = Math.min(g.n, Math.ceil(this.vx1));

    // rows and the focus column
    ctx.save();
    ctx.beginPath();
    ctx.rect(P.x0 - 12, P.y0 - 12, P.x1 - P.x0 + 24, P.y1 - P.y0 + 24);
    ctx.clip();
    if (this.focusCol !== null && this.focusCol >= cx0 && this.focusCol < cx1) {
      ctx.fillStyle = "rgba(255, 214, 0, 0.25)";
      const fx = this.sx(this.focusCol);
      ctx.fillRect(fx - Math.max(colW / 2, 2), P.y0, Math.max(colW, 4), P.y1 - P.y0);
    }
    ctx.strokeStyle = "#eceff3";
    ctx.lineWidth = 1;
    ctx.beginPath();
    for (let r = 0; r < R; r++) {
      const y = Math.round(this.sy(r)) + 0.5;
      if (y < P.y0 - 1 || y > P.y1 + 1) continue;
      ctx.moveTo(P.x0, y);
      ctx.lineTo(P.x1, y);
    }
    ctx.stroke();

    // ---- edges: pass 1, histogram of the edges in view
    const vy0 = this.vy0 - 0.5;
    const vy1 = this.vy1 + 0.5;
    const vx0 = this.vx0 - 0.5;
    const vx1 = this.vx1 + 0.5;
    const hist = new Int32Array(4097);
    let inView = 0;
    let maxKey = 0;
    this.visibleEdges(g, pr, vx0, vx1, vy0, vy1, (_t, _e, key) => {
      hist[key]++;
      if (key > maxKey) maxKey = key;
      inView++;
      return true;
    });
    // the smallest key such that the edges with a larger key fit the budget
    let thrKey = 0;
    let above = 0;
    let room = Infinity;
    if (inView > this.edgeBudget) {
      for (let key = 4096; key >= 0; key--) {
        if (above + hist[key] > this.edgeBudget) {
          thrKey = key;
          room = this.edgeBudget - above;
          break;
        }
        above += hist[key];
      }
    }
    // pass 2: draw, bucketed by sign and width
    let maxW = 0;
    for (let k = 0; k < g.transitions.length; k++) {
      const t = g.transitions[k];
      const kk = pr.keep[k];
      for (let e = 0; e < kk.length; e++) {
        if (kk[e]) {
          const a = Math.abs(t.vals[e]);
          if (a > maxW) maxW = a;
          break; // sorted: the first kept edge is the strongest
        }
      }
    }
    const paths: Path2D[] = [];
    for (let b = 0; b < 2 * N_BUCKETS; b++) paths.push(new Path2D());
    const cap = Math.min(inView, this.edgeBudget);
    if (this.lastSegs.length < cap * 4) {
      this.lastSegs = new Float32Array(cap * 4);
      this.lastBuckets = new Uint8Array(cap);
    }
    let drawn = 0;
    const X0 = P.x0;
    const kx = (P.x1 - P.x0) / (this.vx1 - this.vx0);
    const ox = 0.5 - this.vx0;
    const Y1 = P.y1;
    const ky = (P.y1 - P.y0) / (this.vy1 - this.vy0);
    const oy = 0.5 - this.vy0;
    this.visibleEdges(g, pr, vx0, vx1, vy0, vy1, (t, e, key, rs, rt) => {
      if (key < thrKey) return false; // sorted by |w|: nothing further in this transition qualifies
      if (key === thrKey && inView > this.edgeBudget) {
        if (room <= 0) return true;
        room--;
      }
      const ys = Y1 - (rs + oy) * ky;
      const yt = Y1 - (rt + oy) * ky;
      const w = t.vals[e];
      const lvl = Math.min(N_BUCKETS - 1, Math.floor(N_BUCKETS * Math.sqrt(Math.abs(w) / (maxW || 1))));
      const b = (w >= 0 ? 0 : N_BUCKETS) + lvl;
      const xs = X0 + (t.cols[e] + ox) * kx;
      const xt = X0 + (t.rows[e] + ox) * kx;
      const p = paths[b];
      p.moveTo(xs, ys);
      p.lineTo(xt, yt);
      if (drawn < cap) {
        const o = drawn * 4;
        this.lastSegs[o] = xs;
        this.lastSegs[o + 1] = ys;
        this.lastSegs[o + 2] = xt;
        this.lastSegs[o + 3] = yt;
        this.lastBuckets[drawn] = b;
      }
      drawn++;
      return true;
    });
    this.lastCount = Math.min(drawn, cap);
    const thin = Math.min(1, Math.max(0.35, colW / 4));
    for (let lvl = 0; lvl < N_BUCKETS; lvl++) {
      for (const sign of [0, 1]) {
        const [r, gg, bb] = sign === 0 ? RED : BLUE;
        ctx.strokeStyle = `rgba(${r},${gg},${bb},${ALPHAS[lvl]})`;
        ctx.lineWidth = WIDTHS[lvl] * thin;
        ctx.stroke(paths[sign * N_BUCKETS + lvl]);
      }
    }

    // ---- highlighted one-hop neighbourhood (selected, else hovered)
    const focus = this.selected ?? this.hover;
    const ring = new Path2D();
    if (focus && this.drawRow[focus.l] >= 0) {
      const nb = this.neighbours(focus, 400);
      ctx.lineWidth = 2;
      for (const { k, e } of nb) {
        const t = g.transitions[k];
        const w = t.vals[e];
        ctx.strokeStyle = w >= 0 ? "rgba(150,20,20,0.9)" : "rgba(15,70,130,0.9)";
        ctx.beginPath();
        ctx.moveTo(this.sx(t.cols[e]), this.sy(this.drawRow[t.s]));
        ctx.lineTo(this.sx(t.rows[e]), this.sy(this.drawRow[t.t]));
        ctx.stroke();
      }
      for (const { k, e, incoming } of nb) {
        const t = g.transitions[k];
        const x = this.sx(incoming ? t.cols[e] : t.rows[e]);
        const y = this.sy(this.drawRow[incoming ? t.s : t.t]);
        ring.moveTo(x + 5, y);
        ring.arc(x, y, 5, 0, 2 * Math.PI);
      }
    }

    // ---- nodes
    let maxR = 0;
    for (const l of this.rowLayer) {
      const r = g.rel[l];
      const m = pr.nodes[l];
      for (let i = cx0; i < cx1; i++) if (m[i]) maxR = Math.max(maxR, Math.abs(r[i]));
    }
    const rMax = Math.max(1.2, Math.min(9, Math.min(colW, rowH) * 0.42));
    const pos = new Path2D();
    const neg = new Path2D();
    const spc = new Path2D();
    for (let row = 0; row < R; row++) {
      const y = this.sy(row);
      if (y < P.y0 - rMax || y > P.y1 + rMax) continue;
      const l = this.rowLayer[row];
      const rel = g.rel[l];
      const m = pr.nodes[l];
      for (let i = cx0; i < cx1; i++) {
        if (!m[i]) continue;
        const v = rel[i];
        const rad = rMax * Math.sqrt(Math.abs(v) / (maxR || 1));
        if (rad < 0.5) continue;
        const x = this.sx(i);
        const p = g.special[i] ? spc : v >= 0 ? pos : neg;
        if (rad < 1.5) {
          p.rect(x - rad, y - rad, 2 * rad, 2 * rad);
        } else {
          p.moveTo(x + rad, y);
          p.arc(x, y, rad, 0, 2 * Math.PI);
        }
      }
    }
    ctx.fillStyle = `rgb(${RED.join(",")})`;
    ctx.fill(pos);
    ctx.fillStyle = `rgb(${BLUE.join(",")})`;
    ctx.fill(neg);
    ctx.fillStyle = "#9aa0a6";
    ctx.fill(spc);
    ctx.strokeStyle = "#111";
    ctx.lineWidth = 1.2;
    ctx.stroke(ring);

    // pins, multi-selection, selection
    const mark = (id: string, colour: string, rad: number, width: number) => {
      const at = id.lastIndexOf("@");
      const l = g.layers.indexOf(id.slice(0, at));
      const p = Number(id.slice(at + 1));
      if (l < 0 || this.drawRow[l] < 0 || p >= g.n) return;
      ctx.strokeStyle = colour;
      ctx.lineWidth = width;
      ctx.beginPath();
      ctx.arc(this.sx(p), this.sy(this.drawRow[l]), rad, 0, 2 * Math.PI);
      ctx.stroke();
    };
    for (const id of this.pinned) mark(id, "#e8a200", 8, 2.5);
    for (const id of this.multi) mark(id, "#7b2cbf", 7, 2);
    if (this.selected) mark(nodeId(g.layers[this.selected.l], this.selected.pos), "#000", 9, 2.5);

    // supernodes: a labelled box around their members
    ctx.font = "11px system-ui, sans-serif";
    for (const grp of this.groups) {
      let xa = Infinity;
      let xb = -Infinity;
      let ya = Infinity;
      let yb = -Infinity;
      for (const id of grp.nodes) {
        const at = id.lastIndexOf("@");
        const l = g.layers.indexOf(id.slice(0, at));
        const p = Number(id.slice(at + 1));
        if (l < 0 || this.drawRow[l] < 0 || p >= g.n) continue;
        const x = this.sx(p);
        const y = this.sy(this.drawRow[l]);
        xa = Math.min(xa, x);
        xb = Math.max(xb, x);
        ya = Math.min(ya, y);
        yb = Math.max(yb, y);
      }
      if (!Number.isFinite(xa)) continue;
      ctx.strokeStyle = "#7b2cbf";
      ctx.fillStyle = "rgba(123,44,191,0.08)";
      ctx.lineWidth = 1.5;
      ctx.setLineDash([4, 3]);
      ctx.beginPath();
      ctx.rect(xa - 10, ya - 10, xb - xa + 20, yb - ya + 20);
      ctx.fill();
      ctx.stroke();
      ctx.setLineDash([]);
      ctx.fillStyle = "#5a189a";
      ctx.fillText(grp.label || "group", xa - 10, ya - 13);
    }
    ctx.restore();
    ctx.font = "11px system-ui, sans-serif";
    for (const [id, text] of Object.entries(this.labels)) {
      const at = id.lastIndexOf("@");
      const l = g.layers.indexOf(id.slice(0, at));
      const p = Number(id.slice(at + 1));
      if (l < 0 || this.drawRow[l] < 0 || p >= g.n || !text) continue;
      const x = this.sx(p);
      const y = this.sy(this.drawRow[l]);
      if (x < P.x0 - 2 || x > P.x1 + 2 || y < P.y0 - 2 || y > P.y1 + 2) continue;
      const tw = ctx.measureText(text).width;
      const left = x + 12 + tw > P.x1; // near the right edge: write it on the left of the node
      ctx.fillStyle = "rgba(255,255,255,0.85)";
      ctx.fillRect(left ? x - 12 - tw - 2 : x + 10, y - 15, tw + 4, 14);
      ctx.fillStyle = "#7a5200";
      ctx.textAlign = "left";
      ctx.fillText(text, left ? x - 12 - tw : x + 12, y - 8);
    }

    // ---- axes: layer names (left), per-layer sums (right), tokens (bottom), positions (top)
    ctx.fillStyle = "#333";
    ctx.font = "11px system-ui, sans-serif";
    ctx.textBaseline = "middle";
    const every = Math.max(1, Math.ceil(12 / Math.max(rowH, 1)));
    const sums = this.layerSums();
    let maxSum = 0;
    for (const l of this.rowLayer) maxSum = Math.max(maxSum, Math.abs(sums[l]));
    for (let row = 0; row < R; row++) {
      const y = this.sy(row);
      if (y < P.y0 - 2 || y > P.y1 + 2) continue;
      const l = this.rowLayer[row];
      if (row % every === 0 || row === R - 1) {
        ctx.textAlign = "right";
        ctx.fillStyle = isMid(g.layers[l]) ? "#888" : "#333";
        ctx.fillText(g.layers[l], P.x0 - 10, y);
      }
      const s = sums[l];
      const bw = (Math.abs(s) / (maxSum || 1)) * (MARGIN.right - 50);
      ctx.fillStyle = s >= 0 ? "rgba(214,39,40,0.7)" : "rgba(31,119,180,0.7)";
      const bh = Math.max(1, Math.min(8, rowH * 0.6));
      ctx.fillRect(P.x1 + 8, y - bh / 2, bw, bh);
      if (row % every === 0 || row === R - 1) {
        ctx.fillStyle = "#444";
        ctx.textAlign = "left";
        ctx.fillText(fmt(s, 3), P.x1 + 12 + bw, y);
      }
    }
    ctx.textAlign = "center";
    ctx.fillStyle = "#555";
    ctx.fillText("Σ R per layer", P.x1 + MARGIN.right / 2, P.y0 - 12);
    ctx.textAlign = "left";
    ctx.fillText("layer", 6, P.y0 - 12);
    // positions on top, tokens below
    const step = Math.max(1, Math.ceil(40 / Math.max(colW, 0.01)));
    const nice = [1, 2, 5, 10, 20, 25, 50, 100, 200, 250, 500, 1000, 2000, 5000, 10000];
    const tick = nice.find((x) => x >= step) ?? step;
    ctx.textAlign = "center";
    ctx.fillStyle = "#666";
    for (let i = Math.ceil(cx0 / tick) * tick; i < cx1; i += tick) ctx.fillText(String(i), this.sx(i), P.y0 - 12);
    if (colW >= 9) {
      ctx.save();
      ctx.font = "10px ui-monospace, monospace";
      for (let i = cx0; i < cx1; i++) {
        const x = this.sx(i);
        ctx.save();
        ctx.translate(x, P.y1 + 8);
        ctx.rotate(Math.PI / 3);
        ctx.textAlign = "left";
        ctx.fillStyle = g.special[i] ? "#aaa" : i === this.focusCol ? "#b08800" : "#333";
        const tk = visible(g.tokens[i]);
        ctx.fillText(tk.length > 8 ? `${tk.slice(0, 7)}…` : tk, 0, 0);
        ctx.restore();
      }
      ctx.restore();
    } else {
      ctx.fillText(`token positions ${cx0}–${cx1 - 1} (zoom in to read the tokens)`, (P.x0 + P.x1) / 2, P.y1 + 22);
    }
    if (inView > this.edgeBudget) {
      ctx.textAlign = "left";
      ctx.fillStyle = "rgba(255,255,255,0.85)";
      const msg = `drawing the ${this.edgeBudget.toLocaleString("en-US")} strongest of ${inView.toLocaleString("en-US")}`
        + " edges in view: zoom in for the rest";
      ctx.font = "11px system-ui, sans-serif";
      const tw = ctx.measureText(msg).width;
      ctx.fillRect(P.x0 + 4, P.y0 + 2, tw + 8, 16);
      ctx.fillStyle = "#8a5a00";
      ctx.fillText(msg, P.x0 + 8, P.y0 + 10);
    }
    const info = { visibleEdges: inView, drawnEdges: Math.min(drawn, this.edgeBudget), ms: performance.now() - t0 };
    this.cb.onDraw?.(info);
    return info;
  }

  // ---------------------------------------------------------------------------------- mouse
  private local(ev: MouseEvent): { x: number; y: number } {
    const r = this.canvas.getBoundingClientRect();
    return { x: ev.clientX - r.left, y: ev.clientY - r.top };
  }

  private onWheel(ev: WheelEvent): void {
    if (!this.g) return;
    ev.preventDefault();
    const { x, y } = this.local(ev);
    this.zoomBy(Math.exp(-ev.deltaY * 0.0015), x, y);
    this.draw();
  }

  private onDown(ev: MouseEvent): void {
    if (!this.g || ev.button !== 0) return;
    const { x, y } = this.local(ev);
    this.dragging = { x, y, vx0: this.vx0, vy0: this.vy0, moved: false };
  }

  private onMove(ev: MouseEvent): void {
    if (!this.g) return;
    const { x, y } = this.local(ev);
    if (this.dragging) {
      const dx = x - this.dragging.x;
      const dy = y - this.dragging.y;
      if (Math.abs(dx) + Math.abs(dy) > 3) this.dragging.moved = true;
      if (this.dragging.moved) {
        const P = this.plot();
        const cols = (dx / (P.x1 - P.x0)) * (this.vx1 - this.vx0);
        const rows = (dy / (P.y1 - P.y0)) * (this.vy1 - this.vy0);
        const w = this.vx1 - this.vx0;
        const hh = this.vy1 - this.vy0;
        this.vx0 = this.dragging.vx0;
        this.vy0 = this.dragging.vy0;
        this.vx1 = this.vx0 + w;
        this.vy1 = this.vy0 + hh;
        this.pan(-cols, rows);
        this.draw();
      }
      return;
    }
    if (ev.target !== this.canvas) return;
    const node = this.nodeAt(x, y);
    const same = node && this.hover && node.l === this.hover.l && node.pos === this.hover.pos;
    if (!same && (node || this.hover)) {
      this.hover = node;
      if (!this.selected) this.draw();
    }
    this.cb.onHover(node, x, y);
  }

  private onUp(ev: MouseEvent): void {
    const d = this.dragging;
    this.dragging = null;
    if (!d || d.moved || !this.g) return;
    const { x, y } = this.local(ev);
    this.cb.onSelect(this.nodeAt(x, y), ev.shiftKey || ev.ctrlKey || ev.metaKey);
  }
}

/** An SVG of what the view last drew: edges (one path per colour/width bucket), nodes, layer labels. */
export function toSVG(v: GraphView, title: string): string {
  const g = v.g;
  const pr = v.pr;
  const w = v.canvas.width / Math.max(1, Math.min(2, window.devicePixelRatio || 1));
  const hh = v.canvas.height / Math.max(1, Math.min(2, window.devicePixelRatio || 1));
  const esc = (s: string) => s.replace(/[&<>"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" })[c]!);
  const out: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${w}" height="${hh}" viewBox="0 0 ${w} ${hh}" `
      + `font-family="system-ui, sans-serif" font-size="11">`,
    `<title>${esc(title)}</title>`,
    `<rect width="100%" height="100%" fill="#fff"/>`,
  ];
  if (!g || !pr) return `${out.join("")}</svg>`;
  const d: string[][] = Array.from({ length: 2 * N_BUCKETS }, () => []);
  for (let s = 0; s < v.lastCount; s++) {
    const o = s * 4;
    const f = (x: number) => x.toFixed(1);
    d[v.lastBuckets[s]].push(`M${f(v.lastSegs[o])} ${f(v.lastSegs[o + 1])}L${f(v.lastSegs[o + 2])} ${f(v.lastSegs[o + 3])}`);
  }
  for (let lvl = 0; lvl < N_BUCKETS; lvl++) {
    for (const sign of [0, 1]) {
      const parts = d[sign * N_BUCKETS + lvl];
      if (!parts.length) continue;
      const c = sign === 0 ? RED : BLUE;
      out.push(`<path fill="none" stroke="rgb(${c.join(",")})" stroke-opacity="${ALPHAS[lvl]}" `
        + `stroke-width="${WIDTHS[lvl]}" d="${parts.join("")}"/>`);
    }
  }
  let maxR = 0;
  for (const l of v.rowLayer) for (let i = 0; i < g.n; i++) if (pr.nodes[l][i]) maxR = Math.max(maxR, Math.abs(g.rel[l][i]));
  const cw = v.sx(1) - v.sx(0);
  const rh = Math.abs(v.sy(0) - v.sy(1)) || 20;
  const rMax = Math.max(1.2, Math.min(9, Math.min(cw, rh) * 0.42));
  const left = v.sx(-0.5);
  v.rowLayer.forEach((l, row) => {
    const y = v.sy(row);
    out.push(`<text x="${(left - 10).toFixed(1)}" y="${y.toFixed(1)}" text-anchor="end" dominant-baseline="middle">`
      + `${esc(g.layers[l])}</text>`);
    for (let i = Math.max(0, Math.floor(v.vx0)); i < Math.min(g.n, Math.ceil(v.vx1)); i++) {
      if (!pr.nodes[l][i]) continue;
      const r = rMax * Math.sqrt(Math.abs(g.rel[l][i]) / (maxR || 1));
      if (r < 0.5) continue;
      const fill = g.special[i] ? "#9aa0a6" : g.rel[l][i] >= 0 ? `rgb(${RED.join(",")})` : `rgb(${BLUE.join(",")})`;
      out.push(`<circle cx="${v.sx(i).toFixed(1)}" cy="${y.toFixed(1)}" r="${r.toFixed(2)}" fill="${fill}">`
        + `<title>${esc(`${g.layers[l]}@${i} ${visible(g.tokens[i])} R=${fmt(g.rel[l][i])}`)}</title></circle>`);
    }
  });
  out.push("</svg>");
  return out.join("\n");
}
