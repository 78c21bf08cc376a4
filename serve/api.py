"""The HTTP API of an ingress replica (FastAPI, OpenAPI at /docs and /openapi.json), without Ray:
tests run it with fake Generator / Scorer handles.

POST /v1/instruments                    202 {id, status_url, seed, status}; 200 when already done
POST /v1/instruments/{id}/regenerate    a new instrument: the chosen notes rendered again, the rest copied
GET  /v1/instruments/{id}               queued | running | stale | done | failed, progress, results
GET  /v1/instruments/{id}/files/{path}  the instrument's notes, presets, zip (ranges, ETag)
GET  /v1/library                        the batch library's index: ?text= &sort= &order= &limit= &offset=
GET  /v1/library/{id}[/files/{path}]    a library instrument, answered and served like a served one
GET  /v1/info                           limits and vocabulary for clients and the page
GET  /healthz, /                        liveness; the audition page (serve/static)

Every error is `schema.ErrorBody` {error, field, detail} and is declared in the OpenAPI document.
"""

import asyncio  # no `from __future__ import annotations`: FastAPI must see the request model's class
import hmac
import json
from pathlib import Path
from typing import Literal

from fastapi import FastAPI, Query, Request, Security
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from instrumentgen.config import Config
from instrumentgen.errors import UserError
from instrumentgen.instruments import library_view
from instrumentgen.instruments.manifest import InstrumentManifest
from instrumentgen.vocab import FAMILIES, PITCH_MAX, PITCH_MIN, SOURCES, VELOCITIES
from serve.files import MEDIA_TYPES, file_response
from serve.instruments import REFERENCE_RATES_HZ, UPLOAD_FIELD, Busy, Instruments, NotFound, NotReady
from serve.schema import (
    ErrorBody,
    RegenerateRequest,
    RequestError,
    error_body,
    http_error,
    request_model,
    user_error,
    validation_error,
)
from serve.store import ID_PATTERN, StatusStore, results

CUES = ("prompt", "reference_audio_url", "family", "source")
UPLOAD_PLACEHOLDER = "https://upload.invalid/reference"  # validates an upload's other fields; never fetched
LIBRARY_ID_PATTERN = r"^[0-9a-f]{8,64}$"

STATIC_DIR = Path(__file__).with_name("static")
FILE_PATHS = (
    "notes/<pitch>_v<velocity>.<ext>, instrument.sfz, instrument.dspreset, instrument.sf2, "
    "instrument.zip, codes.npy, manifest.json, status.json"
)


def errors(*codes: int) -> dict:
    """OpenAPI `responses` entries of the given error statuses, all `ErrorBody`."""
    reasons = {
        400: "the body is not JSON",
        401: "missing or unknown API key",
        404: "no such instrument or file",
        413: "the body is larger than serve.max_body_bytes",
        409: "the instrument is not done (or not of this deployment's model)",
        416: "the range is outside the file",
        422: "a field is invalid",
        503: "too many instruments in flight; see Retry-After",
    }
    return {code: {"model": ErrorBody, "description": reasons[code]} for code in codes}


def json_error(status: int, field: str, message: str, headers: dict | None = None) -> JSONResponse:
    """An `ErrorBody` answer."""
    return JSONResponse(error_body(field, message), status_code=status, headers=headers)


class BodyLimit:
    """ASGI middleware: 413 for a body over `limit` bytes, by Content-Length or while reading a chunked
    body (never read whole first); the body read is replayed to the app."""

    def __init__(self, app, limit: int, upload_limit: int = 0):
        self.app, self.limit, self.upload_limit = app, limit, upload_limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        kind = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
        upload = scope["path"] == "/v1/instruments" and kind == b"multipart/form-data"
        limit = self.limit + self.upload_limit if upload else self.limit
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            shown = length.decode("latin-1")[:20]
            return await self._refuse(f"the body has {shown} bytes", limit, scope, receive, send)
        if length is not None or scope["method"] not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > limit:
                return await self._refuse(f"the body is larger than {limit} bytes", limit, scope, receive, send)
            if not message.get("more_body"):
                break
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        return await self.app(scope, replay, send)

    async def _refuse(self, what: str, limit: int, scope, receive, send):
        setting = "serve.max_body_bytes" if limit == self.limit else "serve.max_upload_bytes + serve.max_body_bytes"
        message = f"{what}; allowed: at most {limit} bytes ({setting})"
        await json_error(413, "body", message)(scope, receive, send)


def validated(model, raw: bytes | str):
    """`model` from JSON text, or the `RequestValidationError` FastAPI would raise for it."""
    try:
        return model.model_validate_json(raw)
    except ValidationError as e:
        raise RequestValidationError(e.errors(include_url=False, include_input=False)) from None


async def read_upload(request: Request, model, cfg: Config):
    """(the request's other fields as `model`, the uploaded bytes) of a multipart POST; the body's size was
    bounded while it was read (`BodyLimit`), the file's again here, so the file is never read past it."""
    limit = cfg.serve.max_upload_bytes
    try:
        form = await request.form(max_files=1, max_fields=1, max_part_size=cfg.serve.max_body_bytes)
        unknown = sorted(set(form) - {UPLOAD_FIELD, "request"})
    except StarletteHTTPException:
        raise
    except Exception as e:  # not multipart at all: no boundary, a broken part
        raise RequestError("body", f"the multipart body cannot be read ({e}); allowed: multipart/form-data") from None
    if unknown:
        raise RequestError(unknown[0], f"not a field of an upload; allowed: {UPLOAD_FIELD}, request")
    file = form.get(UPLOAD_FIELD)
    if file is None or isinstance(file, str):
        raise RequestError(UPLOAD_FIELD, f"no file in field {UPLOAD_FIELD!r}; allowed: one WAV, FLAC or OGG file")
    data = await file.read(limit + 1)
    if len(data) > limit:
        raise RequestError(
            UPLOAD_FIELD,
            f"the file is larger than {limit} bytes; allowed: at most {limit} bytes (serve.max_upload_bytes)",
        )
    settings = form.get("request") or "{}"
    try:
        fields = json.loads(settings)
    except (TypeError, ValueError):
        raise RequestError("request", "not a JSON object; allowed: the JSON fields of /openapi.json, no cue") from None
    if not isinstance(fields, dict):
        raise RequestError("request", "not a JSON object; allowed: the JSON fields of /openapi.json, no cue")
    cues = sorted(set(fields) & set(CUES))
    if cues:
        raise RequestError(
            "request", f"{', '.join(cues)} given with an uploaded file; allowed: the file as the only cue"
        )
    return validated(model, json.dumps({**fields, "reference_audio_url": UPLOAD_PLACEHOLDER})), data


def publish_model(api: FastAPI, model) -> None:
    """Put `model` (and the models it uses) in the OpenAPI components, for a route that reads its own body."""
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    nested = schema.pop("$defs", {})
    build = api.openapi

    settings = {k: v for k, v in schema.items() if k not in ("oneOf", "examples")}
    settings["properties"] = {k: v for k, v in schema["properties"].items() if k not in CUES}
    settings["description"] = "the fields of a JSON request but the cue: the uploaded file is the cue"

    def openapi() -> dict:
        if api.openapi_schema is None:
            document = build()
            components = document.setdefault("components", {}).setdefault("schemas", {})
            components.update({model.__name__: schema, "UploadSettings": settings, **nested})
        return api.openapi_schema

    api.openapi = openapi


def add_errors(api: FastAPI) -> None:
    """Every exception an answer can end in, as `ErrorBody`."""
    api.add_exception_handler(RequestValidationError, validation_error)
    api.add_exception_handler(UserError, user_error)
    api.add_exception_handler(StarletteHTTPException, http_error)

    @api.exception_handler(NotFound)
    async def not_found(request: Request, exc: NotFound) -> JSONResponse:
        return json_error(404, exc.field, exc.message)

    @api.exception_handler(NotReady)
    async def not_ready(request: Request, exc: NotReady) -> JSONResponse:
        return json_error(409, exc.field, exc.message)

    @api.exception_handler(Busy)
    async def busy(request: Request, exc: Busy) -> JSONResponse:
        return json_error(503, "body", exc.reason, {"Retry-After": str(exc.retry_after_s)})


def auth_dependency(keys: list[str]):
    """The dependency that answers 401 without one of `keys` (X-API-Key or Authorization: Bearer);
    declared as two OpenAPI security schemes. No keys: nothing is required."""
    api_key, bearer = APIKeyHeader(name="X-API-Key", auto_error=False), HTTPBearer(auto_error=False)

    async def authorised(
        key: str | None = Security(api_key), token: HTTPAuthorizationCredentials | None = Security(bearer)
    ) -> None:
        given = key or (token.credentials if token else "")
        if not any(hmac.compare_digest(given.encode(), k.encode()) for k in keys):
            raise StarletteHTTPException(
                401,
                "missing or unknown API key; allowed: 'Authorization: Bearer <key>' or 'X-API-Key: <key>'",
                headers={"WWW-Authenticate": "Bearer"},
            )

    return [Security(authorised)] if keys else []


def add_instrument_routes(api: FastAPI, instruments: Instruments, cfg: Config, auth: list) -> None:
    """POST an instrument, GET its status."""
    Body = request_model(cfg)

    multipart = {
        "schema": {
            "type": "object",
            "required": [UPLOAD_FIELD],
            "properties": {
                UPLOAD_FIELD: {
                    "type": "string",
                    "format": "binary",
                    "description": f"the cue: a WAV, FLAC or OGG recording, at most {cfg.serve.max_upload_bytes} "
                    f"bytes and {cfg.serve.max_upload_seconds} s, {REFERENCE_RATES_HZ[0]} .. "
                    f"{REFERENCE_RATES_HZ[1]} Hz",
                },
                "request": {"$ref": "#/components/schemas/UploadSettings"},
            },
            "additionalProperties": False,
        },
        "encoding": {"request": {"contentType": "application/json"}},
    }
    body_schema = {"$ref": f"#/components/schemas/{Body.__name__}"}

    @api.post(
        "/v1/instruments",
        status_code=202,
        dependencies=auth,
        responses={200: {"description": "the same request was already done"}, **errors(400, 401, 413, 422, 503)},
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": body_schema}, "multipart/form-data": multipart},
            }
        },
    )
    async def create(request: Request) -> JSONResponse:
        """A JSON body, or multipart/form-data with an uploaded recording as the cue."""
        kind = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
        if kind == "multipart/form-data":
            body, upload = await read_upload(request, Body, cfg)
        elif kind == "application/json" or kind.endswith("+json"):
            body, upload = validated(Body, await request.body()), None
        else:
            message = f"content type {kind!r} is not accepted; allowed: application/json, multipart/form-data"
            return json_error(422, "content-type", message)
        code, answer = await instruments.submit(body, upload)
        return JSONResponse(answer, status_code=code)

    publish_model(api, Body)

    @api.post(
        "/v1/instruments/{instrument}/regenerate",
        status_code=202,
        dependencies=auth,
        responses={
            200: {"description": "the same request was already done"},
            **errors(400, 401, 404, 409, 413, 422, 503),
        },
    )
    async def regenerate(body: RegenerateRequest, instrument: str = PathParam(pattern=ID_PATTERN)) -> JSONResponse:
        """A new instrument whose notes are the parent's but for the chosen keys / velocity layers, rendered
        again with `seed`; its manifest names the parent (`parent`) and the slots (`regenerated`)."""
        code, answer = await instruments.regenerate(instrument, body)
        return JSONResponse(answer, status_code=code)

    @api.get("/v1/instruments/{instrument}", dependencies=auth, responses=errors(401, 404, 422))
    async def status(instrument: str = PathParam(pattern=ID_PATTERN)) -> JSONResponse:
        found = await asyncio.to_thread(instruments.store.status, instrument)
        if found is None:
            return json_error(404, "id", f"no instrument {instrument}; allowed: an id from POST /v1/instruments")
        return JSONResponse(found)


def file_responses() -> dict:
    """The OpenAPI answers of a files route."""
    content = {
        media.split(";")[0]: {"schema": {"type": "string", "format": "binary"}} for media in MEDIA_TYPES.values()
    }
    return {
        200: {"description": "the whole file", "content": content},
        206: {"description": "the requested byte range", "content": content},
        304: {"description": "not modified (If-None-Match)"},
        **errors(401, 404, 416, 422),
    }


def file_route(api: FastAPI, route: str, auth: list):
    """The GET decorator of `<route>/{instrument}/files/{path}` (its documented answers included)."""
    return api.get(
        f"{route}/{{instrument}}/files/{{path:path}}",
        dependencies=auth,
        response_class=JSONResponse,
        responses=file_responses(),
    )


async def stored_file(
    request: Request, store: StatusStore | None, instrument: str, path: str, not_found: tuple[str, str]
) -> Response:
    """The file `path` of `instrument` in `store` for `request`, or a 404 naming `not_found` (field,
    message) when there is no store or no such file. The route's `$` lets a path end in a newline:
    only the exact path is served."""
    exact = request.scope["path"].endswith(f"/{instrument}/files/{path}")
    url = await asyncio.to_thread(store.file_url, instrument, path) if exact and store is not None else None
    if url is None:
        return json_error(404, *not_found)
    return await file_response(request, url, await asyncio.to_thread(store.is_done, instrument))


def add_file_routes(api: FastAPI, instruments: Instruments, auth: list) -> None:
    """An instrument's files, and nothing else of storage."""

    @file_route(api, "/v1/instruments", auth)
    async def files(request: Request, instrument: str, path: str):
        missing = f"{path!r} is not a file of instrument {instrument!r}; allowed: {FILE_PATHS}"
        return await stored_file(request, instruments.store, instrument, path, ("path", missing))


def add_library_routes(api: FastAPI, cfg: Config, auth: list) -> None:
    """The batch library at `serve.library`: its index (filtered, sorted, paged) and its instruments."""
    store = StatusStore(cfg.serve.library, cfg.serve.stale_after_s, LIBRARY_ID_PATTERN) if cfg.serve.library else None
    unset = "no library is configured here; allowed: set serve.library to the out folder of jobs.render"

    @api.get("/v1/library", dependencies=auth, responses=errors(401, 404, 422))
    async def library(
        text: str = Query("", max_length=200, description="case-insensitive substring of the prompt or name"),
        sort: Literal[library_view.SORT_KEYS] | None = Query(None, description="the score to sort by; none: by id"),
        order: Literal[library_view.ORDERS] = Query("desc"),
        limit: int = Query(50, ge=1, le=500),
        offset: int = Query(0, ge=0),
    ) -> JSONResponse:
        """The library's instruments from its index.parquet; each entry links its status and files."""
        if store is None:
            return json_error(404, "library", unset)
        rows = await asyncio.to_thread(library_view.read_rows, store.root)
        answer = library_view.query(rows, text, sort, order, limit, offset)
        for entry in answer["entries"]:
            entry["status_url"] = f"/v1/library/{entry['id']}"
            entry["files"] = f"/v1/library/{entry['id']}/files"
        return JSONResponse(answer)

    @api.get("/v1/library/{instrument}", dependencies=auth, responses=errors(401, 404, 422))
    async def instrument(instrument: str = PathParam(pattern=LIBRARY_ID_PATTERN)) -> JSONResponse:
        if store is None:
            return json_error(404, "library", unset)
        if not await asyncio.to_thread(store.is_done, instrument):
            return json_error(
                404, "id", f"no instrument {instrument} in the library; allowed: an id of GET /v1/library"
            )
        manifest = await asyncio.to_thread(InstrumentManifest.read, store.url(instrument))
        found = results(instrument, manifest, f"/v1/library/{instrument}/files")
        extra = {k: manifest.about.get(k) for k in ("name", "prompt", "family", "source", "clap_score", "quality")}
        return JSONResponse({**found, **extra, "status": "done"})

    @file_route(api, "/v1/library", auth)
    async def files(request: Request, instrument: str, path: str):
        missing = f"{path!r} is not a file of library instrument {instrument!r}; allowed: {FILE_PATHS}"
        not_found = ("library", unset) if store is None else ("path", missing)
        return await stored_file(request, store, instrument, path, not_found)


def add_info_routes(api: FastAPI, instruments: Instruments, cfg: Config, keys: list[str]) -> None:
    """What clients and the page read first; liveness; the page."""

    @api.get("/v1/info")
    async def info() -> dict:
        return {
            "families": FAMILIES,
            "sources": SOURCES,
            "velocities": VELOCITIES,
            "keys": [PITCH_MIN, PITCH_MAX],
            "max_candidates": cfg.serve.max_candidates,
            "max_prompt_chars": cfg.serve.max_prompt_chars,
            "api_key_required": bool(keys),
            "note_duration_s": cfg.data.note_duration_s,
        }

    @api.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok", "in_flight": len(instruments.runner.tasks)}

    @api.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html")

    api.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")


def build_api(instruments: Instruments, cfg: Config, keys: list[str]) -> FastAPI:
    """The HTTP routes of one ingress replica, bound to its `Instruments`."""
    api = FastAPI(
        title="InstrumentGen",
        version="1",
        description="Text-to-instrument generation: POST a cue, "
        "GET the status, then the notes, SFZ / DecentSampler presets and a zip bundle.",
    )
    api.add_middleware(BodyLimit, limit=cfg.serve.max_body_bytes, upload_limit=cfg.serve.max_upload_bytes)
    add_errors(api)
    auth = auth_dependency(keys)
    add_instrument_routes(api, instruments, cfg, auth)
    add_file_routes(api, instruments, auth)
    add_library_routes(api, cfg, auth)
    add_info_routes(api, instruments, cfg, keys)
    return api
