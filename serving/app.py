"""The inference API: FastAPI over the model registry, with API keys, a row cache, Prometheus metrics, JSON logs.

``POST /v1/models/{name}/predict`` takes ``{"row": {...}}`` or ``{"rows": [{...}, ...]}`` of raw columns; ``name``
is ``NAME`` (served at the default alias), ``NAME@ALIAS``, ``NAME@v3`` or ``NAME@latest``.
``POST /v1/models/{name}/explain`` takes one row and answers its SHAP values per raw column. Aliases are looked up
again every ``refresh_seconds``, so moving ``@champion`` to a new version takes effect without a restart (the
old version's cache entries are dropped then). ``/healthz``, ``/readyz`` and the OpenAPI pages are open; the
models need a key with the ``predict`` scope, ``/metrics`` one with ``admin``.

Length: over 500 lines because the endpoints, their pydantic request and response models (which are the OpenAPI
document the fuzz test reads) and the key check they share are built in one ``create_app`` closure per settings.
"""

# No `from __future__ import annotations` here: FastAPI reads the endpoints' annotations at run time, and they
# name classes local to create_app.
import logging
import math
import re
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from serving import registry
from serving.cache import RowCache
from serving.keys import ApiKey, KeyRing, default_store
from serving.model import ModelLoadError, NotExplainable, RowsInvalid, ServedModel
from serving.telemetry import JsonFormatter, Metrics, configure_logging

__all__ = ["JsonFormatter", "Settings", "configure_logging", "create_app"]

if TYPE_CHECKING:
    from fastapi import FastAPI

log = logging.getLogger("serving.api")
REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


@dataclass(frozen=True)
class Settings:
    """How one API process serves."""

    alias: str = "champion"  # what a bare NAME means
    cache_size: int = 10_000  # rows; 0 turns the cache off
    max_batch: int = 1_000  # rows per request (more: 413)
    max_body_bytes: int = 8 * 1024 * 1024  # (more: 413)
    refresh_seconds: float = 2.0  # how stale an alias lookup may be
    loaded_versions: int = 8  # versions kept in memory
    key_file: Path | None = None  # at-rest key file ($UAAP_MODEL_KEY wins)
    api_keys: Path | None = None  # API key store (default <workspace>/serving/api-keys.json)
    preload: tuple[str, ...] = ()  # NAME or NAME@ALIAS to load before /readyz says ready


# ---- models -----------------------------------------------------------------------------------------------------


class Models:
    """Registry lookups (aliases refreshed every ``refresh_seconds``) and the versions loaded in memory."""

    def __init__(self, settings: Settings, cache: RowCache) -> None:
        from uaap import at_rest

        self.settings = settings
        self.cache = cache
        self.client = registry.client()
        self._aliases: dict[tuple[str, str], tuple[str, float]] = {}
        self._loaded: OrderedDict[tuple[str, str], ServedModel] = OrderedDict()
        self._lock = threading.RLock()
        self._key: bytes | None = None
        self._key_problem = ""  # why there is no key: said when an encrypted version is asked for
        try:
            self._key = at_rest.load_key(settings.key_file)
        except at_rest.AtRestError as exc:  # plaintext versions still serve
            # clients read this: no file path in it (the server's log has the details)
            self._key_problem = (
                f"the server holds no at-rest key (start it with ${at_rest.KEY_ENV} or --key-file; its log says why)"
            )
            log.warning("no at-rest key: %s", exc)

    def split(self, spec: str) -> tuple[str, str]:
        """``NAME[@ALIAS]`` -> (name, alias)."""
        name, _, alias = spec.partition("@")
        return name, alias or self.settings.alias

    def version(self, name: str, alias: str) -> str:
        """The version ``name@alias`` points at now (looked up again when older than ``refresh_seconds``)."""
        now = time.monotonic()
        with self._lock:
            known = self._aliases.get((name, alias))
            if known is not None and now - known[1] < self.settings.refresh_seconds:
                return known[0]
        version = registry.resolve(self.client, name, alias)
        with self._lock:
            self._aliases[(name, alias)] = (version, now)
            if known is not None and known[0] != version:
                dropped = self.cache.drop(name, known[0])
                log.info("alias moved", extra={"model": name, "version": version, "rows": dropped})
        return version

    def ready(self, spec: str) -> ServedModel | None:
        """The model behind ``NAME[@ALIAS]`` if it is loaded and its alias lookup fresh: no registry call (the
        event loop takes this path; anything else goes to a worker thread through :meth:`get`)."""
        name, alias = self.split(spec)
        with self._lock:
            known = self._aliases.get((name, alias))
            if known is None or time.monotonic() - known[1] >= self.settings.refresh_seconds:
                return None
            return self._loaded.get((name, known[0]))

    def get(self, spec: str) -> ServedModel:
        """The loaded model behind ``NAME[@ALIAS]``."""
        name, alias = self.split(spec)
        version = self.version(name, alias)
        with self._lock:
            model = self._loaded.get((name, version))
            if model is not None:
                self._loaded.move_to_end((name, version))
                return model
        files, tags = registry.download(self.client, name, version)
        if tags.get(registry.TAG_ENCRYPTED) == "true" and self._key is None:
            raise ModelLoadError(f"model {name!r} version {version} is encrypted at rest: {self._key_problem}")
        model = ServedModel(name, version, files, tags, self._key)
        with self._lock:
            self._loaded[(name, version)] = model
            while len(self._loaded) > self.settings.loaded_versions:
                self._loaded.popitem(last=False)
        log.info("model loaded", extra={"model": name, "version": version})
        return model


# ---- the app ----------------------------------------------------------------------------------------------------


def create_app(settings: Settings | None = None) -> "FastAPI":
    """The FastAPI app (``uvicorn`` serves it; tests drive it in-process)."""
    from contextlib import asynccontextmanager

    from fastapi import FastAPI, HTTPException, Request, Security
    from fastapi.concurrency import run_in_threadpool
    from fastapi.exception_handlers import http_exception_handler
    from fastapi.responses import JSONResponse, PlainTextResponse, Response
    from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
    from pydantic import BaseModel, ConfigDict, Field
    from starlette.exceptions import HTTPException as StarletteHTTPException

    settings = settings or Settings()
    cache = RowCache(settings.cache_size)
    metrics = Metrics()
    ring = KeyRing(settings.api_keys or default_store())
    state: dict[str, Any] = {"models": None, "preload_errors": {}}

    def models() -> Models:
        if state["models"] is None:
            state["models"] = Models(settings, cache)
        found: Models = state["models"]
        return found

    @asynccontextmanager
    async def lifespan(app: "FastAPI") -> Any:
        for spec in settings.preload:
            try:
                models().get(spec)
            except Exception as exc:
                state["preload_errors"][spec] = str(exc)
                log.error("preload failed", extra={"model": spec})
        yield

    class Problem(BaseModel):
        detail: str = Field(description="what went wrong and what to do")

    class Health(BaseModel):
        status: str

    class Ready(BaseModel):
        status: str
        models: dict[str, str] = Field(default_factory=dict, description="preloaded NAME[@ALIAS] -> version")
        errors: dict[str, str] = Field(default_factory=dict)

    class ModelSummary(BaseModel):
        name: str
        aliases: dict[str, str] = Field(description="alias -> version")

    class ModelList(BaseModel):
        models: list[ModelSummary]
        default_alias: str

    class ColumnInfo(BaseModel):
        name: str
        type: str = Field(description="number, string or datetime (ISO 8601 text)")
        nullable: bool

    class ModelInfo(BaseModel):
        name: str
        alias: str
        version: str
        run_id: str
        task: str
        family: str
        runtime: str = Field(description="onnxruntime or native")
        classes: list[str]
        metrics: dict[str, float]
        privacy: dict[str, float | None] = Field(description="the run's epsilons (empty without DP)")
        input_schema: list[ColumnInfo]
        row_json_schema: dict[str, Any] = Field(description="JSON Schema of one row (what predict validates)")

    class PredictRequest(BaseModel):
        model_config = ConfigDict(
            extra="forbid",
            json_schema_extra={"examples": [{"row": {"column": 1.0}}, {"rows": [{"column": 1.0}, {"column": 2.5}]}]},
        )
        row: dict[str, Any] | None = Field(default=None, description="one row of raw columns")
        rows: list[dict[str, Any]] | None = Field(default=None, description="a batch of rows (see max batch)")

    class Prediction(BaseModel):
        prediction: str | float = Field(description="the class label, or the regression value")
        probabilities: list[float] | None = Field(default=None, description="per class, in the model's class order")

    class PredictResponse(BaseModel):
        model: str
        version: str
        runtime: str
        predictions: list[Prediction]
        cached: int = Field(description="rows answered from the cache")

    class ExplainRequest(BaseModel):
        model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"row": {"column": 1.0}}]})
        row: dict[str, Any] = Field(description="one row of raw columns (as for predict)")
        target_class: str = Field(
            default="", max_length=200, description="the class whose probability is explained (default: the 2nd of "
            "two, else the last); ignored for regression",
        )  # fmt: skip

    class ExplainResponse(BaseModel):
        model: str
        version: str
        explainer: str = Field(description="tree (shap's TreeExplainer) or permutation (its PermutationExplainer)")
        output: str = Field(description="what the values add up to, e.g. P(yes) or the regression target")
        base_value: float = Field(description="the output on the background")
        model_output: float = Field(description="the explained output of this row")
        values: dict[str, float] = Field(description="SHAP value per raw input column")
        additivity_error: float = Field(description="|sum of values + base value - model output|")
        background: str = Field(description="what the values are measured against")
        note: str

    errors: dict[int | str, dict[str, Any]] = {
        code: {"model": Problem, "description": text}
        for code, text in (
            (401, "no API key, or an unknown one"),
            (403, "the key is revoked or lacks the scope"),
            (429, "the key's rate limit is spent (see Retry-After)"),
        )
    }
    model_errors: dict[int | str, dict[str, Any]] = {
        **errors,
        404: {"model": Problem, "description": "no such model, alias or version (the message lists them)"},
        503: {"model": Problem, "description": "the version cannot be served (failed authentication, missing key)"},
    }

    app = FastAPI(
        title="UAAP inference API",
        version="1",
        description="Predictions from models in the MLflow registry (`uaap register`). Send `X-API-Key` "
        "(or `Authorization: Bearer`) with a key from `uaap api-keys create`.",
        lifespan=lifespan,
    )
    header_key = APIKeyHeader(name="X-API-Key", auto_error=False, description="a key from `uaap api-keys create`")
    bearer = HTTPBearer(auto_error=False, description="the same key as a bearer token")

    def require(scope: str) -> Any:
        async def check(  # async: no thread-pool hop on every request (it only reads memory and a file's stat)
            request: Request,
            token: Annotated[str | None, Security(header_key)],
            cred: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)],
        ) -> ApiKey:
            status, key = ring.check(token or (cred.credentials if cred else None))
            if status in ("missing", "unknown") or key is None:
                raise HTTPException(
                    401,
                    "missing API key: send X-API-Key (create one with `uaap api-keys create`)"
                    if status == "missing"
                    else "unknown API key: check the X-API-Key value (`uaap api-keys list` shows the ids)",
                    headers={"WWW-Authenticate": "Bearer"},
                )
            if status == "revoked":
                raise HTTPException(403, f"API key {key.id} was revoked; create a new one with `uaap api-keys create`")
            if not key.allows(scope):
                raise HTTPException(403, f"API key {key.id} lacks the {scope!r} scope (it has {', '.join(key.scopes)})")
            wait = ring.take(key)
            if wait > 0:
                raise HTTPException(
                    429,
                    f"rate limit of API key {key.id} ({key.rate_per_minute}/min) reached; retry in {wait:.1f} s",
                    headers={"Retry-After": str(max(1, math.ceil(wait)))},
                )
            return key

        return check

    Predictor = Annotated[ApiKey, Security(require("predict"))]
    Admin = Annotated[ApiKey, Security(require("admin"))]

    def lookup(spec: str) -> ServedModel:
        try:
            return models().get(spec)
        except registry.NotRegistered as exc:
            raise HTTPException(404, str(exc)) from None
        except (ModelLoadError, registry.RegistryError) as exc:
            log.error("model cannot be served", extra={"model": spec, "status": 503})
            raise HTTPException(503, str(exc)) from None

    body_limit = settings.max_body_bytes

    class BodyLimit:
        """Refuses a body past ``max_body_bytes`` as it arrives (413), also when no Content-Length announced it
        (chunked uploads would otherwise be read whole into memory)."""

        def __init__(self, inner: Any) -> None:
            self.inner = inner

        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] != "http":
                await self.inner(scope, receive, send)
                return
            seen = 0

            async def limited() -> Any:
                nonlocal seen
                message = await receive()
                if message["type"] == "http.request":
                    seen += len(message.get("body", b""))
                    if seen > body_limit:
                        raise HTTPException(413, f"request body is over the limit of {body_limit} bytes")
                return message

            await self.inner(scope, limited, send)

    app.add_middleware(BodyLimit)

    @app.exception_handler(StarletteHTTPException)
    async def unreadable_body(request: Request, exc: StarletteHTTPException) -> Response:
        """FastAPI answers a body json.loads cannot decode (not UTF-8, nested past the recursion limit) with a 400
        the OpenAPI document does not list: it is a 422 in the shape of FastAPI's malformed-JSON one."""
        cause = exc.__cause__
        if exc.status_code != 400 or exc.detail != "There was an error parsing the body" or cause is None:
            return await http_exception_handler(request, exc)
        return JSONResponse({"detail": [body_error(cause)]}, 422)

    def body_error(cause: BaseException) -> dict[str, Any]:
        if isinstance(cause, UnicodeDecodeError):
            where, error = cause.start, f"{cause.encoding}: {cause.reason}"
            byte = cause.object[cause.start]
            msg = f"the body is not valid UTF-8 (byte {byte:#04x} at offset {where}); send JSON encoded as UTF-8"
        elif isinstance(cause, RecursionError):
            where, error = 0, "too deep"
            msg = "the body's JSON nests too deep to read; send rows as flat objects"
        else:
            where, error = 0, type(cause).__name__
            msg = f"the body cannot be read as JSON ({error}); send a JSON object encoded as UTF-8"
        return {"type": "json_invalid", "loc": ["body", where], "msg": msg, "input": {}, "ctx": {"error": error}}

    def invalid(exc: RowsInvalid, one: bool) -> HTTPException:
        """The 422 of rows that do not fit; for one row (``{"row": ...}``) its index leaves the locations."""
        if one:
            for e in exc.errors:
                if len(e["loc"]) > 2 and isinstance(e["loc"][2], int):
                    del e["loc"][2]
        return HTTPException(422, exc.errors)

    @app.middleware("http")
    async def access_log(request: Request, call_next: Any) -> Response:
        start = time.perf_counter()
        given = request.headers.get("x-request-id", "")
        request_id = given if REQUEST_ID.match(given) else uuid.uuid4().hex
        request.state.request_id = request_id
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > settings.max_body_bytes:
            response: Response = JSONResponse(
                {"detail": f"request body of {length} bytes is over the limit of {settings.max_body_bytes}"}, 413
            )
        else:
            response = await call_next(request)
        seconds = time.perf_counter() - start
        route = getattr(request.scope.get("route"), "path", "unmatched")
        metrics.request(request.method, route, response.status_code, seconds)
        response.headers["X-Request-ID"] = request_id
        log.info(
            "request",
            extra={
                "request_id": request_id,
                "method": request.method,
                "route": route,
                "status": response.status_code,
                "latency_ms": round(seconds * 1000, 3),
                "model": getattr(request.state, "model", None),
                "version": getattr(request.state, "version", None),
                "rows": getattr(request.state, "rows", None),
                "cache_hits": getattr(request.state, "cache_hits", None),
            },
        )
        return response

    @app.get("/healthz", response_model=Health, tags=["ops"])
    async def healthz() -> dict[str, str]:
        """The process is up."""
        return {"status": "ok"}

    @app.get("/readyz", response_model=Ready, responses={503: {"model": Ready}}, tags=["ops"])
    def readyz() -> Any:
        """The registry answers and every preloaded model is loaded."""
        try:
            m = models()
            registry.catalogue(m.client)
        except Exception as exc:
            return JSONResponse({"status": "not ready", "errors": {"registry": type(exc).__name__}}, 503)
        loaded = {spec: m.version(*m.split(spec)) for spec in settings.preload if spec not in state["preload_errors"]}
        if state["preload_errors"]:
            return JSONResponse({"status": "not ready", "models": loaded, "errors": state["preload_errors"]}, 503)
        return {"status": "ready", "models": loaded, "errors": {}}

    @app.get(
        "/metrics",
        response_class=PlainTextResponse,
        responses={**errors, 200: {"content": {"text/plain": {}}, "description": "Prometheus text format 0.0.4"}},
        tags=["ops"],
    )
    def prometheus(key: Admin) -> PlainTextResponse:
        """Request counts, latencies, predictions and cache hits (needs the admin scope)."""
        return PlainTextResponse(metrics.render(len(cache)), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models", response_model=ModelList, responses=errors, tags=["models"])
    def list_models(key: Predictor) -> dict[str, Any]:
        """Every registered model with its aliases."""
        known = registry.catalogue(models().client)
        return {
            "models": [{"name": n, "aliases": a} for n, a in known.items()],
            "default_alias": settings.alias,
        }

    @app.get("/v1/models/{name}", response_model=ModelInfo, responses=model_errors, tags=["models"])
    def model_info(name: str, request: Request, key: Predictor) -> dict[str, Any]:
        """One model (``NAME``, ``NAME@ALIAS``, ``NAME@v3``): version, metrics, input schema, privacy epsilon."""
        model = lookup(name)
        request.state.model, request.state.version = model.name, model.version
        return {**model.info(), "alias": models().split(name)[1]}

    @app.post(
        "/v1/models/{name}/predict",
        response_model=PredictResponse,
        responses={**model_errors, 413: {"model": Problem, "description": "too many rows or too large a body"}},
        tags=["models"],
    )
    async def predict(name: str, body: PredictRequest, request: Request, key: Predictor) -> Response:
        """Predict one row (``{"row": {...}}``) or a batch (``{"rows": [...]}``) of raw columns."""
        if (body.row is None) == (body.rows is None):
            raise HTTPException(
                422,
                [
                    {
                        "loc": ["body"],
                        "msg": 'send exactly one of "row" (one row) or "rows" (a batch)',
                        "type": "value_error",
                    }
                ],
            )
        rows = [body.row] if body.row is not None else (body.rows or [])
        if len(rows) > settings.max_batch:
            raise HTTPException(
                413, f"{len(rows)} rows is over the batch limit of {settings.max_batch}; split the batch"
            )
        # the registry (sqlite or an MLflow server) is asked in a worker thread, never on the event loop
        found = models().ready(name)
        model: ServedModel = found if found is not None else await run_in_threadpool(lookup, name)
        request.state.model, request.state.version = model.name, model.version
        where = "row" if body.row is not None else "rows"
        try:
            values = model.validate(rows, where)
        except RowsInvalid as exc:
            raise invalid(exc, body.row is not None) from None
        out: list[dict[str, Any] | None] = [None] * len(values)
        misses: list[int] = []
        for i, v in enumerate(values):
            hit = cache.get((model.name, model.version, v)) if settings.cache_size > 0 else None
            if hit is None:
                misses.append(i)
            else:
                out[i] = hit
        if misses:
            try:
                fresh = model.predict([values[i] for i in misses], where, misses)
            except RowsInvalid as exc:  # inputs or outputs that are not finite: never a JSON encoding error
                raise invalid(exc, body.row is not None) from None
            for i, p in zip(misses, fresh, strict=True):
                out[i] = p
                cache.put((model.name, model.version, values[i]), p)
        hits = len(values) - len(misses)
        metrics.predicted(model.name, model.version, len(values), hits)
        request.state.rows, request.state.cache_hits = len(values), hits
        return JSONResponse(
            {
                "model": model.name,
                "version": model.version,
                "runtime": model.runtime,
                "predictions": out,
                "cached": hits,
            }
        )

    @app.post(
        "/v1/models/{name}/explain",
        response_model=ExplainResponse,
        responses={**model_errors, 413: {"model": Problem, "description": "too large a body"}},
        tags=["models"],
    )
    def explain(name: str, body: ExplainRequest, request: Request, key: Predictor) -> dict[str, Any]:
        """SHAP values of one row (``{"row": {...}}``) per raw input column, with the base value they add up from.

        The native model is explained (also where predict runs an ONNX export): shap's TreeExplainer for forests
        and boosted trees, its PermutationExplainer otherwise, against the background the response names.
        """
        model = lookup(name)  # a sync endpoint: FastAPI runs it in a worker thread (SHAP takes a while)
        request.state.model, request.state.version = model.name, model.version
        try:
            (values,) = model.validate([body.row], "row")
        except RowsInvalid as exc:
            raise invalid(exc, True) from None
        try:
            found = model.explain(values, body.target_class)
        except RowsInvalid as exc:
            raise invalid(exc, True) from None
        except NotExplainable as exc:
            raise HTTPException(
                422, [{"loc": ["body", "target_class"], "msg": str(exc), "type": "value_error"}]
            ) from None
        except ModelLoadError as exc:
            raise HTTPException(503, str(exc)) from None
        request.state.rows = 1
        return {"model": model.name, "version": model.version, **found}

    return app
