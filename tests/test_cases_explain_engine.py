"""A collected case explained by the attribution engine: same input, same Δℓ."""

import pytest

import contrastlens as cl
from contrastlens.cli.main import main


@pytest.fixture(scope="module")
def case_file(tmp_path_factory):
    from contrastlens.benchmarks import Benchmark, Item, Score
    from contrastlens.collect import CollectResources, CollectSettings, collect

    lm = cl.load_model("random:llama")

    class NotPrefix(Benchmark):
        name = "np"

        def messages(self, item):
            return [{"role": "user", "content": "Name a fruit."}]

        def score(self, item, completion):
            return Score(not completion.startswith(self.bad), {})

    bench = NotPrefix()
    ids = lm.encode(lm.apply_chat_template("Name a fruit."), add_special_tokens=False)
    from contrastlens.collect.generate import generate_greedy

    comp = generate_greedy(lm, [ids], max_new_tokens=8)[0].ids
    bench.bad = lm.tokenizer.decode(comp[:3], skip_special_tokens=True)
    out = tmp_path_factory.mktemp("cases") / "c.jsonl"
    collect(CollectSettings(max_new_tokens=8, top_k=2, progress=False), CollectResources(lm), bench, str(out),
            items=[Item("a", {})])
    return lm, out


def test_explain_case_matches_collected_delta_logit(case_file):
    lm, out = case_file
    (case,) = cl.load_cases(out)
    assert case.status == "localised" and case.failure_index == 2
    ex = cl.explain(lm, case)
    assert ex.logit_diff == pytest.approx(case.delta_logit, abs=1e-3)
    assert len(ex.input_relevance) == len(case.ids_before_err)


def test_explain_cli_with_case_reference(case_file, tmp_path):
    lm, out = case_file
    html = tmp_path / "case.html"
    assert main(["explain", "--model", "random:llama", "--case", f"{out}#np-a", "--html", str(html), "--quiet"]) == 0
    assert html.stat().st_size > 1000
    assert main(["explain", "--model", "random:llama", "--case", f"{out}#nope", "--quiet"]) == 2
