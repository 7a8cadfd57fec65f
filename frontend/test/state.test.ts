import assert from "node:assert/strict";
import { test } from "node:test";

import { decodeState, defaultState, encodeState, type ViewState } from "../src/state";

test("the default state encodes to an empty hash", () => {
  assert.equal(encodeState(defaultState()), "");
  assert.deepEqual(decodeState(""), defaultState());
  assert.deepEqual(decodeState("#"), defaultState());
});

test("a full state round-trips through the hash, odd characters included", () => {
  const s: ViewState = {
    ...defaultState(),
    model: "random:llama",
    compare: "folder:ckpt-2",
    input: { kind: "prompt", prompt: "a&b=c #d %e +f\nnew line «é» 日本 | : , \\", chat: true },
    append: [5, 0, 17],
    target: { text: " Paris&#" },
    contrast: { id: 42 },
    norm: "abs_sum",
    explained: true,
    graph: { mid: false, layers: ["emb", "0", "3"], nodeThreshold: 0.01, sendP: 0.95 },
    p: 0.42,
    tau: 0.05,
    subgraph: true,
    hideMid: true,
    pins: ["0@3", "1.mid@0"],
    labels: { "0@3": "the | sub:ject, \\x" },
    groups: [{ label: "sub|ject: a, b", nodes: ["0@3", "0@4"] }, { label: "", nodes: ["emb@1"] }],
    selected: "0@3",
  };
  const h = encodeState(s);
  assert.ok(!h.includes("#") && !h.includes("\n") && !h.includes(" "));
  assert.deepEqual(decodeState(`#${h}`), s);
});

test("a case input round-trips (the file may contain '::' and slashes)", () => {
  const s: ViewState = { ...defaultState(), model: "m", input: { kind: "case", file: "sub/dir/a::b.jsonl", id: "ifeval-12" } };
  assert.deepEqual(decodeState(encodeState(s)), s);
});

test("malformed values fall back to defaults", () => {
  const s = decodeState("#p=7&tau=-1&t=%2312x&c=junk&norm=nope&pins=a@1,../x@2,b@-3&sel=<script>&app=1,x,-2,3&g=1&gsp=0");
  assert.equal(s.p, defaultState().p);
  assert.equal(s.tau, 0);
  assert.equal(s.target, null);
  assert.equal(s.contrast, null);
  assert.equal(s.norm, "max_abs");
  assert.deepEqual(s.pins, ["a@1"]);
  assert.equal(s.selected, null);
  assert.deepEqual(s.append, [1, 3]);
  assert.equal(s.graph?.sendP, 0.98);
});
