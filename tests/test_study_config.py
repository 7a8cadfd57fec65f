"""The study file: validation with messages naming the file and the key path, path resolution, analysis
settings validated against their Settings dataclass (strictly: no coercion across kinds)."""

from pathlib import Path

import pytest

import tests.study_toy  # noqa: F401  (registers the toy analyses)
from contrastlens.errors import InputError
from contrastlens.study.config import load_study, parse_study

BASE = """
[study]
name = "s"
[[models]]
name = "a"
source = "random:llama"
[[models]]
name = "b"
source = "random:qwen2"
[[cases]]
path = "cases.jsonl"
[analyses.toy]
"""


def _write(tmp_path: Path, text: str, name: str = "study.toml") -> Path:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def _error(tmp_path: Path, text: str) -> str:
    p = _write(tmp_path, text)
    with pytest.raises(InputError) as e:
        load_study(p)
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith(str(p)) or msg.startswith("study file")
    return msg[len(str(p)) + 2:] if msg.startswith(str(p)) else msg


def test_a_valid_study_resolves_paths_against_its_folder(tmp_path, monkeypatch):
    (tmp_path / "ckpt" / "step-20").mkdir(parents=True)
    monkeypatch.chdir("/")
    monkeypatch.setenv("CONTRASTLENS_DATA", "/data/from/env")
    p = _write(tmp_path, BASE.replace('source = "random:qwen2"', 'source = "ckpt/step-20"\nseries = "sft"\nstep = 20')
               + "scale = 3\nfail_on = [\"x\", \"y\"]\n[analyses.toy2]\n")
    st = load_study(p)
    assert st.name == "s" and st.rules == ("attnlrp",) and st.seed == 0
    assert [m.name for m in st.models] == ["a", "b"]
    assert st.models[0].source == "random:llama"  # not a path: kept as written
    assert st.models[1].source == str((tmp_path / "ckpt" / "step-20").resolve())
    assert (st.models[1].series, st.models[1].step, st.models[1].attn, st.models[1].dtype) == ("sft", 20, "eager",
                                                                                              "float32")
    assert st.cases[0].path == str((tmp_path / "cases.jsonl").resolve())
    assert st.cases[0].models == ("a", "b") and st.cases[0].clean_only is True
    toy = st.analyses["toy"]
    assert type(toy).__name__ == "ToySettings"
    assert toy.scale == 3.0 and isinstance(toy.scale, float)  # an int fills a float field
    assert toy.fail_on == ("x", "y")  # an array fills a tuple field
    assert list(st.analyses) == ["toy", "toy2"]
    assert st.data == "/data/from/env"
    info = st.info(tmp_path / "out")
    assert info.root == str(tmp_path.resolve()) and info.out == str((tmp_path / "out").resolve())
    assert info.series("sft") == [st.models[1]]
    # data given: relative to the study file
    st2 = load_study(_write(tmp_path, BASE.replace('name = "s"', 'name = "s"\ndata = "../shared"'), "s2.toml"))
    assert st2.data == str((tmp_path / ".." / "shared").resolve())
    # the variable relative: to the working directory, not to the study file
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("CONTRASTLENS_DATA", "../bench-data")
    assert load_study(p).data == str((tmp_path / "bench-data").resolve())


@pytest.mark.parametrize("edit, expected", [
    (("[analyses.toy]", "[analyses.toy]\nscal = 2"), "[analyses.toy] unknown key 'scal' (known: scale, method, "
                                                     "options, sleep, fail_on)"),
    (('name = "b"\nsource = "random:qwen2"', 'name = "b"'), "models[1].source: field required"),
    (("[study]", "[study]\nnmae = 1"), "[study] unknown key 'nmae'"),
    (("[[cases]]", "[[cases]]\nlimt = 3"), "cases[0]: unknown key 'limt'"),
    (("[study]", "colour = 1\n[study]"), "the top level: unknown key 'colour'"),
    (('name = "s"', 'name = "s"\nseed = "1"'), "study.seed: Input should be a valid integer (got '1')"),
    (("[[cases]]", "[[cases]]\nclean_only = 1"), "cases[0].clean_only: Input should be a valid boolean (got 1)"),
    (("[[cases]]", "[[cases]]\nlimit = 0"), "cases[0].limit: Input should be greater than or equal to 1 (got 0)"),
    (('name = "s"', 'name = "s"\n[attribution]\nrules = ["attnlrp", "lrp"]'),
     "attribution.rules[1]: Input should be 'attnlrp' or 'cp-lrp' (got 'lrp')"),
    (("[analyses.toy]", "[analyses.toy]\nscale = \"big\""), "[analyses.toy] scale: Input should be a valid number"),
    (("[analyses.toy]", "[analyses.toy]\nscale = true"), "[analyses.toy] scale: Input should be a valid number"),
    (("[analyses.toy]", "[analyses.toy]\nfail_on = \"x\""), "[analyses.toy] fail_on: Input should be a valid array"),
    (("[analyses.toy]", "[analyses.nosuch]"), "[analyses.nosuch] unknown analysis 'nosuch'"),
    (('name = "b"', 'name = "a"'), "models[1].name: 'a' is already the name of models[0]"),
    (('source = "random:qwen2"', 'source = "random:qwen2"\nseries = "sft"'),
     "models[1].step: model 'b' of series 'sft' needs a step"),
    (('source = "random:qwen2"', 'source = "random:qwen2"\nstep = 3'), "models[1].step: a step places a model in a "
                                                                        "checkpoint series"),
    (('source = "random:qwen2"', 'source = "random:qwen2"\nseries = "x"\nstep = 1\n[[models]]\nname = "c"\n'
                                 'source = "random:gpt2"\nseries = "x"\nstep = 1'),
     "models[2].step: step 1 of series 'x' is already the step of models[1]"),
    (('path = "cases.jsonl"', 'path = "cases.jsonl"\nmodels = ["a", "zz"]'),
     "cases[0].models[1]: no model named 'zz' (models: a, b)"),
    (('path = "cases.jsonl"', 'path = "cases.jsonl"\nmodels = []'), "cases[0].models: an empty list"),
    (("[analyses.toy]", ""), "analyses: field required"),
    (('name = "s"', 'name = "s"\nplugins = ["no_such_plugin_module"]'),
     "study.plugins[0]: cannot import 'no_such_plugin_module' (ModuleNotFoundError"),
    (("[analyses.toy]", "[analyses.toy]\n[runner]\nnum_cpus = 0"), "runner.num_cpus: Input should be greater than 0"),
    (('name = "s"', 'name = "s"\n[study.x]'), "[study] unknown key 'x'"),
])
def test_bad_study_files_name_the_key(tmp_path, edit, expected):
    old, new = edit
    assert old in BASE
    msg = _error(tmp_path, BASE.replace(old, new, 1))
    assert msg.startswith(expected), msg


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(InputError, match=r"study file .*nope.toml does not exist"):
        load_study(tmp_path / "nope.toml")
    msg = _error(tmp_path, BASE + "scale = = 2\n")
    assert msg.startswith("invalid TOML:") and "line" in msg
    with pytest.raises(InputError, match="is a folder"):
        load_study(tmp_path)


def test_settings_post_init_errors_and_the_data_are_plain(tmp_path):
    from dataclasses import dataclass

    from contrastlens.study.base import register_analysis, unregister_analysis

    @dataclass
    class S:
        k: int = 1

        def __post_init__(self):
            if self.k < 0:
                raise ValueError("k must be >= 0")

    class A:
        name = "post-init-probe"
        Settings = S

    register_analysis(A)
    try:
        with pytest.raises(InputError, match=r"s.toml: \[analyses.post-init-probe\] k must be >= 0"):
            parse_study({"study": {"name": "s"}, "models": [{"name": "a", "source": "random:llama"}],
                         "cases": [{"path": "c.jsonl"}], "analyses": {"post-init-probe": {"k": -1}}},
                        root=tmp_path, label="s.toml")
        st = parse_study({"study": {"name": "s"}, "models": [{"name": "a", "source": "random:llama"}],
                          "cases": [{"path": "c.jsonl"}], "analyses": {"post-init-probe": {"k": 4}}}, root=tmp_path)
        assert st.analyses["post-init-probe"] == S(k=4)
        assert st.raw["analyses"] == {"post-init-probe": {"k": 4}}
    finally:
        unregister_analysis("post-init-probe")
