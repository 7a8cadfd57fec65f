"""Jobs off the event loop: one worker thread per device, a result cache, progress and cancellation.

**Workers.** Each device (``ServerSettings.devices``, one ``"cpu"`` worker by default) has one worker thread
that owns its models: a model is loaded on its worker (the model id decides the worker, always the same
one) and kept in that worker's LRU of ``loaded_models`` models; with a ``stamp`` function, a model whose
stamp changed (a model folder whose files were replaced) is loaded again. A worker runs one thing at a
time, so a model is never used by two threads at once (the LRP rules patch the model while a job runs).
It takes quick calls (:meth:`JobQueue.call`: tokenising, top logits, greedy continuation, preparing a
job) before queued jobs, and jobs in FIFO order.

**Jobs.** :meth:`JobQueue.submit` takes a job kind, its model id, its result key (see
:func:`contrastlens.server.wire.cache_key`) and the function that computes the result. A key whose result
is cached gives a job that is done at once (``cached=True``); a key that a queued or running job already
computes gives that same job; otherwise a new job is queued. Results are kept in an LRU of
``cache_entries`` (a finished job whose result was evicted answers 404 and must be submitted again);
finished jobs beyond ``max_jobs`` are forgotten, oldest first.

**Progress and cancellation.** A job's function gets a :class:`JobContext`; ``ctx.progress(stage, done,
total)`` records progress (the SSE stream sends it) and is where a cancellation takes effect: a cancelled
job's next progress call (or ``ctx.check()`` between stages) raises a private exception that ends the job
as ``cancelled``. A queued job that is cancelled never runs.

**Async.** The endpoints await :meth:`JobQueue.run` (a quick call, through ``asyncio.wrap_future``) and
:meth:`JobQueue.events` (the SSE stream), so the event loop never blocks on a model.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import logging
import queue
import secrets
import threading
import time
import zlib
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from contrastlens.errors import ContrastLensError, ModelLoadError
from contrastlens.server.resources import ApiError, not_found

log = logging.getLogger("contrastlens.server.jobs")

T = TypeVar("T")
Loader = Callable[[str, str], Any]  # (model id, device) -> LoadedModel
Stamp = Callable[[str], str]  # model id -> a cheap identity of what it loads (a changed stamp: load again)
FINISHED = ("done", "failed", "cancelled")


class _JobCancelled(Exception):
    """Raised inside a job's function at its next progress call after it was cancelled."""


def error_json(e: BaseException) -> dict[str, Any]:
    """The wire error object of an exception (a bug becomes a one-line ``internal`` message)."""
    if isinstance(e, ApiError):
        return {"status": e.status, "code": e.code, "message": e.message}
    if isinstance(e, ModelLoadError):
        return {"status": 400, "code": "model_error", "message": one_line(e)}
    if isinstance(e, ContrastLensError):
        return {"status": 400, "code": "bad_request", "message": one_line(e)}
    return {"status": 500, "code": "internal", "message": f"internal error ({type(e).__name__}); see the server log"}


def one_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__


@dataclass
class Job:
    """One job: its kind, model, key, status, progress and error (the result lives in the queue's cache)."""

    id: str
    kind: str
    model: str
    key: str
    status: str = "queued"
    progress: dict[str, Any] = field(default_factory=lambda: {"stage": "queued", "done": 0, "total": 0})
    error: dict[str, Any] | None = None
    cached: bool = False
    meta: dict[str, Any] = field(default_factory=dict)
    created: float = field(default_factory=time.time)
    finished: float | None = None
    version: int = 0  # bumped on every change (the SSE stream polls it)
    _cancel: threading.Event = field(default_factory=threading.Event, repr=False)
    _done: threading.Event = field(default_factory=threading.Event, repr=False)

    def to_json(self) -> dict[str, Any]:
        return {"job": self.id, "kind": self.kind, "status": self.status, "progress": dict(self.progress),
                "error": self.error, "cached": self.cached, "key": self.key or None}

    @property
    def is_finished(self) -> bool:
        """Whether the job is done, failed or cancelled."""
        return self.status in FINISHED

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the job has finished (True) or ``timeout`` passed (False)."""
        return self._done.wait(timeout)

    def _finish(self, status: str, error: dict[str, Any] | None = None) -> None:
        self.status, self.error, self.finished = status, error, time.time()
        self.version += 1
        self._done.set()


class JobContext:
    """What a job's function gets: the job, its progress callback and the cancellation check."""

    def __init__(self, job: Job) -> None:
        self.job = job

    def check(self) -> None:
        """Raise the cancellation exception when the job was cancelled."""
        if self.job._cancel.is_set():
            raise _JobCancelled()

    def progress(self, stage: str, done: int = 0, total: int = 0) -> None:
        self.check()
        self.job.progress = {"stage": str(stage), "done": int(done), "total": int(total)}
        self.job.version += 1


@dataclass(order=True)
class _Item:
    priority: int
    seq: int
    run: Callable[[], None] = field(compare=False)


class _Worker:
    """One thread, one device, one LRU of loaded models (each with the stamp of what it was loaded from)."""

    def __init__(self, device: str, loader: Loader, loaded_models: int, stamp: Stamp | None) -> None:
        self.device, self.loader, self.capacity, self.stamp = device, loader, loaded_models, stamp
        self.models: OrderedDict[str, tuple[Any, str | None]] = OrderedDict()
        self.items: queue.PriorityQueue[_Item] = queue.PriorityQueue()
        self.thread = threading.Thread(target=self._loop, name=f"contrastlens-worker-{device}", daemon=True)
        self.thread.start()

    def model(self, model_id: str) -> Any:
        """The model (loaded on this thread on first use, kept in the LRU; loaded again when its stamp, e.g.
        a model folder's files, changed)."""
        assert threading.current_thread() is self.thread, "models are used on their worker only"
        stamp = self.stamp(model_id) if self.stamp is not None else None
        if model_id in self.models:
            lm, was = self.models[model_id]
            if was == stamp:
                self.models.move_to_end(model_id)
                return lm
            log.info("model %s changed on disk; loading it again", model_id)
            del self.models[model_id]
        while len(self.models) >= self.capacity:
            old, _ = self.models.popitem(last=False)
            log.info("unloading model %s (keeping %d loaded)", old, self.capacity)
        log.info("loading model %s on %s", model_id, self.device)
        lm = self.loader(model_id, self.device)
        self.models[model_id] = (lm, stamp)
        return lm

    def put(self, priority: int, seq: int, fn: Callable[[], None]) -> None:
        self.items.put(_Item(priority, seq, fn))

    def _loop(self) -> None:
        while True:
            item = self.items.get()
            if item.priority < 0:  # the stop signal
                return
            try:
                item.run()
            except BaseException:  # pragma: no cover - every item catches its own errors
                log.exception("a worker item failed")


class JobQueue:
    """Workers, jobs and the result cache (see the module docstring)."""

    def __init__(self, loader: Loader, *, devices: tuple[str, ...] = ("cpu",), cache_entries: int = 32,
                 max_jobs: int = 256, loaded_models: int = 2, stamp: Stamp | None = None) -> None:
        self.cache_entries, self.max_jobs = cache_entries, max_jobs
        self.workers = [_Worker(d, loader, loaded_models, stamp) for d in devices]
        self.results: OrderedDict[str, Any] = OrderedDict()
        self.jobs: OrderedDict[str, Job] = OrderedDict()
        self._active: dict[str, Job] = {}  # key -> the queued or running job computing it
        self._lock = threading.RLock()
        self._seq = itertools.count()
        self._closed = False
        self._running: dict[int, Job] = {}  # id(worker) -> the job it is running

    # ---------------------------------------------------------------------------------- workers
    def worker_of(self, model_id: str) -> _Worker:
        return self.workers[zlib.crc32(model_id.encode()) % len(self.workers)]

    def call(self, model_id: str, fn: Callable[[Any], T]) -> concurrent.futures.Future[T]:
        """Run ``fn(lm)`` on the model's worker before any queued job; a future of its result."""
        fut: concurrent.futures.Future[T] = concurrent.futures.Future()
        w = self.worker_of(model_id)

        def run() -> None:
            if not fut.set_running_or_notify_cancel():
                return
            try:
                fut.set_result(fn(w.model(model_id)))
            except BaseException as e:
                fut.set_exception(e)

        w.put(0, next(self._seq), run)
        return fut

    def busy(self, model_id: str) -> bool:
        """Whether the model's worker is running a job now (a quick call would wait for it)."""
        with self._lock:
            return id(self.worker_of(model_id)) in self._running

    async def run(self, model_id: str, fn: Callable[[Any], T]) -> T:
        """Await ``fn(lm)`` on the model's worker (the event loop keeps serving meanwhile)."""
        return await asyncio.wrap_future(self.call(model_id, fn))

    # ------------------------------------------------------------------------------------- jobs
    def submit(self, kind: str, model_id: str, key: str, compute: Callable[[Any, JobContext], Any],
               meta: dict[str, Any] | None = None) -> Job:
        """A job computing ``compute(lm, ctx)`` under ``key``: done at once when the key is cached, the
        running or queued job of the same key when there is one, else a new queued job."""
        with self._lock:
            if key in self.results:
                self.results.move_to_end(key)
                job = self._new(kind, model_id, key, meta)
                job.cached = True
                job.progress = {"stage": "cached", "done": 1, "total": 1}
                job._finish("done")
                return job
            active = self._active.get(key)
            if active is not None and not active.is_finished and not active._cancel.is_set():
                return active
            job = self._new(kind, model_id, key, meta)
            self._active[key] = job
        self.worker_of(model_id).put(1, next(self._seq), lambda: self._run(job, compute))
        return job

    def submit_deferred(self, kind: str, model_id: str, prepare: Callable[[Any], tuple[str, dict[str, Any]]],
                        compute: Callable[[Any, JobContext], Any]) -> Job:
        """A job whose key is known only once it runs: queued at once (``key`` empty), it first calls
        ``prepare(lm)`` (-> its key and meta; an error there fails the job with that error), then is done at
        once when the key is cached, else computes. For requests that arrive while the worker is busy, so
        that the request never waits for another job."""
        with self._lock:
            job = self._new(kind, model_id, "", None)
        self.worker_of(model_id).put(1, next(self._seq), lambda: self._run(job, compute, prepare))
        return job

    def _new(self, kind: str, model_id: str, key: str, meta: dict[str, Any] | None) -> Job:
        job = Job(id=secrets.token_hex(8), kind=kind, model=model_id, key=key, meta=dict(meta or {}))
        self.jobs[job.id] = job
        self._evict_jobs()
        return job

    def _evict_jobs(self) -> None:
        excess = len(self.jobs) - self.max_jobs
        if excess <= 0:
            return
        for jid in [j.id for j in self.jobs.values() if j.is_finished][:excess]:
            del self.jobs[jid]

    def _run(self, job: Job, compute: Callable[[Any, JobContext], Any],
             prepare: Callable[[Any], tuple[str, dict[str, Any]]] | None = None) -> None:
        ctx = JobContext(job)
        w = self.worker_of(job.model)
        try:
            with self._lock:
                if job.is_finished:  # cancelled while queued: it never runs
                    return
                if job._cancel.is_set():
                    job._finish("cancelled")
                    return
                job.status = "running"
                self._running[id(w)] = job
            ctx.progress("loading model")
            lm = w.model(job.model)
            ctx.check()
            if prepare is not None:
                ctx.progress("preparing")
                job.key, meta = prepare(lm)
                job.meta.update(meta)
                job.version += 1
            with self._lock:
                hit = job.key in self.results
            if hit:  # computed meanwhile by a job of the same key
                job.cached = True
            else:
                result = compute(lm, ctx)
                ctx.check()
                self.store(job.key, result)
            job.progress = {"stage": "done", "done": 1, "total": 1}
            job._finish("done")
        except _JobCancelled:
            job._finish("cancelled")
            log.info("job %s (%s) cancelled", job.id, job.kind)
        except ContrastLensError as e:
            job._finish("failed", error_json(e))
            log.info("job %s (%s) failed: %s", job.id, job.kind, one_line(e))
        except Exception as e:
            log.exception("job %s (%s) failed with an internal error", job.id, job.kind)
            job._finish("failed", error_json(e))
        finally:
            with self._lock:
                self._running.pop(id(w), None)
                if self._active.get(job.key) is job:
                    del self._active[job.key]

    def store(self, key: str, result: Any) -> None:
        with self._lock:
            self.results[key] = result
            self.results.move_to_end(key)
            while len(self.results) > self.cache_entries:
                self.results.popitem(last=False)

    def cached(self, key: str) -> Any | None:
        with self._lock:
            return self.results.get(key)

    def get(self, job_id: str) -> Job:
        with self._lock:
            job = self.jobs.get(job_id)
        if job is None:
            raise not_found(f"unknown job {job_id!r} (finished jobs are forgotten after a while; submit again)")
        return job

    def result(self, job_id: str) -> tuple[Job, Any]:
        """A done job and its result; 409 while it is not done, 404 when its result was evicted."""
        job = self.get(job_id)
        if job.status != "done":
            raise ApiError(409, "not_done", f"job {job_id} is {job.status}, not done; wait for it "
                           "(GET /api/jobs/{job} or its events)")
        res = self.cached(job.key)
        if res is None:
            raise not_found(f"the result of job {job_id} was evicted from the cache; submit the request again")
        return job, res

    def cancel(self, job_id: str) -> Job:
        """Cancel a job: a queued one never runs, a running one stops at its next progress call; a finished
        job is left as it is."""
        job = self.get(job_id)
        if job.is_finished:
            return job
        job._cancel.set()
        with self._lock:
            if job.status == "queued":
                job._finish("cancelled")
                if self._active.get(job.key) is job:
                    del self._active[job.key]
        return job

    async def events(self, job: Job, *, poll: float = 0.05, keepalive: float = 15.0
                     ) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        """``("progress", progress)`` at once and on every change, then one ``(status, job JSON)`` when it
        finishes (a job that is already finished gives its last progress and its end)."""
        seen = job.version
        last = time.monotonic()
        yield "progress", dict(job.progress)
        while True:
            if job.is_finished:
                yield job.status, job.to_json()
                return
            if job.version != seen:
                seen = job.version
                last = time.monotonic()
                yield "progress", dict(job.progress)
            elif time.monotonic() - last > keepalive:
                last = time.monotonic()
                yield "keepalive", {}
            await asyncio.sleep(poll)

    def close(self) -> None:
        """Stop the workers after what they are running (queued jobs are cancelled)."""
        if self._closed:
            return
        self._closed = True
        with self._lock:
            for job in self.jobs.values():
                if not job.is_finished:
                    job._cancel.set()
                    if job.status == "queued":
                        job._finish("cancelled")
        for w in self.workers:
            w.put(-1, -1, lambda: None)


__all__ = ["FINISHED", "Job", "JobContext", "JobQueue", "error_json", "one_line"]
