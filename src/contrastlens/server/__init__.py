"""The explorer: a FastAPI app with a JSON API under ``/api/`` and a single-page front end at ``/``.

``create_app(settings)`` builds the app (testable without a socket: ``fastapi.testclient.TestClient``);
``ServerSettings`` are its settings. FastAPI is imported only when ``create_app`` is used, so
``import contrastlens.server`` works without the ``server`` extra. The wire contract is
``docs/explorer-api.md``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_LAZY = {"create_app": "contrastlens.server.app", "ServerSettings": "contrastlens.server.settings"}

__all__ = sorted(_LAZY)

if TYPE_CHECKING:  # pragma: no cover
    from contrastlens.server.app import create_app  # noqa: F401
    from contrastlens.server.settings import ServerSettings  # noqa: F401


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'contrastlens.server' has no attribute {name!r}")
