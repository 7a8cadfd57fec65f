"""The explorer's FastAPI app: ``create_app(settings)`` (the routes of ``docs/explorer-api.md``).

The routes are thin: request bodies are pydantic models (``extra="forbid"``, strict types), the work is
done by :class:`~contrastlens.server.jobs.Explorer` on the model workers, folders are guarded by
:mod:`contrastlens.server.resources`, formats are :mod:`contrastlens.server.wire` and
:mod:`contrastlens.server.view`. Around them:

- **errors**: every failure is ``{"error": {"status", "code", "message"}}`` with its HTTP status: a body that
  does not match its schema 422 ``invalid`` (the message names the field), a ``ContrastLensError`` 400
  (``bad_request``; ``model_error`` for a model that cannot load), the server's own 401/403/404/409/413,
  and anything else 500 ``internal`` with a one-line message (the traceback goes to the log, never out);
- **auth**: with ``settings.token``, every ``/api/`` request needs ``Authorization: Bearer <token>`` or
  ``?token=<token>`` (compared in constant time); without one, only requests addressed to a loopback name
  (``Host: 127.0.0.1``, ``localhost``, ``[::1]``) are served, so that no web page can reach the server
  through DNS rebinding;
- **body size**: a body over ``max_body_bytes`` (by ``Content-Length`` or as it streams in) is 413;
- **the page**: ``/`` serves the built front end (``contrastlens/server/static/index.html``, or a page
  saying how to build it) with a Content-Security-Policy that allows no external loads, and
  ``/static/*`` its files.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
import threading
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from importlib import resources as importlib_resources
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, model_validator
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.gzip import DEFAULT_EXCLUDED_CONTENT_TYPES, GZipMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from contrastlens.errors import ContrastLensError
from contrastlens.server.explorer import Explorer
from contrastlens.server.jobs import error_json
from contrastlens.server.resources import ApiError, CaseLibrary, ModelRegistry, case_json
from contrastlens.server.settings import ServerSettings

log = logging.getLogger("contrastlens.server.app")

CSP = "default-src 'self'; img-src 'self' data: blob:; style-src 'self' 'unsafe-inline'"
PAGE_HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}
_STATUS_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden_path", 404: "not_found",
                 409: "not_done", 413: "too_large", 422: "invalid"}


# -------------------------------------------------------------------------------------- request models
class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


TokenId = Annotated[int, Field(ge=0)]


class CaseRef(_Body):
    file: str
    id: str


class InputModel(_Body):
    """Exactly one of ``prompt`` (with ``chat``), ``ids`` or ``case``; ``append``: ids added after it."""

    prompt: str | None = None
    chat: bool = False
    ids: list[TokenId] | None = None
    case: CaseRef | None = None
    append: list[TokenId] | None = None

    @model_validator(mode="after")
    def _one(self) -> InputModel:
        given = [k for k in ("prompt", "ids", "case") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of prompt, ids or case (got {', '.join(given) or 'none'})")
        return self


class TokenChoice(_Body):
    id: TokenId | None = None
    text: str | None = None

    @model_validator(mode="after")
    def _one(self) -> TokenChoice:
        if (self.id is None) == (self.text is None):
            raise ValueError("a token choice is {\"id\": ...} or {\"text\": ...}, exactly one")
        return self


class TokenizeRequest(_Body):
    model: str
    text: str
    input: InputModel | None = None


class LogitsRequest(_Body):
    model: str
    input: InputModel
    k: int = Field(10, ge=1)


class ContinueRequest(_Body):
    model: str
    input: InputModel
    max_new_tokens: int | None = Field(None, ge=1)  # default: 32 (or the server's limit when lower)


class ExplainRequest(_Body):
    model: str
    input: InputModel
    target: TokenChoice | None = None
    contrast: TokenChoice | None = None
    method: str = "attnlrp"


class GraphRequest(ExplainRequest):
    mid: bool = True
    layers: list[str | int] | None = None
    node_threshold: float = Field(0.0, ge=0)
    send_p: float | None = Field(None, gt=0, le=1)
    max_edges: int | None = Field(None, ge=1)


class EdgeRef(_Body):
    src: str | int
    tgt: str | int
    j: int
    i: int


class NeuronsRequest(_Body):
    graph: str
    layer: str | int | None = None
    pos: int | None = None
    edge: EdgeRef | None = None
    top_k: int = Field(10, ge=1)
    kind: str | None = None


def _at_most(field: str, value: int, limit: int) -> None:
    if value > limit:
        raise ApiError(422, "invalid", f"{field}: at most {limit} on this server, got {value}")


# -------------------------------------------------------------------------------------------- errors
def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"status": status, "code": code, "message": message}}, status_code=status)


def _validation_message(exc: RequestValidationError) -> str:
    errs = exc.errors()
    if not errs:
        return "the request does not match its schema"
    e = errs[0]
    loc = [str(x) for x in e.get("loc", ()) if x not in ("body",)]
    if e.get("type") == "json_invalid":
        return f"body: not valid JSON ({e.get('ctx', {}).get('error', 'parse error')})"
    where = ".".join(loc) or "body"
    msg = str(e.get("msg", "invalid")).removeprefix("Value error, ")
    more = f" (and {len(errs) - 1} more)" if len(errs) > 1 else ""
    return f"{where}: {msg}{more}"


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _invalid(_r: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(422, "invalid", _validation_message(exc))

    @app.exception_handler(ContrastLensError)
    async def _ours(_r: Request, exc: ContrastLensError) -> JSONResponse:
        e = error_json(exc)
        return _error(e["status"], e["code"], e["message"])

    @app.exception_handler(StarletteHTTPException)
    async def _http(_r: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _STATUS_CODES.get(exc.status_code, "bad_request" if exc.status_code < 500 else "internal")
        return _error(exc.status_code, code, str(exc.detail))

    @app.exception_handler(Exception)
    async def _bug(r: Request, exc: Exception) -> JSONResponse:
        log.error("internal error on %s %s", r.method, r.url.path, exc_info=exc)
        return _error(500, "internal", f"internal error ({type(exc).__name__}); see the server log")


# ----------------------------------------------------------------------------------------- middleware
async def _send_error(send: Send, status: int, code: str, message: str) -> None:
    body = json.dumps({"error": {"status": status, "code": code, "message": message}}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


class BodyLimit:
    """413 for a request body over ``limit`` bytes: by its Content-Length, or while it streams in (the body is
    read before the app runs, then replayed)."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        too_large = f"the request body is over this server's limit of {self.limit} bytes"
        if length is not None:
            try:
                if int(length) > self.limit:
                    await _send_error(send, 413, "too_large", too_large)
                    return
            except ValueError:
                await _send_error(send, 400, "bad_request", "the Content-Length header is not a number")
                return
        if scope.get("method") in ("GET", "HEAD", "OPTIONS") and length is None:
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return
            chunk = msg.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                await _send_error(send, 413, "too_large", too_large)
                return
            chunks.append(chunk)
            if not msg.get("more_body", False):
                break
        body = b"".join(chunks)
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


class TokenAuth:
    """With a token, every ``/api/`` request needs ``Authorization: Bearer <token>`` or ``?token=<token>``."""

    def __init__(self, app: ASGIApp, token: str | None) -> None:
        self.app, self.token = app, token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.token or not str(scope.get("path", "")).startswith("/api/"):
            await self.app(scope, receive, send)
            return
        from urllib.parse import parse_qs

        given: str | None = None
        auth = dict(scope.get("headers") or []).get(b"authorization", b"").decode("latin-1")
        if auth[:7].lower() == "bearer ":
            given = auth[7:].strip()
        else:
            q = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("token")
            given = q[0] if q else None
        if given is None or not hmac.compare_digest(given.encode("utf-8", "replace"), self.token.encode("utf-8")):
            what = "a wrong token" if given is not None else "no token"
            await _send_error(send, 401, "unauthorized", f"this server needs its token ({what} given): send "
                              "Authorization: Bearer <token> or ?token=<token>")
            return
        await self.app(scope, receive, send)


class LoopbackHosts:
    """Without a token, only requests addressed to this machine by a loopback name (``Host: 127.0.0.1``,
    ``localhost`` or ``[::1]``, any port) are served: a web page elsewhere cannot reach the server through
    a DNS name rebound to 127.0.0.1 (DNS rebinding). With a token the token guards every API request."""

    NAMES = ("127.0.0.1", "localhost", "::1")

    def __init__(self, app: ASGIApp, active: bool) -> None:
        self.app, self.active = app, active

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.active:
            await self.app(scope, receive, send)
            return
        host = dict(scope.get("headers") or []).get(b"host", b"").decode("latin-1").strip().lower()
        name = host[1:].split("]")[0] if host.startswith("[") else host.rsplit(":", 1)[0] if ":" in host else host
        if name not in self.NAMES:
            await _send_error(send, 400, "bad_request", f"this server answers only at a loopback address, not at "
                              f"{host!r}; open it as http://127.0.0.1:<port>/ (or start it with --token)")
            return
        await self.app(scope, receive, send)


# ----------------------------------------------------------------------------------------------- page
def static_dir() -> Path:
    return Path(str(importlib_resources.files("contrastlens.server") / "static"))


NOT_BUILT = """<!doctype html><html><head><meta charset="utf-8"><title>contrastlens explorer</title></head>
<body style="font-family: sans-serif; max-width: 40em; margin: 3em auto">
<h1>contrastlens explorer</h1>
<p>The server is running, but the front end is not built: there is no
<code>contrastlens/server/static/index.html</code> in this installation.</p>
<p>Build it from the repository with <code>bash scripts/build_frontend.sh</code> (it needs Node and npm once;
the built files then ship inside the package), then reload this page. The JSON API is under
<code>/api/</code> (see <code>docs/explorer-api.md</code>).</p></body></html>
"""


def _install_page(app: FastAPI) -> None:
    @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    def index() -> Response:
        f = static_dir() / "index.html"
        if f.is_file():
            return FileResponse(f, media_type="text/html", headers=PAGE_HEADERS)
        return HTMLResponse(NOT_BUILT, headers=PAGE_HEADERS)

    @app.get("/static/{path:path}", include_in_schema=False)
    def static(path: str) -> Response:
        root = static_dir().resolve()
        try:
            f = (root / path).resolve()
        except (OSError, RuntimeError):
            f = root
        if not f.is_relative_to(root) or not f.is_file():
            raise ApiError(404, "not_found", f"no static file {path!r}")
        return FileResponse(f, headers=PAGE_HEADERS)


# ---------------------------------------------------------------------------------------------- routes
def _install_api(app: FastAPI, ex: Explorer) -> None:
    from contrastlens import __version__
    from contrastlens.server.view import GraphView
    from contrastlens.server.wire import WIRE_VERSION

    s = ex.settings
    views: OrderedDict[str, GraphView] = OrderedDict()  # decoded graphs of recent exports
    views_lock = threading.Lock()

    async def quick(model: str, fn: Callable[[Any], Any]) -> Any:
        ex.models.resolve(model)  # 403 / 404 before anything is queued
        return await ex.queue.run(model, fn)

    def accepted(job: Any) -> JSONResponse:
        return JSONResponse({"job": job.id, "status": job.status, "cached": job.cached}, status_code=202)

    @app.get("/api/health")
    def health() -> dict[str, Any]:
        return {"ok": True, "version": __version__, "wire_version": WIRE_VERSION, "auth": bool(s.token)}

    @app.get("/api/models")
    def models() -> dict[str, Any]:
        return {"models": ex.models.models()}

    @app.get("/api/cases")
    def cases() -> dict[str, Any]:
        return ex.cases.listing()

    @app.get("/api/case")
    def case(file: Annotated[str, Query()], id: Annotated[str, Query()]) -> dict[str, Any]:
        c = ex.cases.case(file, id)
        return case_json(c, ex.models.id_of_source(c.model_source))

    @app.post("/api/tokenize")
    async def tokenize(body: TokenizeRequest) -> Any:
        req = body.model_dump()
        return await quick(body.model, lambda lm: ex.tokenize(lm, req))

    @app.post("/api/logits")
    async def logits(body: LogitsRequest) -> Any:
        _at_most("k", body.k, s.max_top_k)
        req = body.model_dump()
        return await quick(body.model, lambda lm: ex.logits(lm, req))

    @app.post("/api/continue")
    async def continue_(body: ContinueRequest) -> Any:
        if body.max_new_tokens is None:
            body.max_new_tokens = min(32, s.max_new_tokens)
        _at_most("max_new_tokens", body.max_new_tokens, s.max_new_tokens)
        req = body.model_dump()
        return await quick(body.model, lambda lm: ex.continue_(lm, req))

    @app.post("/api/explain", status_code=202)
    async def explain(body: ExplainRequest) -> JSONResponse:
        ex.models.resolve(body.model)
        return accepted(await ex.submit("explain", body.model_dump()))

    @app.post("/api/graph", status_code=202)
    async def graph(body: GraphRequest) -> JSONResponse:
        ex.models.resolve(body.model)
        if body.max_edges is not None:
            _at_most("max_edges", body.max_edges, s.max_edges)
        return accepted(await ex.submit("graph", body.model_dump()))

    @app.post("/api/neurons", status_code=202)
    async def neurons(body: NeuronsRequest) -> JSONResponse:
        _at_most("top_k", body.top_k, s.max_top_k)
        return accepted(await ex.neurons(body.model_dump()))

    @app.get("/api/jobs/{job_id}")
    def job(job_id: str) -> dict[str, Any]:
        return ex.queue.get(job_id).to_json()

    @app.delete("/api/jobs/{job_id}")
    def cancel(job_id: str) -> dict[str, Any]:
        j = ex.queue.cancel(job_id)
        return {"job": j.id, "status": j.status}

    @app.get("/api/jobs/{job_id}/events")
    async def events(job_id: str) -> StreamingResponse:
        j = ex.queue.get(job_id)

        async def stream() -> AsyncIterator[bytes]:
            async for name, data in ex.queue.events(j):
                if name == "keepalive":
                    yield b": keepalive\n\n"
                else:
                    yield f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.get("/api/jobs/{job_id}/result")
    def result(job_id: str) -> Response:
        j, res = ex.queue.result(job_id)
        if j.kind == "graph":
            return Response(res, media_type="application/octet-stream",
                            headers={"Content-Disposition": f'inline; filename="graph-{j.key[:12]}.clg1"'})
        return JSONResponse(res)

    @app.get("/api/jobs/{job_id}/export")
    def export(job_id: str, format: Annotated[str, Query()] = "json",
               p: Annotated[float | None, Query(gt=0, le=1)] = None,
               tau: Annotated[float, Query(ge=0, le=1)] = 0.0,
               subgraph: Annotated[int, Query(ge=0, le=1)] = 0) -> Response:
        j, payload = ex.queue.result(job_id)
        if j.kind != "graph":
            raise ApiError(400, "bad_request", f"job {job_id} is a {j.kind} job; exports are of graph jobs")
        if format not in EXPORTS:
            raise ApiError(422, "invalid", f"format: one of {', '.join(EXPORTS)}, not {format!r}")
        with views_lock:
            gv = views.get(j.key)
        if gv is None:
            gv = GraphView.from_payload(payload)
            with views_lock:
                views[j.key] = gv
                while len(views) > 2:
                    views.popitem(last=False)
        v = gv.view(p=p, tau=tau, subgraph=bool(subgraph))
        media, ext, render = EXPORTS[format]
        name = f"graph-{j.key[:12]}{'-neuronpedia' if format == 'neuronpedia' else ''}.{ext}"
        return Response(render(v), media_type=media, headers={"Content-Disposition": f'attachment; filename="{name}"'})


def _json_bytes(d: Any) -> bytes:
    return json.dumps(d, ensure_ascii=False, allow_nan=False).encode("utf-8")


EXPORTS: dict[str, tuple[str, str, Callable[[Any], bytes | str]]] = {
    "json": ("application/json", "json", lambda v: _json_bytes(v.to_node_link())),
    "neuronpedia": ("application/json", "json", lambda v: _json_bytes(v.to_neuronpedia())),
    "nodes.csv": ("text/csv; charset=utf-8", "nodes.csv", lambda v: v.nodes_csv()),
    "edges.csv": ("text/csv; charset=utf-8", "edges.csv", lambda v: v.edges_csv()),
}


# ------------------------------------------------------------------------------------------------ app
def create_app(settings: ServerSettings | None = None) -> FastAPI:
    """The explorer app for ``settings`` (checked first: see :meth:`ServerSettings.check`); its workers stop
    when the app shuts down (``app.state.explorer.close()``)."""
    s = (settings or ServerSettings()).check()
    explorer = Explorer(s, ModelRegistry(s), CaseLibrary(s))

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            explorer.close()

    app = FastAPI(title="contrastlens explorer", lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url="/api/openapi.json")
    app.state.settings, app.state.explorer = s, explorer
    _install_error_handlers(app)
    _install_api(app, explorer)
    _install_page(app)
    app.add_middleware(BodyLimit, limit=s.max_body_bytes)
    app.add_middleware(TokenAuth, token=s.token)
    app.add_middleware(LoopbackHosts, active=not s.token)
    app.add_middleware(GZipMiddleware, minimum_size=4096, compresslevel=6,
                       exclude_content_types=(*DEFAULT_EXCLUDED_CONTENT_TYPES, "application/octet-stream"))
    return app


__all__ = ["CSP", "EXPORTS", "BodyLimit", "LoopbackHosts", "TokenAuth", "create_app", "static_dir"]
