import assert from "node:assert/strict";
import { test } from "node:test";

import { decode, type Graph } from "../src/clg";
import { cumMassPrefix, incidentEdges, layerSums, prune } from "../src/prune";
import { encodeCLG1, type TEdges } from "./encode";

// a seeded generator (mulberry32) so the random graphs are reproducible
function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function randomGraph(seed: number, n: number, L: number, ties = false): { g: Graph; trans: TEdges[]; layers: string[] } {
  const r = rng(seed);
  const layers = ["emb"];
  for (let l = 0; l < L; l++) layers.push(`${l}.mid`, `${l}`);
  const rel = layers.map(() => Array.from({ length: n }, () => (r() - 0.4) * 2));
  const trans: TEdges[] = [];
  for (let k = 0; k + 1 < layers.length; k++) {
    const rows: number[] = [];
    const cols: number[] = [];
    const vals: number[] = [];
    for (let j = 0; j < n; j++) {
      for (let i = 0; i <= j; i++) {
        if (r() < 0.5) {
          rows.push(j);
          cols.push(i);
          vals.push(ties ? Math.round((r() - 0.5) * 6) / 2 || 0.5 : (r() - 0.5) * 4);
        }
      }
    }
    const sent = vals.reduce((a, v) => a + Math.abs(Math.fround(v)), 0);
    // the server sends a prefix: pretend some mass was not sent
    trans.push({ src: layers[k], tgt: layers[k + 1], rows, cols, vals, totalMass: sent * (1 + r() * 0.05) });
  }
  return { g: decode(encodeCLG1(n, layers, rel, trans)), trans, layers };
}

/** The reference: written straight from the contract, on plain arrays, with no shared code. */
function reference(g: Graph, p: number, tau: number, subgraph: boolean): { edges: Set<string>; nodes: Set<string> } {
  const keptNode = (l: number, i: number) => {
    if (l === g.layers.length - 1 && i === g.n - 1) return true;
    const mx = Math.max(...Array.from(g.rel[l], Math.abs));
    return Math.abs(g.rel[l][i]) >= tau * mx;
  };
  let edges: { s: number; t: number; i: number; j: number; key: string }[] = [];
  g.transitions.forEach((t, k) => {
    const abs = Array.from(t.vals, Math.abs);
    let c = 0;
    let kstar = -1;
    for (let e = 0; e < abs.length; e++) {
      c += abs[e];
      if (c >= p * t.totalMass) {
        kstar = e;
        break;
      }
    }
    let len = abs.length;
    if (kstar >= 0) {
      len = kstar + 1;
      while (len < abs.length && abs[len] === abs[kstar]) len++;
    }
    for (let e = 0; e < len; e++) {
      const i = t.cols[e];
      const j = t.rows[e];
      if (keptNode(t.s, i) && keptNode(t.t, j)) edges.push({ s: t.s, t: t.t, i, j, key: `${k}:${e}` });
    }
  });
  const nodes = new Set<string>();
  if (subgraph) {
    const anc = new Set<string>([`${g.layers.length - 1}@${g.n - 1}`]);
    let changed = true;
    while (changed) {
      changed = false;
      for (const e of edges) {
        if (anc.has(`${e.t}@${e.j}`) && !anc.has(`${e.s}@${e.i}`)) {
          anc.add(`${e.s}@${e.i}`);
          changed = true;
        }
      }
    }
    edges = edges.filter((e) => anc.has(`${e.t}@${e.j}`));
    anc.forEach((x) => nodes.add(x));
  } else {
    for (let l = 0; l < g.layers.length; l++) for (let i = 0; i < g.n; i++) if (keptNode(l, i)) nodes.add(`${l}@${i}`);
  }
  return { edges: new Set(edges.map((e) => e.key)), nodes };
}

function keptSets(g: Graph, p: number, tau: number, subgraph: boolean): { edges: Set<string>; nodes: Set<string> } {
  const pr = prune(g, { p, tau, subgraph });
  const edges = new Set<string>();
  pr.keep.forEach((kk, k) => kk.forEach((v, e) => v && edges.add(`${k}:${e}`)));
  const nodes = new Set<string>();
  pr.nodes.forEach((m, l) => m.forEach((v, i) => v && nodes.add(`${l}@${i}`)));
  assert.equal(pr.keptEdges, edges.size);
  assert.equal(pr.keptNodes, nodes.size);
  return { edges, nodes };
}

test("prune matches the reference on random graphs (p, tau, subgraph)", () => {
  for (const seed of [1, 2, 3]) {
    const { g } = randomGraph(seed, 9, 3, seed === 3);
    for (const p of [0.05, 0.3, 0.5, 0.85, 0.9, 0.98, 1]) {
      for (const tau of [0, 0.1, 0.5]) {
        for (const sub of [false, true]) {
          const got = keptSets(g, p, tau, sub);
          const want = reference(g, p, tau, sub);
          assert.deepEqual([...got.edges].sort(), [...want.edges].sort(), `seed ${seed} p ${p} tau ${tau} sub ${sub}`);
          assert.deepEqual([...got.nodes].sort(), [...want.nodes].sort(), `nodes: seed ${seed} p ${p} tau ${tau}`);
        }
      }
    }
  }
});

test("cum-mass keeps the ties of the last kept |w| and everything past the sent mass", () => {
  const vals = new Float32Array([4, 2, 2, 2, 1]);
  const cum = new Float64Array([4, 6, 8, 10, 11]);
  assert.equal(cumMassPrefix(cum, vals, 11, 0.3), 1); // 4 >= 3.3
  assert.equal(cumMassPrefix(cum, vals, 11, 0.5), 4); // 6 >= 5.5 at k=1, ties at k=2,3
  assert.equal(cumMassPrefix(cum, vals, 11, 1), 5);
  assert.equal(cumMassPrefix(cum, vals, 20, 0.9), 5); // 18 > 11 sent: keep all
  assert.equal(cumMassPrefix(new Float64Array(0), new Float32Array(0), 0, 0.5), 0);
});

test("prune reports the transitions at the limit of what was sent", () => {
  const { g } = randomGraph(5, 6, 2);
  const pr = prune(g, { p: 1, tau: 0, subgraph: false });
  assert.equal(pr.atLimit.length, g.transitions.length);
  assert.equal(pr.keptEdges, g.edges);
  assert.ok(pr.maxP < 1);
  assert.equal(prune(g, { p: 0.5, tau: 0, subgraph: false }).atLimit.length, 0);
});

test("the final node survives any node threshold; subgraph edges all lead to it", () => {
  const { g } = randomGraph(7, 8, 2);
  const pr = prune(g, { p: 0.9, tau: 1, subgraph: true });
  assert.equal(pr.nodes[g.layers.length - 1][g.n - 1], 1);
  const pr2 = prune(g, { p: 0.9, tau: 0, subgraph: true });
  assert.ok(pr2.keptEdges > 0);
  assert.ok(pr2.keptEdges <= prune(g, { p: 0.9, tau: 0, subgraph: false }).keptEdges);
});

test("incident edges and layer sums", () => {
  const { g } = randomGraph(11, 6, 1);
  const pr = prune(g, { p: 1, tau: 0, subgraph: false });
  const inc = incidentEdges(g, pr, 1, 3);
  let want = 0;
  g.transitions.forEach((t) => {
    for (let e = 0; e < t.count; e++) {
      if ((t.t === 1 && t.rows[e] === 3) || (t.s === 1 && t.cols[e] === 3)) want++;
    }
  });
  assert.equal(inc.length, want);
  for (let a = 1; a < inc.length; a++) {
    const w = (x: (typeof inc)[number]) => Math.abs(g.transitions[x.k].vals[x.e]);
    assert.ok(w(inc[a - 1]) >= w(inc[a]));
  }
  const sums = layerSums(g);
  assert.ok(Math.abs(sums[0] - Array.from(g.rel[0]).reduce((a, b) => a + b, 0)) < 1e-9);
});

test("prune of a 100k-edge graph is fast (printed; bound generous)", () => {
  const n = 600;
  const layers = ["emb", "0.mid", "0", "1.mid", "1"];
  const r = rng(3);
  const rel = layers.map(() => Array.from({ length: n }, () => r() - 0.5));
  const trans: TEdges[] = [];
  for (let k = 0; k + 1 < layers.length; k++) {
    const rows: number[] = [];
    const cols: number[] = [];
    const vals: number[] = [];
    for (let e = 0; e < 30000; e++) {
      const j = Math.floor(r() * n);
      rows.push(j);
      cols.push(Math.floor(r() * (j + 1)));
      vals.push((r() - 0.5) * Math.exp(-8 * r()));
    }
    trans.push({ src: layers[k], tgt: layers[k + 1], rows, cols, vals });
  }
  const g = decode(encodeCLG1(n, layers, rel, trans));
  const t0 = performance.now();
  const pr = prune(g, { p: 0.9, tau: 0.01, subgraph: true });
  const ms = performance.now() - t0;
  console.log(`prune ${g.edges} edges: ${ms.toFixed(1)} ms, kept ${pr.keptEdges}`);
  assert.ok(ms < 2000);
});
