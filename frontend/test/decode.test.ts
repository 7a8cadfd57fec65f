import assert from "node:assert/strict";
import { test } from "node:test";

import { decode, FormatError, nodeId, parseNodeId } from "../src/clg";
import { encodeCLG1 } from "./encode";

const LAYERS = ["emb", "0.mid", "0"];
const REL = [[0.5, -1, 2], [1, 0.25, -3], [0, 0, 4]];
const TRANS = [
  { src: "emb", tgt: "0.mid", rows: [0, 1, 2, 2], cols: [0, 0, 1, 2], vals: [0.1, -0.7, 0.3, 2], totalMass: 5 },
  { src: "0.mid", tgt: "0", rows: [0, 1, 2], cols: [0, 1, 2], vals: [1, 0.25, -3] },
];

test("decode reads the header, relevance and sorted edges", () => {
  const g = decode(encodeCLG1(3, LAYERS, REL, TRANS));
  assert.equal(g.n, 3);
  assert.deepEqual(g.layers, LAYERS);
  assert.deepEqual(Array.from(g.rel[2]), [0, 0, 4]);
  assert.deepEqual(Array.from(g.rel[0]), [0.5, -1, 2]);
  assert.equal(g.transitions.length, 2);
  const t = g.transitions[0];
  assert.equal(t.s, 0);
  assert.equal(t.t, 1);
  assert.ok(t.rows instanceof Uint16Array);
  // sorted by |w| descending: 2 (2,2), -0.7 (1,0), 0.3 (2,1), 0.1 (0,0)
  assert.deepEqual(Array.from(t.rows), [2, 1, 2, 0]);
  assert.deepEqual(Array.from(t.cols), [2, 0, 1, 0]);
  assert.deepEqual(Array.from(t.vals).map((v) => Math.round(v * 1e6) / 1e6), [2, -0.7, 0.3, 0.1]);
  assert.equal(t.totalMass, 5);
  assert.ok(Math.abs(t.cum[3] - 3.1) < 1e-6);
  assert.equal(g.edges, 7);
  assert.equal(g.tokens[1], "t1");
  assert.deepEqual(g.special, [true, false, false]);
});

test("decode reads int32 indices (n > 65535 payloads)", () => {
  const g = decode(encodeCLG1(3, LAYERS, REL, TRANS, {}, "int32"));
  assert.ok(g.transitions[0].rows instanceof Int32Array);
  assert.deepEqual(Array.from(g.transitions[1].cols), [2, 0, 1]);
});

test("decode views the arrays in place (no copy)", () => {
  const bytes = encodeCLG1(3, LAYERS, REL, TRANS);
  const g = decode(bytes.buffer as ArrayBuffer);
  assert.equal(g.rel[0].buffer, bytes.buffer);
  assert.equal(g.transitions[0].vals.buffer, bytes.buffer);
});

test("decode refuses malformed payloads with a one-line message", () => {
  const good = encodeCLG1(3, LAYERS, REL, TRANS);
  const bad = good.slice();
  bad[0] = 0x58;
  assert.throws(() => decode(bad), /not a CLG1 graph/);
  assert.throws(() => decode(good.slice(0, good.length - 8)), /past the end/);
  assert.throws(() => decode(new Uint8Array(4)), /too short/);
  assert.throws(() => decode(encodeCLG1(3, LAYERS, REL, TRANS, { wire_version: 2 })), /wire version 2/);
  try {
    decode(bad);
  } catch (e) {
    assert.ok(e instanceof FormatError);
    assert.ok(!(e as Error).message.includes("\n"));
  }
});

test("node ids round-trip", () => {
  assert.equal(nodeId("3.mid", 7), "3.mid@7");
  assert.deepEqual(parseNodeId("3.mid@7"), { layer: "3.mid", pos: 7 });
  assert.equal(parseNodeId("3.mid"), null);
  assert.equal(parseNodeId("x@-1"), null);
});
