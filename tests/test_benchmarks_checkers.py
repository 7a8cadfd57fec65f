from pathlib import Path

import pytest

from contrastlens.benchmarks import Item, get_benchmark
from contrastlens.benchmarks.base import default_data_dir
from contrastlens.benchmarks.math500 import equivalent, extract_answer
from contrastlens.errors import InputError

pytest.importorskip("lm_eval")
pytest.importorskip("math_verify")


@pytest.fixture
def data_dir():
    # $CONTRASTLENS_DATA, else the data folder next to the checkout (there is no built-in default any more)
    d = default_data_dir() or Path(__file__).resolve().parents[2] / "shared" / "data"
    if not (d / "ifeval_input_data.jsonl").exists():
        pytest.skip("benchmark data not found (set CONTRASTLENS_DATA)")
    return d


def ifeval_item(ids, kwargs, prompt="Write about cats."):
    return Item("x", {"key": 1, "prompt": prompt, "instruction_id_list": ids, "kwargs": kwargs})


def test_ifeval_no_comma_and_lowercase():
    b = get_benchmark("ifeval")
    it = ifeval_item(["punctuation:no_comma", "change_case:english_lowercase"], [{}, {}])
    ok = b.score(it, "cats are small and soft animals. they sleep a lot.")
    assert ok.passed and ok.details["strict"] and ok.details["loose"]
    bad = b.score(it, "cats are small, soft animals. they sleep a lot.")
    assert not bad.passed and bad.details["failed"] == ["punctuation:no_comma"]
    assert bad.broke_at == len("cats are small")
    upper = b.score(it, "cats are Small and soft.")
    assert not upper.passed and upper.broke_at == len("cats are ")


def test_ifeval_word_count_title_and_loose():
    b = get_benchmark("ifeval")
    it = ifeval_item(["length_constraints:number_words", "detectable_format:title"],
                     [{"relation": "less than", "num_words": 10}, {}])
    assert b.score(it, "<<Cats>>\nCats purr.").passed
    assert not b.score(it, "<<Cats>>\n" + "word " * 20).passed
    notitle = b.score(it, "Cats purr.")
    assert not notitle.passed and notitle.details["failed"] == ["detectable_format:title"]
    # loose accepts a response whose first line is a preamble, strict does not
    it2 = ifeval_item(["startend:end_checker"], [{"end_phrase": "Is there anything else I can help with?"}])
    s = b.score(it2, "Cats purr. Is there anything else I can help with?\n**")
    assert s.details["loose"] and not s.details["strict"]


def test_ifeval_real_file_loads_and_segments(data_dir):
    b = get_benchmark("ifeval")
    items, bad = b.load(data_dir=data_dir)
    assert len(items) == 541 and bad == []
    it = next(i for i in items if i.id == "1000")
    prompt = "<|im_start|>user\n" + it.data["prompt"] + "<|im_end|>"
    seg = b.segments(it, prompt)
    instr = " ".join(prompt[a:b] for a, b in seg["instruction"])
    assert "Do not use any commas" in instr
    assert all(prompt[a:b].strip() for a, b in seg["query"])


def test_ifeval_bad_rows(tmp_path):
    f = tmp_path / "bad.jsonl"
    f.write_text('{"key": 1, "prompt": "x"}\nnot json\n'
                 '{"key": 2, "prompt": "y", "instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]}\n')
    items, bad = get_benchmark("ifeval").load(f)
    assert [i.id for i in items] == ["2"]
    assert bad[0][0] == "1" and "missing field(s) instruction_id_list, kwargs" in bad[0][1]
    assert bad[1] == ("line2", "not valid JSON")
    g = tmp_path / "math.jsonl"
    g.write_text('{"problem": "1+1", "answer": "2", "unique_id": "a"}\n')
    with pytest.raises(InputError, match="right benchmark"):
        get_benchmark("ifeval").load(g)


@pytest.mark.parametrize("gold, pred, same", [
    ("\\frac{1}{2}", "0.5", True), ("\\frac{1}{2}", "0.6", False), ("3\\sqrt{13}", "\\sqrt{117}", True),
    ("(3, \\frac{\\pi}{2})", "(3,\\pi/2)", True), ("10", "10.0", True), ("x^2+1", "1+x^2", True),
    ("5", "6", False),
])
def test_math_equivalence(gold, pred, same):
    assert equivalent(gold, pred) is same


def test_math_extraction_and_score():
    text = "so \\boxed{\\frac{1}{2}} and then \\boxed{3}."
    assert extract_answer(text) == ("3", text.index("3}"))
    assert extract_answer("it is \\boxed{\\frac{a}{\\sqrt{b}}}")[0] == "\\frac{a}{\\sqrt{b}}"
    assert extract_answer("The final answer is 42.")[0] == "42"
    assert extract_answer("x = 3 and then y = 7")[0] == "7"
    assert extract_answer("no numbers here") is None
    b = get_benchmark("math500")
    it = Item("m", {"problem": "Half of one?", "answer": "\\frac{1}{2}"})
    assert b.score(it, "We get \\boxed{0.5}.").passed
    s = b.score(it, "We get \\boxed{0.25}.")
    at = len("We get \\boxed{")
    assert not s.passed and s.details["extracted"] == "0.25" and s.broke_at == at
    assert s.hints == [at, at + 1, at + 2, at + 3]  # every character of the wrong answer
    assert not b.score(it, "I do not know").passed
    stated = b.score(it, "Halving gives 0.3.\n\nSo, the answer is 0.3.")  # a stated answer is a commitment
    assert not stated.passed and stated.details["found_by"] == "phrase"
    assert stated.broke_at == len("Halving gives 0.3.\n\nSo, the answer is ") and len(stated.hints) == 3
    plain = b.score(it, "so the half is 0.25 and then")  # no stated answer: no place to point at
    assert not plain.passed and plain.details["extracted"] == "0.25" and plain.broke_at is None


def test_settled_marks_where_more_text_cannot_change_the_verdict():
    m, h = get_benchmark("math500"), get_benchmark("humaneval")
    assert not m.settled("so \\boxed{\\frac{1}{2") and m.settled("so \\boxed{\\frac{1}{2}}")
    assert not m.settled("the answer is 3")
    assert not h.settled("```python\ndef f():\n    return 1\n") and h.settled("```python\ndef f():\n    return 1\n```")
    assert not h.settled("```python\n") and get_benchmark("ifeval").settled is None


def test_math_real_file(data_dir):
    items, bad = get_benchmark("math500").load(data_dir=data_dir)
    assert len(items) == 500 and not bad
    b = get_benchmark("math500")
    it = items[0]
    assert b.score(it, f"Thus \\boxed{{{it.data['answer']}}}.").passed
    prompt = "user: " + b.messages(it)[0]["content"]
    seg = b.segments(it, prompt)
    assert prompt[slice(*seg["query"][0])] == it.data["problem"]
    assert "boxed" in prompt[slice(*seg["instruction"][0])]
