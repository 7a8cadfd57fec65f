import assert from "node:assert/strict";
import { test } from "node:test";

import { type Explanation, segmentMasks, segmentSums } from "../src/heatmap";

function ex(segments: Record<string, [number, number][]>): Explanation {
  const n = 8;
  const v = [0.5, -1, 0.25, 1, 0.5, -0.5, 0.125, 2];
  return {
    key: "k", model: "m", method: "attnlrp", n_tokens: n, ids: [], tokens: [], logit_diff: 1, seconds: 0,
    special: [true, false, false, false, false, false, false, true],
    target: { id: 1, str: "a" }, contrast: { id: 2, str: "b" }, top_logits: [], input_relevance: v,
    norms: { max_abs: v, sum_abs: v.map((x) => x / 10), abs_sum: v }, segments, segment_sums: {}, layer_sums: [],
  };
}

test("segment masks follow Explanation.segment_masks (answer minus instruction, query = the rest)", () => {
  const e = ex({ instruction: [[0, 3]], answer: [[2, 5]] });
  const m = segmentMasks(e)!;
  assert.deepEqual(Array.from(m.instruction), [0, 1, 1, 0, 0, 0, 0, 0]); // special token 0 excluded
  assert.deepEqual(Array.from(m.answer), [0, 0, 0, 1, 1, 0, 0, 0]);
  assert.deepEqual(Array.from(m.query), [0, 0, 0, 0, 0, 1, 1, 0]); // not the special token 7
  const s = segmentSums(e, "max_abs");
  assert.equal(s.instruction, -0.75);
  assert.equal(s.answer, 1.5);
  assert.equal(s.query, -0.375);
  assert.equal(s.total, 0.375);
  assert.ok(Math.abs(segmentSums(e, "sum_abs").answer - 0.15) < 1e-12);
});

test("no segments: no masks, zero sums", () => {
  assert.equal(segmentMasks(ex({})), null);
  assert.deepEqual(segmentSums(ex({}), "max_abs"), { instruction: 0, query: 0, answer: 0, total: 0 });
});
