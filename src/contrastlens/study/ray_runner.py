"""Running a study's units as Ray tasks (``contrastlens study run --ray [ADDRESS]``).

Each model load key gets ``[runner] actors_per_model`` Ray actors (default 1), each an instance of
:class:`~contrastlens.study.runner.ModelWorker` with ``num_cpus`` / ``num_gpus`` of ``[runner]``: the actor
loads the model once and runs that model's units, one actor method call per unit, in case order (so the
memoised explanations of a case are shared by its analyses and no worker ever reloads per unit). With
several actors per model the cases are dealt out round-robin. An actor is killed as soon as its model's
units are done, which frees its resources for the next model's actors (Ray queues an actor until its
resources are free).

The driver (this process) keeps all bookkeeping: it plans, writes every returned result to the store
atomically (workers return :class:`~contrastlens.study.runner.Outcome` objects holding
:class:`~contrastlens.study.base.UnitResult`\\ s; they never write), the manifest and the summary. The
checkpoint-series tokenizer check needs the earlier checkpoints' tokenizers, so a series model's actors are
created only after the earlier checkpoints have loaded (or failed to): every actor depends only on actors
created before it, so the run cannot deadlock on resources.

Without an address a local Ray is started (``ray.init(num_cpus=[runner] local_cpus or all cores,
include_dashboard=False)``) and shut down at the end; with an address the run connects to that cluster
(``"auto"``: the one on this machine), where contrastlens must be installed. An already initialised Ray (e.g.
in a notebook) is used as it is. Analyses registered outside ``contrastlens`` (plugins, tests) are sent to
the workers by value. Ray is imported lazily: without it, ``--ray`` is a clear error.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from contrastlens.errors import InputError
from contrastlens.study.base import UnitKey
from contrastlens.study.runner import Outcome, analysis_classes, one_line

if TYPE_CHECKING:  # pragma: no cover
    from contrastlens.study.runner import Driver, Group

log = logging.getLogger(__name__)


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise InputError("--ray needs the ray package: pip install 'ray>=2.9' (or pip install "
                         "'contrastlens[ray]')") from None
    return ray


@dataclass
class _GroupState:
    group: Group
    actors: list[Any] = field(default_factory=list)
    loads: dict[int, dict[str, Any]] = field(default_factory=dict)
    pending: int = 0  # unit calls in flight
    started: bool = False
    finished: bool = False


def _send_by_value(classes: dict[str, type], ray: Any) -> None:
    """Analyses defined outside contrastlens (plugins, test modules) travel to the workers by value."""
    for cls in classes.values():
        mod = cls.__module__
        if mod == "__main__" or mod.split(".")[0] == "contrastlens":
            continue
        module = sys.modules.get(mod)
        if module is not None:
            try:
                ray.cloudpickle.register_pickle_by_value(module)
            except (ValueError, AttributeError) as e:  # pragma: no cover - very old Ray
                log.debug("cannot pickle %s by value: %s", mod, e)


def execute_ray(driver: Driver, *, address: str | None = None) -> None:
    """Run the plan's groups as Ray actors (see the module docstring)."""
    ray = import_ray()
    plan = driver.plan
    rs = plan.study.runner
    started_here = False
    if not ray.is_initialized():
        kw: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.WARNING}
        try:
            if address is None:
                ray.init(num_cpus=rs.local_cpus or os.cpu_count() or 1, **kw)
            else:
                ray.init(address=address, **kw)
        except ConnectionError as e:
            raise InputError(f"cannot connect to the Ray cluster at {address}: {one_line(e)}") from None
        started_here = True
    try:
        total = ray.cluster_resources()
        if rs.num_cpus > total.get("CPU", 0) or rs.num_gpus > total.get("GPU", 0):
            raise InputError(f"[runner] asks for {rs.num_cpus:g} CPU and {rs.num_gpus:g} GPU per actor but the Ray "
                             f"cluster has {total.get('CPU', 0):g} CPU and {total.get('GPU', 0):g} GPU")
        classes = analysis_classes(plan.study)
        _send_by_value(classes, ray)
        _loop(driver, ray, classes)
    finally:
        if started_here:
            ray.shutdown()


def _loop(driver: Driver, ray: Any, classes: dict[str, type]) -> None:
    from contrastlens.study.runner import ModelWorker

    plan = driver.plan
    rs = plan.study.runner
    Actor = ray.remote(num_cpus=rs.num_cpus, num_gpus=rs.num_gpus, max_restarts=0)(ModelWorker)
    info_ref = ray.put(plan.info)
    waiting = [_GroupState(g) for g in driver.groups]
    inflight: dict[Any, tuple[str, _GroupState, int, UnitKey | None]] = {}
    case_refs: dict[str, Any] = {}

    def start(s: _GroupState) -> None:
        s.started = True
        n = max(1, min(rs.actors_per_model, len({k.case for k in s.group.tasks}) or 1))
        for i in range(n):
            a = Actor.remote(s.group.refs, info_ref, classes, plan.study.analyses, seed=plan.study.seed,
                             device=rs.device, threads=max(1, int(rs.num_cpus)))
            s.actors.append(a)
            inflight[a.load.remote()] = ("load", s, i, None)

    def stop(s: _GroupState) -> None:
        s.finished = True
        for a in s.actors:
            try:
                ray.kill(a)
            except Exception:  # noqa: BLE001 - an actor that is gone already
                pass
        s.actors.clear()

    def submit(s: _GroupState) -> None:
        loads = [s.loads[i] for i in range(len(s.actors))]
        bad = next((x for x in loads if x.get("error")), None)
        reasons = driver.loaded(s.group, bad or loads[0])
        tasks = driver.fail_tasks(s.group.tasks, reasons, "failed" if bad else "skipped")
        order = {c: i for i, c in enumerate(dict.fromkeys(k.case for k in tasks))}
        for k in tasks:
            if k.case not in case_refs:
                case_refs[k.case] = ray.put(plan.cases[k.case])
            i = order[k.case] % len(s.actors)
            inflight[s.actors[i].run_unit.remote(case_refs[k.case], k)] = ("unit", s, i, k)
            s.pending += 1
        if not s.pending:
            stop(s)

    while waiting or inflight:
        for s in [s for s in waiting if driver.ready(s.group)]:
            waiting.remove(s)
            start(s)
        if not inflight:  # nothing runs and nothing is ready: break the tie in model order
            start(waiting.pop(0))
        done, _ = ray.wait(list(inflight), num_returns=1, timeout=1.0)
        for ref in done:
            kind, s, i, key = inflight.pop(ref)
            try:
                value = ray.get(ref)
            except Exception as e:  # noqa: BLE001 - a worker that died fails what it held
                value = e
            if kind == "load":
                s.loads[i] = value if isinstance(value, dict) else {"error": f"the Ray worker died: {one_line(value)}"}
                if len(s.loads) == len(s.actors):
                    submit(s)
                continue
            assert key is not None
            s.pending -= 1
            if not isinstance(value, Outcome):
                value = Outcome(key, "failed", reason=f"the Ray worker died: {one_line(value)}")
            driver.finish(value)
            if s.pending == 0:
                stop(s)


__all__ = ["execute_ray", "import_ray"]
