"""The explorer server's settings: one plain, serialisable dataclass (``dataclasses.asdict`` works).

Settings are values only; the resources they name (model and case folders) are opened by
:mod:`contrastlens.server.resources`, the models by the job workers (:mod:`contrastlens.server.jobs`).
:meth:`ServerSettings.check` refuses a configuration that is unsafe or cannot work: a host other than a
loopback address without a token (anyone on the network could run models and read cases), a configured
folder that does not exist, a limit that is not positive.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, replace

from contrastlens.errors import InputError

LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")
_DTYPES = ("float32", "fp32", "bfloat16", "bf16", "float16", "fp16")
_POSITIVE = ("max_body_bytes", "max_prompt_tokens", "max_new_tokens", "max_top_k", "max_edges", "cache_entries",
             "max_jobs", "loaded_models")


@dataclass
class ServerSettings:
    """What ``contrastlens serve`` runs with.

    ``models_dir``: model folders and ``.gguf`` files directly inside it become ``folder:<name>`` ids;
    ``cases_dir``: every ``*.jsonl`` case file under it (recursively) is listed; ``token``: required on
    every ``/api/`` request when set (``Authorization: Bearer`` or ``?token=``); ``allow_random``: offer the
    tiny ``random:<arch>`` models; ``dtype``: the dtype models are loaded in; ``devices``: one job worker
    (and model cache) per device. Limits: ``max_body_bytes`` (request bodies), ``max_prompt_tokens``,
    ``max_new_tokens`` (``/api/continue``), ``max_top_k`` (``/api/logits``, ``/api/neurons``),
    ``max_edges`` (edges sent per graph), ``send_p`` (the cum-mass share of each transition that is sent),
    ``cache_entries`` (results kept), ``max_jobs`` (finished jobs remembered), ``loaded_models`` (models
    kept loaded per worker).
    """

    host: str = "127.0.0.1"
    port: int = 8000
    models_dir: str | None = None
    cases_dir: str | None = None
    token: str | None = None
    allow_random: bool = True
    dtype: str = "float32"
    devices: tuple[str, ...] = field(default=("cpu",))
    max_body_bytes: int = 1_000_000
    max_prompt_tokens: int = 16384
    max_new_tokens: int = 256
    max_top_k: int = 100
    max_edges: int = 1_500_000
    send_p: float = 0.98
    cache_entries: int = 32
    max_jobs: int = 256
    loaded_models: int = 2

    @property
    def loopback(self) -> bool:
        return self.host.strip().lower().strip("[]") in LOOPBACK_HOSTS

    def check(self) -> ServerSettings:
        """Raise an :class:`InputError` (one line, what to do) for an unsafe or unusable configuration;
        return the settings with the folders made absolute."""
        if not self.loopback and not self.token:
            raise InputError(f"refusing to listen on {self.host} without a token: anyone who can reach it could "
                             "run models and read case files; pass --token T (or bind to 127.0.0.1)")
        if self.token is not None and not self.token.strip():
            raise InputError("the token is empty; give a non-empty --token or none")
        out = replace(self, devices=tuple(self.devices))
        for name in ("models_dir", "cases_dir"):
            folder = getattr(self, name)
            if folder is None:
                continue
            if not os.path.isdir(folder):
                flag = "--models" if name == "models_dir" else "--cases"
                raise InputError(f"{flag} folder {folder} does not exist (or is not a folder); create it or "
                                 "give another")
            setattr(out, name, os.path.realpath(folder))
        for name in _POSITIVE:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise InputError(f"setting {name} must be a positive integer, got {v!r}")
        if not (isinstance(self.send_p, int | float) and math.isfinite(self.send_p) and 0 < self.send_p <= 1):
            raise InputError(f"setting send_p must be in (0, 1], got {self.send_p!r}")
        if str(self.dtype).lower() not in _DTYPES:
            raise InputError(f"unknown dtype {self.dtype!r}; choose one of: {', '.join(_DTYPES)}")
        if not out.devices:
            raise InputError("give at least one device (e.g. cpu)")
        if isinstance(self.port, bool) or not isinstance(self.port, int) or not 0 <= self.port <= 65535:
            raise InputError(f"port must be an integer in 0..65535, got {self.port!r}")
        return out


__all__ = ["LOOPBACK_HOSTS", "ServerSettings"]
