"""``contrastlens serve``: the explorer (a web page and its JSON API) on this machine.

    contrastlens serve [--host 127.0.0.1] [--port 8000] [--models DIR] [--cases DIR] [--token T]
                       [--dtype float32] [--no-random]

Binds to 127.0.0.1 unless told otherwise; any other host needs ``--token`` (the server refuses to start
without one: exit status 2, one line). Models load only from the catalog, ``random:<arch>`` (unless
``--no-random``) and the folders and ``.gguf`` files directly inside ``--models``; cases only from the
``*.jsonl`` files under ``--cases``. See ``docs/explorer.md``.
"""

from __future__ import annotations

import argparse
import logging


def add_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1; any other address needs --token)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--models", metavar="DIR", default=None,
                   help="a folder whose model folders and .gguf files are offered as folder:<name>")
    p.add_argument("--cases", metavar="DIR", default=None, help="a folder of case files (*.jsonl, recursively)")
    p.add_argument("--token", default=None,
                   help="require this token on every API request (open the page as /?token=T)")
    p.add_argument("--dtype", default="float32", help="dtype models are loaded in: float32 (default), bfloat16, float16")
    p.add_argument("--no-random", action="store_true", help="do not offer the tiny random:<arch> models")


def _check_port(host: str, port: int) -> None:
    """A clear error when the address cannot be bound (in use, or not an address of this machine)."""
    import socket

    from contrastlens.errors import InputError

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as e:
        raise InputError(f"cannot listen on {host}: {e.strerror or e}; give another --host") from None
    family, _, _, _, addr = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(addr)
        except OSError as e:
            raise InputError(f"cannot listen on {host}:{port}: {e.strerror or e}; choose another --port") from None


def run(args: argparse.Namespace) -> int:
    from contrastlens.server.settings import ServerSettings

    settings = ServerSettings(host=args.host, port=args.port, models_dir=args.models, cases_dir=args.cases,
                              token=args.token, dtype=args.dtype, allow_random=not args.no_random).check()
    try:
        import uvicorn

        from contrastlens.server.app import create_app
    except ImportError as e:
        from contrastlens.errors import InputError

        raise InputError(f"the explorer needs the server extra ({e.name} is missing): "
                         "pip install 'contrastlens[server]'") from None
    _check_port(settings.host, settings.port)
    app = create_app(settings)
    shown = f"[{settings.host}]" if ":" in settings.host else settings.host
    query = "?token=<your token>" if settings.token else ""
    logging.getLogger("contrastlens").info("contrastlens explorer on http://%s:%d/%s", shown, settings.port, query)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="warning")
    return 0
