"""The explorer's API through the ASGI test client: every endpoint, its values against direct computations,
and every kind of bad request (the right 4xx and error code, never a 500)."""

from __future__ import annotations

import dataclasses
import json
import os
import threading

import numpy as np
import pytest
from fastapi.testclient import TestClient

import contrastlens as cl
from contrastlens.errors import InputError
from contrastlens.server import ServerSettings, create_app
from contrastlens.server.wire import decode_graph
from tests.server_helpers import wait_job

PROMPT = "The capital of France is Paris, and the capital of Italy is"
LLAMA = "random:llama"
MAX_TOKENS = 64
LOCAL = "http://127.0.0.1"


def _lm(arch: str = "llama"):
    from tests.conftest import _random_lm

    return _random_lm(arch)


def make_case(lm, cid: str = "ifeval-t1"):
    from contrastlens.cases.schema import FailureCase

    msgs = [{"role": "user", "content": "Write a short answer about France. Do not use any commas."}]
    prompt = lm.apply_chat_template(msgs)
    comp = lm.encode("The capital of France is Paris, and", add_special_tokens=False)
    fi = len(comp) - 2
    before = lm.tokenizer.decode(comp[:fi], skip_special_tokens=True)
    start = prompt.index("Do not")
    segs = {"instruction": [(start, start + 27)], "query": [(prompt.index("Write"), start)],
            "answer": [(len(prompt), len(prompt) + len(before))]}
    return FailureCase(
        id=cid, benchmark="ifeval", item_id=cid, model_source=lm.source, messages=msgs, prompt=prompt,
        prompt_ids=lm.encode(prompt, add_special_tokens=False), chat=True, completion=lm.tokenizer.decode(comp),
        completion_ids=comp, status="localised", failure_index=fi, target_id=comp[fi],
        contrast_id=lm.encode(" and", add_special_tokens=False)[0], delta_logit=0.5, clean=False, method="manual",
        completion_before_err=before, segments=segs, provenance=lm.provenance().to_dict(),
    )


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("explorer")
    cases, models, outside = root / "cases", root / "models", root / "outside"
    (cases / "sub").mkdir(parents=True)
    models.mkdir()
    outside.mkdir()
    lm = _lm()
    case = make_case(lm)
    (cases / "sub" / "cases.jsonl").write_text(case.model_dump_json() + "\n", encoding="utf-8")
    (cases / "broken.jsonl").write_text('{"schema_version": 2, "id": "x"}\n', encoding="utf-8")
    (outside / "secret.jsonl").write_text(case.model_dump_json() + "\n", encoding="utf-8")
    os.symlink(outside / "secret.jsonl", cases / "evil.jsonl")
    lm.model.save_pretrained(models / "tiny")
    lm.tokenizer.save_pretrained(models / "tiny")
    (models / "broken").mkdir()
    (models / "broken" / "config.json").write_text("{not a config", encoding="utf-8")
    (outside / "model").mkdir()
    (outside / "model" / "config.json").write_text("{}", encoding="utf-8")
    os.symlink(outside / "model", models / "escape")
    return {"root": root, "cases": cases, "models": models, "outside": outside, "case": case}


@pytest.fixture(scope="module")
def settings(folders):
    return ServerSettings(cases_dir=str(folders["cases"]), models_dir=str(folders["models"]),
                          max_prompt_tokens=MAX_TOKENS, max_body_bytes=20_000, max_top_k=50, max_new_tokens=16)


@pytest.fixture(scope="module")
def client(settings):
    with TestClient(create_app(settings), base_url=LOCAL) as c:
        yield c


def run_job(c: TestClient, path: str, body: dict) -> tuple[dict, object]:
    r = c.post(path, json=body)
    assert r.status_code == 202, r.text
    j = wait_job(c, r.json()["job"])
    assert j["status"] == "done", j
    res = c.get(f"/api/jobs/{j['job']}/result")
    assert res.status_code == 200
    return j, (res.content if res.headers["content-type"] == "application/octet-stream" else res.json())


def err(r, status: int, code: str, contains: str | None = None) -> dict:
    assert r.status_code == status, (r.status_code, r.text)
    e = r.json()["error"]
    assert e["status"] == status and e["code"] == code, e
    assert "Traceback" not in e["message"] and "\n" not in e["message"]
    if contains is not None:
        assert contains in e["message"], e["message"]
    return e


# ----------------------------------------------------------------------------------------- settings
def test_settings_are_plain_and_checked(folders):
    s = ServerSettings()
    d = dataclasses.asdict(s)
    assert d["host"] == "127.0.0.1" and d["port"] == 8000 and d["devices"] == ("cpu",)
    json.dumps(d)
    with pytest.raises(InputError, match="token"):
        ServerSettings(host="0.0.0.0").check()
    assert ServerSettings(host="0.0.0.0", token="t").check().token == "t"
    for host in ("127.0.0.1", "::1", "localhost"):
        ServerSettings(host=host).check()
    with pytest.raises(InputError, match="does not exist"):
        ServerSettings(cases_dir=str(folders["root"] / "nope")).check()
    with pytest.raises(InputError, match="does not exist"):
        ServerSettings(models_dir=str(folders["root"] / "nope")).check()
    with pytest.raises(InputError, match="max_edges"):
        ServerSettings(max_edges=0).check()
    with pytest.raises(InputError, match="send_p"):
        ServerSettings(send_p=1.5).check()
    with pytest.raises(InputError, match="dtype"):
        ServerSettings(dtype="int8").check()


def test_cli_serve_refuses_a_public_host_without_token(capsys):
    from contrastlens.cli.main import main

    assert main(["serve", "--host", "0.0.0.0"]) == 2
    lines = [x for x in capsys.readouterr().err.splitlines() if x.strip()]
    assert len(lines) == 1 and "token" in lines[0] and lines[0].startswith("contrastlens serve: error:")


# --------------------------------------------------------------------------------------- catalogue
def test_health_and_models(client):
    h = client.get("/api/health").json()
    assert h == {"ok": True, "version": cl.__version__, "wire_version": 1, "auth": False}
    models = {m["id"]: m for m in client.get("/api/models").json()["models"]}
    assert models["smollm2-135m-instruct"]["kind"] == "catalog"
    assert models[LLAMA] == {"id": LLAMA, "kind": "random", "label": models[LLAMA]["label"], "available": True}
    assert models["folder:tiny"]["kind"] == "folder" and models["folder:tiny"]["available"]
    assert "folder:escape" not in models  # a symlink out of --models is not served
    assert all(set(m) == {"id", "kind", "label", "available"} for m in models.values())


def test_no_random_hides_random_models(settings):
    with TestClient(create_app(dataclasses.replace(settings, allow_random=False)), base_url=LOCAL) as c:
        assert not [m for m in c.get("/api/models").json()["models"] if m["kind"] == "random"]
        err(c.post("/api/logits", json={"model": LLAMA, "input": {"prompt": PROMPT}}), 404, "not_found")


def test_cases_listing_and_case(client, folders):
    listing = client.get("/api/cases").json()
    files = {f["file"]: f for f in listing["files"]}
    assert set(files) == {"sub/cases.jsonl"}
    (summary,) = files["sub/cases.jsonl"]["cases"]
    case = folders["case"]
    assert summary["id"] == case.id and summary["status"] == "localised" and summary["delta_logit"] == 0.5
    errors = {e["file"]: e["message"] for e in listing["errors"]}
    assert "broken.jsonl" in errors and "evil.jsonl" in errors and "outside" in errors["evil.jsonl"]
    d = client.get("/api/case", params={"file": "sub/cases.jsonl", "id": case.id}).json()
    assert d["model_id"] == LLAMA and d["target_id"] == case.target_id and d["contrast_id"] == case.contrast_id
    assert d["prompt"] == case.prompt and d["completion_before_err"] == case.completion_before_err
    assert d["segments"] == {k: [list(s) for s in v] for k, v in case.segments.items()}
    assert set(d) >= {"messages", "completion", "passed", "details", "failure_index", "rollouts", "method", "clean"}


@pytest.mark.parametrize(("file", "status", "code"), [
    ("../outside/secret.jsonl", 403, "forbidden_path"),
    ("/etc/passwd", 403, "forbidden_path"),
    ("sub/../../outside/secret.jsonl", 403, "forbidden_path"),
    ("evil.jsonl", 403, "forbidden_path"),
    ("missing.jsonl", 404, "not_found"),
    ("broken.jsonl", 400, "bad_request"),
])
def test_case_paths_stay_inside_the_cases_folder(client, file, status, code):
    err(client.get("/api/case", params={"file": file, "id": "ifeval-t1"}), status, code)


def test_unknown_case_id(client):
    err(client.get("/api/case", params={"file": "sub/cases.jsonl", "id": "nope"}), 404, "not_found")
    err(client.get("/api/case", params={"file": "sub/cases.jsonl"}), 422, "invalid", "id")


# ------------------------------------------------------------------------------------- quick calls
def test_tokenize(client):
    lm = _lm()
    r = client.post("/api/tokenize", json={"model": LLAMA, "text": " Paris"}).json()
    ids = lm.tokenizer(" Paris", add_special_tokens=False)["input_ids"]
    assert r == {"ids": ids, "pieces": lm.decode_tokens(ids), "single": len(ids) == 1}
    r = client.post("/api/tokenize", json={"model": LLAMA, "text": " is", "input": {"prompt": PROMPT}}).json()
    assert r["single"] and r["ids"] == [lm.token_id(" is", lm.encode(PROMPT))]


def test_logits_equal_a_direct_computation(client):
    from contrastlens.attribution.logits import top_logits

    lm = _lm()
    r = client.post("/api/logits", json={"model": LLAMA, "input": {"prompt": PROMPT}, "k": 5}).json()
    direct = top_logits(lm, PROMPT, k=5)
    assert [t["id"] for t in r["top"]] == [t["id"] for t in direct]
    np.testing.assert_allclose([t["logit"] for t in r["top"]], [t["logit"] for t in direct], rtol=1e-5)
    assert r["ids"] == lm.encode(PROMPT) and r["n_tokens"] == len(r["ids"]) and r["tokens"] == lm.decode_tokens(r["ids"])
    chat = client.post("/api/logits", json={"model": LLAMA, "input": {"prompt": PROMPT, "chat": True}, "k": 1}).json()
    assert chat["ids"] == lm.encode(PROMPT, chat=True)
    app = client.post("/api/logits", json={"model": LLAMA, "input": {"prompt": PROMPT, "append": [5, 6]}}).json()
    assert app["ids"] == lm.encode(PROMPT) + [5, 6] and len(app["top"]) == 10


def test_continue_is_greedy(client):
    from contrastlens.collect.generate import generate_greedy

    lm = _lm()
    r = client.post("/api/continue", json={"model": LLAMA, "input": {"ids": lm.encode(PROMPT)},
                                           "max_new_tokens": 8}).json()
    comp = generate_greedy(lm, [lm.encode(PROMPT)], max_new_tokens=8, batch_size=1)[0]
    assert r["ids"] == comp.ids and r["stopped"] == comp.stopped and r["text"] == lm.tokenizer.decode(comp.ids)


# ----------------------------------------------------------------------------------------- explain
def test_explain_equals_a_direct_explanation(client):
    lm = _lm()
    j, d = run_job(client, "/api/explain", {"model": LLAMA, "input": {"prompt": PROMPT}})
    top = cl.explain(lm, PROMPT, 0, 1).top_logits  # the defaults: top-1 vs top-2
    ex = cl.explain(lm, PROMPT, top[0][0], top[1][0])
    assert d["target"]["id"] == top[0][0] and d["contrast"]["id"] == top[1][0]
    np.testing.assert_allclose(d["input_relevance"], ex.input_relevance, rtol=1e-4, atol=1e-7)
    assert d["logit_diff"] == pytest.approx(ex.logit_diff, rel=1e-5)
    assert d["spec"] == ex.spec.to_dict() and d["key"] == j["key"] and d["method"] == "attnlrp"
    from contrastlens.server.wire import cache_key

    assert j["key"] == cache_key("explain", model=LLAMA, fingerprint=lm.fingerprint, spec=ex.spec,
                                 ids=ex.input_ids, options={"segments": {}})
    again = client.post("/api/explain", json={"model": LLAMA, "input": {"prompt": PROMPT}}).json()
    assert again["cached"] and again["status"] == "done" and again["job"] != j["job"]
    assert client.get(f"/api/jobs/{again['job']}").json()["key"] == j["key"]


def test_explain_a_case_and_override_its_contrast(client, folders):
    lm = _lm()
    case = folders["case"]
    ref = {"case": {"file": "sub/cases.jsonl", "id": case.id}}
    _, d = run_job(client, "/api/explain", {"model": LLAMA, "input": ref})
    ex = cl.explain(lm, case)
    assert d["ids"] == case.ids_before_err and d["target"]["id"] == case.target_id
    assert d["contrast"]["id"] == case.contrast_id
    np.testing.assert_allclose(d["input_relevance"], ex.input_relevance, rtol=1e-4, atol=1e-7)
    assert d["segments"] == {k: [list(s) for s in v] for k, v in ex.segments.items()} and d["segments"]
    assert d["segment_sums"] == pytest.approx(ex.segment_sums("max_abs"), abs=1e-5)
    _, d2 = run_job(client, "/api/explain", {"model": LLAMA, "input": ref, "contrast": {"id": 7}})
    ex2 = cl.explain(lm, case.ids_before_err, case.target_id, 7)
    assert d2["contrast"]["id"] == 7 and d2["key"] != d["key"]
    assert d2["logit_diff"] == pytest.approx(ex2.logit_diff, rel=1e-5)


def test_stale_results_never_come_back(client):
    """Changing the prompt, target, contrast, method or model gives another key and the right values."""
    base = {"model": LLAMA, "input": {"prompt": PROMPT}, "target": {"id": 11}, "contrast": {"id": 17}}
    variants = {
        "base": (base, (_lm(), PROMPT, 11, 17, "attnlrp")),
        "prompt": ({**base, "input": {"prompt": PROMPT + " Rome"}}, (_lm(), PROMPT + " Rome", 11, 17, "attnlrp")),
        "target": ({**base, "target": {"id": 12}}, (_lm(), PROMPT, 12, 17, "attnlrp")),
        "contrast": ({**base, "contrast": {"id": 18}}, (_lm(), PROMPT, 11, 18, "attnlrp")),
        "method": ({**base, "method": "cp-lrp"}, (_lm(), PROMPT, 11, 17, "cp-lrp")),
        "ixg": ({**base, "method": "ixg"}, (_lm(), PROMPT, 11, 17, "ixg")),
        "model": ({**base, "model": "random:qwen2"}, (_lm("qwen2"), PROMPT, 11, 17, "attnlrp")),
    }
    keys = {}
    for name, (body, (lm, prompt, t, c, method)) in variants.items():
        j, d = run_job(client, "/api/explain", body)
        ex = cl.explain(lm, prompt, t, c, method=method)
        keys[name] = j["key"]
        assert d["logit_diff"] == pytest.approx(ex.logit_diff, rel=1e-5, abs=1e-6), name
        np.testing.assert_allclose(d["input_relevance"], ex.input_relevance, rtol=1e-4, atol=1e-6, err_msg=name)
        assert d["spec"] == ex.spec.to_dict(), name
    assert len(set(keys.values())) == len(keys)


def test_a_folder_model_is_fingerprinted_from_its_files(client, folders):
    j, d = run_job(client, "/api/explain", {"model": "folder:tiny", "input": {"prompt": PROMPT},
                                            "target": {"id": 11}, "contrast": {"id": 17}})
    lm = cl.load_model(str(folders["models"] / "tiny"))
    ex = cl.explain(lm, PROMPT, 11, 17)
    assert d["fingerprint"] == lm.fingerprint and d["fingerprint"].startswith("files:")
    assert d["logit_diff"] == pytest.approx(ex.logit_diff, rel=1e-5)
    _, same_weights = run_job(client, "/api/explain", {"model": LLAMA, "input": {"prompt": PROMPT},
                                                       "target": {"id": 11}, "contrast": {"id": 17}})
    assert same_weights["key"] != d["key"] and same_weights["logit_diff"] == pytest.approx(d["logit_diff"], rel=1e-5)


def test_replaced_folder_weights_are_loaded_again(client, folders):
    """The same request after a model folder's files were replaced: another key, the new weights' values."""
    from contrastlens.models.loading import load_model

    folder = folders["models"] / "swap"
    body = {"model": "folder:swap", "input": {"prompt": PROMPT}, "target": {"id": 11}, "contrast": {"id": 17}}
    results = []
    for seed in (0, 1):
        lm = load_model("random:llama", seed=seed)
        lm.model.save_pretrained(folder)
        lm.tokenizer.save_pretrained(folder)
        j, d = run_job(client, "/api/explain", body)
        assert not j["cached"]
        direct = cl.explain(load_model(str(folder)), PROMPT, 11, 17)
        assert d["logit_diff"] == pytest.approx(direct.logit_diff, rel=1e-5)
        np.testing.assert_allclose(d["input_relevance"], direct.input_relevance, rtol=1e-4, atol=1e-7)
        results.append(d)
    assert results[0]["fingerprint"] != results[1]["fingerprint"] and results[0]["key"] != results[1]["key"]
    assert results[0]["logit_diff"] != pytest.approx(results[1]["logit_diff"])


# ------------------------------------------------------------------------------------------- graph
def test_graph_equals_attribution_graph_and_exports(client):
    lm = _lm()
    body = {"model": LLAMA, "input": {"prompt": PROMPT}, "target": {"id": 11}, "contrast": {"id": 17}}
    j, payload = run_job(client, "/api/graph", body)
    d = decode_graph(payload)
    g = cl.attribution_graph(lm, PROMPT, 11, 17, prune="cum_mass:0.98")
    assert d.header["key"] == j["key"] and d.layers == g.layers and d.header["model"] == LLAMA
    assert d.header["target"]["id"] == 11 and d.header["ids"] == lm.encode(PROMPT)
    assert d.logit_diff == pytest.approx(g.logit_diff, rel=1e-5)
    for layer in g.layers:
        np.testing.assert_allclose(d.relevance[layer], g.relevance[layer], rtol=1e-4, atol=1e-6)
    for t in d.transitions:
        e = g.edges[(t.src, t.tgt)]
        assert set(zip(t.rows.tolist(), t.cols.tolist(), strict=True)) == set(
            zip(e.rows.tolist(), e.cols.tolist(), strict=True))
    for fmt, kind in (("json", "application/json"), ("neuronpedia", "application/json"),
                      ("nodes.csv", "text/csv"), ("edges.csv", "text/csv")):
        r = client.get(f"/api/jobs/{j['job']}/export", params={"format": fmt, "p": 0.5, "tau": 0.1, "subgraph": 1})
        assert r.status_code == 200 and r.headers["content-type"].startswith(kind)
        assert "attachment" in r.headers["content-disposition"]
    nl = client.get(f"/api/jobs/{j['job']}/export", params={"format": "json", "p": 0.5}).json()
    ref = g.prune(p=0.5)
    assert len(nl["links"]) == ref.num_edges()
    # a graph option changes the key; a smaller layer set gives those layers
    j2, p2 = run_job(client, "/api/graph", {**body, "mid": False, "layers": ["emb", 1, 2]})
    assert j2["key"] != j["key"] and decode_graph(p2).layers == ["emb", "1", "2"]


def test_neurons_drill_down(client):
    from contrastlens.graph import neurons

    lm = _lm()
    body = {"model": LLAMA, "input": {"prompt": PROMPT}, "target": {"id": 11}, "contrast": {"id": 17}}
    g, _ = run_job(client, "/api/graph", body)
    ex = cl.explain(lm, PROMPT, 11, 17, keep_states=True)
    _, dims = run_job(client, "/api/neurons", {"graph": g["job"], "layer": "1", "pos": 5, "top_k": 4})
    ref = neurons.state_dimensions(ex, "1", 5, 4)
    assert dims["kind"] == "dimensions" and [r["index"] for r in dims["rows"]] == ref["index"].tolist()
    np.testing.assert_allclose([r["relevance"] for r in dims["rows"]], ref["relevance"], rtol=1e-4, atol=1e-7)
    assert dims["total"] == pytest.approx(ref.attrs["total"], rel=1e-4, abs=1e-7)
    _, mlp = run_job(client, "/api/neurons", {"graph": g["job"], "layer": "l1", "pos": 5, "kind": "mlp_neurons"})
    ref = neurons.mlp_neurons(lm, ex, 1, 5, 10)
    assert mlp["kind"] == "mlp_neurons" and [r["index"] for r in mlp["rows"]] == ref["index"].tolist()
    edge = {"src": "0", "tgt": "1.mid", "j": 12, "i": 3}
    _, ed = run_job(client, "/api/neurons", {"graph": g["job"], "edge": edge, "top_k": 3})
    ref = neurons.edge_dimensions(lm, ex, "0", "1.mid", 12, 3, 3)
    assert ed["kind"] == "edge_dimensions"
    np.testing.assert_allclose([r["relevance"] for r in ed["rows"]], ref["relevance"], rtol=1e-3, atol=1e-6)
    # bad drill-downs
    err(client.post("/api/neurons", json={"graph": g["job"], "layer": "9", "pos": 1}), 400, "bad_request")
    err(client.post("/api/neurons", json={"graph": g["job"], "layer": "1", "pos": 99}), 400, "bad_request")
    err(client.post("/api/neurons", json={"graph": g["job"], "edge": {**edge, "tgt": "2"}}), 400, "bad_request")
    err(client.post("/api/neurons", json={"graph": g["job"]}), 400, "bad_request")
    err(client.post("/api/neurons", json={"graph": "nope", "layer": "1", "pos": 1}), 404, "not_found")
    e, _ = run_job(client, "/api/explain", body)
    err(client.post("/api/neurons", json={"graph": e["job"], "layer": "1", "pos": 1}), 400, "bad_request")
    err(client.post("/api/neurons", json={"graph": g["job"], "layer": "1", "pos": 1, "top_k": 51}), 422, "invalid")


# ------------------------------------------------------------------------------------ bad requests
EXPLAIN = {"model": LLAMA, "input": {"prompt": PROMPT}}


@pytest.mark.parametrize(("model", "status", "code"), [
    ("random:nope", 404, "not_found"),
    ("no-such-model", 404, "not_found"),
    ("folder:nope", 404, "not_found"),
    ("/etc/passwd", 403, "forbidden_path"),
    ("../models/tiny", 403, "forbidden_path"),
    ("HuggingFaceTB/SmolLM2-135M", 403, "forbidden_path"),
    ("folder:../tiny", 403, "forbidden_path"),
    ("folder:/tmp", 403, "forbidden_path"),
    ("folder:escape", 403, "forbidden_path"),
    ("~/model", 403, "forbidden_path"),
])
def test_models_outside_the_catalog_and_folders_are_refused(client, model, status, code):
    for path, body in (("/api/logits", {"model": model, "input": {"prompt": PROMPT}}),
                       ("/api/explain", {**EXPLAIN, "model": model}), ("/api/graph", {**EXPLAIN, "model": model}),
                       ("/api/tokenize", {"model": model, "text": "x"}),
                       ("/api/continue", {"model": model, "input": {"prompt": PROMPT}})):
        err(client.post(path, json=body), status, code)


def test_a_model_that_cannot_load_is_a_model_error(client):
    err(client.post("/api/logits", json={"model": "folder:broken", "input": {"prompt": PROMPT}}), 400, "model_error")


@pytest.mark.parametrize(("body", "status", "code", "contains"), [
    ({**EXPLAIN, "input": {"case": {"file": "../outside/secret.jsonl", "id": "ifeval-t1"}}}, 403, "forbidden_path",
     None),
    ({**EXPLAIN, "input": {"case": {"file": "sub/cases.jsonl", "id": "nope"}}}, 404, "not_found", None),
    ({**EXPLAIN, "target": {"text": "capital of France"}}, 400, "bad_request", "not one token"),
    ({**EXPLAIN, "target": {"id": 5}, "contrast": {"id": 5}}, 400, "bad_request", "same token"),
    ({**EXPLAIN, "target": {"id": 10**6}}, 400, "bad_request", "vocabulary"),
    ({**EXPLAIN, "input": {"prompt": "   "}}, 400, "bad_request", "empty"),
    ({**EXPLAIN, "input": {"ids": [1] * (MAX_TOKENS + 1)}}, 413, "too_large", "tokens"),
    ({**EXPLAIN, "input": {"prompt": "word " * 200}}, 413, "too_large", None),
    ({**EXPLAIN, "input": {"ids": [1, 2], "append": [3] * MAX_TOKENS}}, 413, "too_large", None),
    ({**EXPLAIN, "method": "nope"}, 400, "bad_request", "method"),
    ({**EXPLAIN, "input": {}}, 422, "invalid", "exactly one"),
    ({**EXPLAIN, "input": {"prompt": PROMPT, "ids": [1, 2]}}, 422, "invalid", "exactly one"),
    ({**EXPLAIN, "input": {"ids": ["a"]}}, 422, "invalid", "input.ids.0"),
    ({**EXPLAIN, "input": {"ids": [-1]}}, 422, "invalid", "input.ids.0"),
    ({**EXPLAIN, "input": {"prompt": PROMPT, "chat": "yes"}}, 422, "invalid", "input.chat"),
    ({**EXPLAIN, "target": {"id": 1, "text": "x"}}, 422, "invalid", "target"),
    ({**EXPLAIN, "target": 5}, 422, "invalid", "target"),
    ({**EXPLAIN, "bogus": 1}, 422, "invalid", "bogus"),
    ({**EXPLAIN, "input": {"prompt": PROMPT, "bogus": 1}}, 422, "invalid", "input.bogus"),
    ({"input": {"prompt": PROMPT}}, 422, "invalid", "model"),
    ({**EXPLAIN, "model": 5}, 422, "invalid", "model"),
])
def test_bad_explain_requests(client, body, status, code, contains):
    err(client.post("/api/explain", json=body), status, code, contains)


@pytest.mark.parametrize(("body", "status", "code", "contains"), [
    ({**EXPLAIN, "method": "ixg"}, 400, "bad_request", "hidden-state"),
    ({**EXPLAIN, "layers": ["emb", "99"]}, 400, "bad_request", "layer"),
    ({**EXPLAIN, "layers": ["emb"]}, 400, "bad_request", "two layers"),
    ({**EXPLAIN, "send_p": 0}, 422, "invalid", "send_p"),
    ({**EXPLAIN, "send_p": 1.5}, 422, "invalid", "send_p"),
    ({**EXPLAIN, "node_threshold": -1}, 422, "invalid", "node_threshold"),
    ({**EXPLAIN, "max_edges": 10**9}, 422, "invalid", "max_edges"),
    ({**EXPLAIN, "mid": "no"}, 422, "invalid", "mid"),
])
def test_bad_graph_requests(client, body, status, code, contains):
    err(client.post("/api/graph", json=body), status, code, contains)


def test_bad_quick_requests(client):
    lg = {"model": LLAMA, "input": {"prompt": PROMPT}}
    err(client.post("/api/logits", json={**lg, "k": "ten"}), 422, "invalid", "k")
    err(client.post("/api/logits", json={**lg, "k": 0}), 422, "invalid", "k")
    err(client.post("/api/logits", json={**lg, "k": 51}), 422, "invalid", "k: at most 50")
    err(client.post("/api/logits", json={**lg, "input": {"ids": list(range(MAX_TOKENS + 1))}}), 413, "too_large")
    err(client.post("/api/logits", json={**lg, "input": {"ids": [10**6]}}), 400, "bad_request", "vocabulary")
    err(client.post("/api/continue", json={**lg, "max_new_tokens": 17}), 422, "invalid", "max_new_tokens")
    err(client.post("/api/tokenize", json={"model": LLAMA}), 422, "invalid", "text")
    err(client.post("/api/logits", content=b"{not json", headers={"content-type": "application/json"}),
        422, "invalid", "JSON")
    err(client.post("/api/logits", content=b"[1, 2]", headers={"content-type": "application/json"}), 422, "invalid")


def test_body_too_large(client):
    big = {"model": LLAMA, "input": {"prompt": "x" * 30_000}}
    err(client.post("/api/logits", json=big), 413, "too_large", "20000 bytes")

    def chunks():  # a streamed body without Content-Length
        for _ in range(30):
            yield b"x" * 1000

    err(client.post("/api/logits", content=chunks(), headers={"content-type": "application/json"}),
        413, "too_large")


def test_unknown_jobs_and_routes(client):
    for method, path in (("GET", "/api/jobs/nope"), ("DELETE", "/api/jobs/nope"), ("GET", "/api/jobs/nope/result"),
                         ("GET", "/api/jobs/nope/events"), ("GET", "/api/jobs/nope/export"),
                         ("GET", "/api/no-such-route")):
        err(client.request(method, path), 404, "not_found")
    assert client.put("/api/health").status_code == 405


def test_export_rejects_bad_parameters(client):
    body = {"model": LLAMA, "input": {"prompt": PROMPT}, "target": {"id": 11}, "contrast": {"id": 17}}
    g, _ = run_job(client, "/api/graph", body)
    err(client.get(f"/api/jobs/{g['job']}/export", params={"format": "xml"}), 422, "invalid", "format")
    err(client.get(f"/api/jobs/{g['job']}/export", params={"p": 2}), 422, "invalid", "p")
    err(client.get(f"/api/jobs/{g['job']}/export", params={"tau": -1}), 422, "invalid", "tau")
    err(client.get(f"/api/jobs/{g['job']}/export", params={"subgraph": 3}), 422, "invalid", "subgraph")
    e, _ = run_job(client, "/api/explain", body)
    err(client.get(f"/api/jobs/{e['job']}/export"), 400, "bad_request", "graph")


def test_result_before_done_is_409(client, monkeypatch):
    from contrastlens.graph import build

    real = build.attribution_graph
    started, go = threading.Event(), threading.Event()

    def slow(*a, progress=None, **kw):
        started.set()
        go.wait(30)
        return real(*a, progress=progress, **kw)

    monkeypatch.setattr(build, "attribution_graph", slow)
    body = {"model": LLAMA, "input": {"prompt": PROMPT}, "target": {"id": 13}, "contrast": {"id": 17}}
    job = client.post("/api/graph", json=body).json()["job"]
    try:
        assert started.wait(30)
        assert client.get(f"/api/jobs/{job}").json()["status"] == "running"
        err(client.get(f"/api/jobs/{job}/result"), 409, "not_done")
        err(client.get(f"/api/jobs/{job}/export"), 409, "not_done")
        err(client.post("/api/neurons", json={"graph": job, "layer": "1", "pos": 1}), 409, "not_done")
    finally:
        go.set()
    assert wait_job(client, job)["status"] == "done"


def test_internal_errors_are_one_line_500s(settings, monkeypatch):
    app = create_app(settings)

    def boom():
        raise RuntimeError("secret detail\nTraceback (most recent call last): ...")

    monkeypatch.setattr(app.state.explorer.models, "models", boom)
    with TestClient(app, raise_server_exceptions=False, base_url=LOCAL) as c:
        e = err(c.get("/api/models"), 500, "internal")
        assert "secret" not in e["message"]


# -------------------------------------------------------------------------------------------- auth
def test_token_is_required_when_set(settings):
    with TestClient(create_app(dataclasses.replace(settings, token="s3cret"))) as c:
        err(c.get("/api/health"), 401, "unauthorized", "no token")
        err(c.get("/api/health", headers={"Authorization": "Bearer wrong"}), 401, "unauthorized", "wrong")
        err(c.get("/api/health", params={"token": "s3cre"}), 401, "unauthorized")
        err(c.post("/api/logits", json={"model": LLAMA, "input": {"prompt": PROMPT}}), 401, "unauthorized")
        ok = c.get("/api/health", headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200 and ok.json()["auth"] is True
        assert c.get("/api/models", params={"token": "s3cret"}).status_code == 200
        assert c.get("/").status_code == 200  # the page itself holds no data


def test_without_token_only_loopback_hosts_are_served(settings):
    """DNS rebinding: a page at evil.example rebound to 127.0.0.1 sends Host: evil.example."""
    app = create_app(settings)
    for base, ok in (("http://127.0.0.1:8000", True), ("http://localhost:8000", True), ("http://[::1]:8000", True),
                     ("http://evil.example:8000", False), ("http://testserver", False)):
        with TestClient(app, base_url=base) as c:
            for path in ("/api/health", "/"):
                r = c.get(path)
                if ok:
                    assert r.status_code == 200, (base, path)
                else:
                    err(r, 400, "bad_request", "loopback")
    with TestClient(create_app(dataclasses.replace(settings, token="t")), base_url="http://evil.example") as c:
        assert c.get("/api/health", params={"token": "t"}).status_code == 200  # the token guards instead


# -------------------------------------------------------------------------------------------- page
def test_page_headers_and_static_files(client, monkeypatch, tmp_path):
    from contrastlens.server import app as app_module

    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-security-policy"] == app_module.CSP
    assert "text/html" in r.headers["content-type"]
    err(client.get("/static/../app.py"), 404, "not_found")
    err(client.get("/static/%2e%2e/app.py"), 404, "not_found")
    err(client.get("/static/nope.js"), 404, "not_found")
    monkeypatch.setattr(app_module, "static_dir", lambda: tmp_path)
    r = client.get("/")
    assert r.status_code == 200 and "scripts/build_frontend.sh" in r.text
    (tmp_path / "index.html").write_text("<html>built</html>")
    (tmp_path / "app.js").write_text("console.log(1)")
    assert client.get("/").text == "<html>built</html>"
    r = client.get("/static/app.js")
    assert r.status_code == 200 and r.text == "console.log(1)" and "javascript" in r.headers["content-type"]


def test_a_case_whose_ids_do_not_map_to_the_model_is_refused(tmp_path):
    """A case explained under a model whose tokenizer gives its ids other strings (a compared model of
    another family): a 400 naming the mismatch, never an explanation of the wrong tokens."""
    lm = _lm()
    case = make_case(lm, "ifeval-other").model_copy(update={"target_str": "something else"})
    (tmp_path / "c.jsonl").write_text(case.model_dump_json() + "\n", encoding="utf-8")
    with TestClient(create_app(ServerSettings(cases_dir=str(tmp_path))), base_url=LOCAL) as c:
        body = {"model": "random:llama", "input": {"case": {"file": "c.jsonl", "id": case.id}}}
        r = c.post("/api/explain", json=body)
        assert r.status_code == 400 and r.json()["error"]["code"] == "bad_request"
        assert "different tokenizer" in r.json()["error"]["message"]
        r = c.post("/api/logits", json={"model": "random:llama", "input": body["input"], "k": 3})
        assert r.status_code == 400
