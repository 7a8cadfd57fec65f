"""The explorer's job queue: FIFO workers, the result cache, sharing, cancellation, progress over SSE,
model LRU, and several clients at once on one worker without cross-talk."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient

import contrastlens as cl
from contrastlens.errors import InputError
from contrastlens.server import ServerSettings, create_app
from contrastlens.server.jobs import JobQueue
from contrastlens.server.resources import ApiError
from tests.server_helpers import wait_job

PROMPT = "The capital of France is Paris, and the capital of Italy is"
LLAMA = "random:llama"


class FakeModel:
    def __init__(self, name: str) -> None:
        self.name = name


@pytest.fixture
def loads():
    return []


@pytest.fixture
def q(loads):
    def loader(model_id, device):
        loads.append((model_id, device))
        return FakeModel(model_id)

    queue = JobQueue(loader, cache_entries=3, max_jobs=8, loaded_models=1)
    yield queue
    queue.close()


def blocker():
    """A job function that waits for ``release`` (and says when it started)."""
    started, release = threading.Event(), threading.Event()

    def compute(lm, ctx):
        started.set()
        assert release.wait(10)
        return "blocked"

    return compute, started, release


def test_fifo_order_cache_and_sharing(q):
    order = []
    compute, started, release = blocker()
    first = q.submit("explain", "m", "k0", compute)
    assert started.wait(5)
    jobs = [q.submit("explain", "m", f"k{i}", lambda lm, ctx, i=i: order.append(i) or f"r{i}") for i in (1, 2, 3)]
    shared = q.submit("explain", "m", "k2", lambda lm, ctx: pytest.fail("a shared key must not run twice"))
    assert shared is jobs[1] and shared.status == "queued"
    release.set()
    for j in [first, *jobs]:
        assert j.wait(10) and j.status == "done"
    assert order == [1, 2, 3]
    again = q.submit("explain", "m", "k3", lambda lm, ctx: pytest.fail("a cached key must not run"))
    assert again.status == "done" and again.cached and again.id != jobs[2].id
    assert q.result(again.id)[1] == "r3"


def test_results_are_evicted_beyond_cache_entries(q):
    jobs = [q.submit("explain", "m", f"k{i}", lambda lm, ctx, i=i: i) for i in range(4)]
    for j in jobs:
        j.wait(10)
    with pytest.raises(ApiError) as e:
        q.result(jobs[0].id)
    assert e.value.status == 404 and "evicted" in e.value.message
    assert q.result(jobs[3].id)[1] == 3
    for i in range(10):  # old finished jobs are forgotten beyond max_jobs
        q.submit("explain", "m", f"x{i}", lambda lm, ctx: 0).wait(10)
    assert len(q.jobs) <= 8
    with pytest.raises(ApiError) as e:
        q.get(jobs[0].id)
    assert e.value.status == 404


def test_a_cancelled_queued_job_never_runs(q):
    ran = []
    compute, started, release = blocker()
    q.submit("graph", "m", "k0", compute)
    assert started.wait(5)
    queued = q.submit("graph", "m", "k1", lambda lm, ctx: ran.append(1))
    assert q.cancel(queued.id).status == "cancelled"
    release.set()
    after = q.submit("graph", "m", "k2", lambda lm, ctx: "ok")
    assert after.wait(10) and after.status == "done"
    assert ran == [] and queued.status == "cancelled"
    with pytest.raises(ApiError) as e:
        q.result(queued.id)
    assert e.value.status == 409
    # a new submission of the cancelled key runs afresh
    fresh = q.submit("graph", "m", "k1", lambda lm, ctx: "again")
    assert fresh.wait(10) and fresh.status == "done" and q.result(fresh.id)[1] == "again"


def test_a_running_job_stops_at_its_next_progress_call(q):
    calls = []
    at_step = threading.Event()
    go = threading.Event()

    def compute(lm, ctx):
        for i in range(100):
            ctx.progress("step", i, 100)
            calls.append(i)
            if i == 2:
                at_step.set()
                go.wait(10)
        return "finished"

    job = q.submit("graph", "m", "k", compute)
    assert at_step.wait(10)
    assert job.status == "running" and job.progress == {"stage": "step", "done": 2, "total": 100}
    q.cancel(job.id)
    go.set()
    assert job.wait(10) and job.status == "cancelled"
    assert calls == [0, 1, 2]  # the progress call after the cancellation raised
    assert q.cached("k") is None
    assert q.cancel(job.id).status == "cancelled"  # a finished job stays as it is


def test_failures_carry_a_one_line_error(q):
    def bad_input(lm, ctx):
        raise InputError("the target is not one token; pick another")

    def bug(lm, ctx):
        raise ZeroDivisionError("secret\ninternal detail")

    a, b = q.submit("explain", "m", "a", bad_input), q.submit("explain", "m", "b", bug)
    a.wait(10)
    b.wait(10)
    assert a.status == "failed" and a.error == {"status": 400, "code": "bad_request",
                                                "message": "the target is not one token; pick another"}
    assert b.status == "failed" and b.error["status"] == 500 and b.error["code"] == "internal"
    assert "secret" not in b.error["message"] and "\n" not in b.error["message"]


def test_models_are_loaded_on_the_worker_and_kept_in_an_lru(q, loads):
    threads = []
    for m in ("a", "a", "b", "a"):
        j = q.submit("explain", m, f"key-{m}-{len(threads)}",
                     lambda lm, ctx: threads.append((lm.name, threading.current_thread().name)))
        j.wait(10)
    assert loads == [("a", "cpu"), ("b", "cpu"), ("a", "cpu")]  # loaded_models=1: b evicted a
    assert {t for _, t in threads} == {"contrastlens-worker-cpu"}
    assert [n for n, _ in threads] == ["a", "a", "b", "a"]


def test_quick_calls_go_before_queued_jobs(q):
    order = []
    compute, started, release = blocker()
    q.submit("graph", "m", "k0", compute)
    assert started.wait(5)
    job = q.submit("graph", "m", "k1", lambda lm, ctx: order.append("job"))
    fut = q.call("m", lambda lm: order.append("call") or lm.name)
    release.set()
    assert fut.result(10) == "m"
    job.wait(10)
    assert order == ["call", "job"]

    async def via_loop():
        return await q.run("m", lambda lm: lm.name + "!")

    assert asyncio.run(via_loop()) == "m!"


def test_events_stream_progress_then_the_end(q):
    go = threading.Event()

    def compute(lm, ctx):
        for i in range(3):
            ctx.progress("step", i, 3)
            time.sleep(0.15)
        go.wait(10)
        return 1

    job = q.submit("graph", "m", "k", compute)

    async def collect():
        out = []
        async for name, data in q.events(job, poll=0.01):
            out.append((name, data))
            if name == "progress" and data.get("done") == 2:
                go.set()
        return out

    events = asyncio.run(collect())
    names = [n for n, _ in events]
    assert names[-1] == "done" and events[-1][1]["status"] == "done" and "progress" in names
    steps = [d["done"] for n, d in events if n == "progress" and d["stage"] == "step"]
    assert steps == sorted(steps) and 2 in steps


# ----------------------------------------------------------------------------------------- via the API
@pytest.fixture(scope="module")
def client():
    with TestClient(create_app(ServerSettings()), base_url="http://127.0.0.1") as c:
        yield c


def _sse(c, job):
    import json

    events = []
    with c.stream("GET", f"/api/jobs/{job}/events") as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        name = None
        for line in r.iter_lines():
            if line.startswith("event: "):
                name = line[len("event: "):]
            elif line.startswith("data: "):
                events.append((name, json.loads(line[len("data: "):])))
    return events


def test_sse_yields_progress_then_done(client):
    body = {"model": LLAMA, "input": {"prompt": PROMPT}, "target": {"id": 21}, "contrast": {"id": 17}}
    job = client.post("/api/graph", json=body).json()["job"]
    events = _sse(client, job)
    assert events[0][0] == "progress" and events[-1][0] == "done"
    assert events[-1][1]["job"] == job and events[-1][1]["status"] == "done"
    assert all(n == "progress" for n, _ in events[:-1]) and set(events[0][1]) == {"stage", "done", "total"}
    # a finished job: its last progress, then its end
    again = _sse(client, job)
    assert [n for n, _ in again] == ["progress", "done"] and again[1][1] == events[-1][1]


def test_cancel_a_running_graph_job_via_the_api(client, monkeypatch):
    from contrastlens.graph import build

    real = build.attribution_graph
    started, go = threading.Event(), threading.Event()
    calls = []

    def gated(*a, progress=None, **kw):
        def cb(stage, done, total):
            calls.append(stage)
            if len(calls) == 1:
                started.set()
                go.wait(30)
            progress(stage, done, total)

        return real(*a, progress=cb, **kw)

    monkeypatch.setattr(build, "attribution_graph", gated)
    body = {"model": LLAMA, "input": {"prompt": PROMPT}, "target": {"id": 31}, "contrast": {"id": 17}}
    job = client.post("/api/graph", json=body).json()["job"]
    assert started.wait(30)
    r = client.delete(f"/api/jobs/{job}")
    assert r.status_code == 200 and r.json() == {"job": job, "status": "running"}
    go.set()
    j = wait_job(client, job)
    assert j["status"] == "cancelled" and len(calls) == 1
    assert client.get(f"/api/jobs/{job}/result").status_code == 409
    # the same request again computes afresh
    monkeypatch.setattr(build, "attribution_graph", real)
    again = client.post("/api/graph", json=body).json()
    assert again["job"] != job and not again["cached"]
    assert wait_job(client, again["job"])["status"] == "done"


def test_concurrent_clients_get_their_own_results(client):
    """Six threads submit different prompts at once to the one worker: no crash, no cross-talk."""
    from tests.conftest import _random_lm

    prompts = [f"{PROMPT} {w}" for w in ("Rome", "and", "the", "Paris", "capital", "is")]
    out: dict[int, tuple[dict, dict]] = {}
    errors = []
    barrier = threading.Barrier(len(prompts))

    def client_thread(k: int) -> None:
        try:
            barrier.wait(10)
            body = {"model": LLAMA, "input": {"prompt": prompts[k]}, "target": {"id": 11 + k}, "contrast": {"id": 40}}
            r = client.post("/api/explain", json=body)
            assert r.status_code == 202, r.text
            j = wait_job(client, r.json()["job"])
            assert j["status"] == "done", j
            lg = client.post("/api/logits", json={"model": LLAMA, "input": {"prompt": prompts[k]}, "k": 3})
            out[k] = (client.get(f"/api/jobs/{j['job']}/result").json(), lg.json())
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=client_thread, args=(k,)) for k in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    lm = _random_lm("llama")
    from contrastlens.attribution.logits import top_logits

    keys = set()
    for k, (d, lg) in out.items():
        ex = cl.explain(lm, prompts[k], 11 + k, 40)
        assert d["ids"] == ex.input_ids and d["target"]["id"] == 11 + k
        assert d["logit_diff"] == pytest.approx(ex.logit_diff, rel=1e-5)
        np.testing.assert_allclose(d["input_relevance"], ex.input_relevance, rtol=1e-4, atol=1e-7)
        assert [t["id"] for t in lg["top"]] == [t["id"] for t in top_logits(lm, prompts[k], k=3)]
        keys.add(d["key"])
    assert len(keys) == len(prompts)


def test_a_request_never_waits_for_a_running_job(client, monkeypatch):
    """While a graph job holds the worker, explain requests are accepted at once (queued, prepared when they
    start): a good one then equals a direct explanation, a bad one fails with the same 4xx error object a
    free worker would have answered with."""
    from contrastlens.graph import build
    from tests.conftest import _random_lm

    real = build.attribution_graph
    started, go = threading.Event(), threading.Event()

    def gated(*a, progress=None, **kw):
        started.set()
        assert go.wait(60)
        return real(*a, progress=progress, **kw)

    monkeypatch.setattr(build, "attribution_graph", gated)
    body = {"model": LLAMA, "input": {"prompt": PROMPT}, "target": {"id": 33}, "contrast": {"id": 17}}
    graph = client.post("/api/graph", json=body).json()["job"]
    assert started.wait(30)
    try:
        t0 = time.monotonic()
        good = client.post("/api/explain", json={"model": LLAMA, "input": {"prompt": PROMPT + " Rome"},
                                                 "target": {"id": 12}, "contrast": {"id": 44}})
        bad = client.post("/api/explain", json={"model": LLAMA, "input": {"prompt": PROMPT},
                                                "target": {"text": "not one token at all"}})
        unknown = client.post("/api/explain", json={"model": "random:nope", "input": {"prompt": PROMPT}})
        assert time.monotonic() - t0 < 5
        assert good.status_code == bad.status_code == 202
        assert good.json()["status"] == "queued" and client.get(f"/api/jobs/{good.json()['job']}").json()["key"] is None
        assert unknown.status_code == 404  # an unknown model is refused at once, busy or not
    finally:
        go.set()
    assert wait_job(client, graph)["status"] == "done"
    j = wait_job(client, good.json()["job"])
    assert j["status"] == "done" and j["key"]
    res = client.get(f"/api/jobs/{j['job']}/result").json()
    ex = cl.explain(_random_lm("llama"), PROMPT + " Rome", 12, 44)
    np.testing.assert_allclose(res["input_relevance"], ex.input_relevance, rtol=1e-5, atol=1e-6)
    fb = wait_job(client, bad.json()["job"])
    assert fb["status"] == "failed" and fb["error"]["status"] == 400 and fb["error"]["code"] == "bad_request"
    assert "token" in fb["error"]["message"]
    # the same good request again, with the worker free: a cached job, done at once
    again = client.post("/api/explain", json={"model": LLAMA, "input": {"prompt": PROMPT + " Rome"},
                                              "target": {"id": 12}, "contrast": {"id": 44}}).json()
    assert again["cached"] and again["status"] == "done"
