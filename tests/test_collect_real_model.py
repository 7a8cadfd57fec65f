"""One real-model check of the collection pipeline (slow: loads SmolLM2-135M-Instruct)."""

import pytest

pytestmark = pytest.mark.slow


def test_smollm2_agent_trace_is_probed_first_at_the_wrong_argument(tmp_path):
    import torch

    from contrastlens.benchmarks import get_benchmark
    from contrastlens.cases.io import load_cases
    from contrastlens.collect import CollectResources, CollectSettings, collect
    from contrastlens.collect.localise import char_to_token
    from contrastlens.models.loading import load_model

    lm = load_model("smollm2-135m-instruct")  # a missing model package is a failure, not a skip
    torch.manual_seed(0)
    bench = get_benchmark("gaia2")
    items, _ = bench.load()
    summ = collect(CollectSettings(max_new_tokens=32, top_k=2, max_probes=1, progress=False), CollectResources(lm),
                   bench, str(tmp_path / "gaia2.jsonl"), items=items)
    (case,) = load_cases(tmp_path / "gaia2.jsonl")
    assert case.benchmark == "gaia2" and case.id == "gaia2-synthetic-calendar-0"
    assert summ.failed == 1 and case.details["reason"] == "wrong argument event_id"
    assert len(case.prompt_ids) > 8000
    # the checker points at the event id: the first probe is the token that starts it
    score = bench.score(items[0], case.completion)
    start = char_to_token(lm, case.completion_ids, score.broke_at)
    assert f"checker: broke at completion token {start}" in case.notes
    assert case.n_rollouts >= 2
    if case.status == "localised":
        assert case.failure_index <= start + 3
        assert case.ids_before_err[-1] == case.completion_ids[case.failure_index - 1]
