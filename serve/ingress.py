"""Ingress deployment: the FastAPI app (OpenAPI at /docs), API keys, body limit, the page at /.

POST /v1/instruments                    202 {id, status_url, seed, status}; 200 when already done
GET  /v1/instruments/{id}               queued | running | done | failed, progress, results
GET  /v1/instruments/{id}/files/{path}  the instrument's notes, presets, zip (nothing else)
GET  /v1/info                           limits and vocabulary for clients and the page
GET  /healthz, /                        liveness; the audition page (serve/static)
"""

import asyncio
import hmac
import os
from pathlib import Path

from fastapi import Depends, FastAPI, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from ray import serve

from instrumentgen import storage
from instrumentgen.config import Config
from instrumentgen.errors import UserError
from instrumentgen.vocab import FAMILIES, PITCH_MAX, PITCH_MIN, SOURCES, VELOCITIES
from serve.instruments import ID_PATTERN, Busy, InstrumentService
from serve.schema import error_body, request_model, user_error, validation_error

STATIC_DIR = Path(__file__).with_name("static")
API_KEYS_ENV = "INSTRUMENTGEN_API_KEYS"  # comma-separated; added to serve.api_keys
MEDIA_TYPES = {
    ".wav": "audio/wav",
    ".flac": "audio/flac",
    ".zip": "application/zip",
    ".json": "application/json",
    ".sfz": "text/plain; charset=utf-8",
    ".dspreset": "application/xml",
    ".npy": "application/octet-stream",
}
CHUNK_BYTES = 1 << 20


class Unauthorised(Exception):
    """No valid API key on a /v1 route that needs one: 401."""


def api_keys(cfg: Config) -> list[str]:
    """The accepted keys: `serve.api_keys` and those of $INSTRUMENTGEN_API_KEYS (empty: no key needed)."""
    extra = [key.strip() for key in os.environ.get(API_KEYS_ENV, "").split(",") if key.strip()]
    return [*cfg.serve.api_keys, *extra]


def _json_error(status: int, field: str, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse(error_body(field, message), status_code=status, headers=headers)


async def _stream(url: str):
    """A stored file in chunks: a zip bundle of a full instrument is hundreds of MB."""
    fs, path = storage.filesystem(url)
    f = await asyncio.to_thread(fs.open, path, "rb")
    try:
        while chunk := await asyncio.to_thread(f.read, CHUNK_BYTES):
            yield chunk
    finally:
        f.close()


def build_api(service: InstrumentService, cfg: Config, keys: list[str]) -> FastAPI:
    """The HTTP routes of one ingress replica, bound to its `InstrumentService`."""
    api = FastAPI(
        title="InstrumentGen",
        version="1",
        description="Text-to-instrument generation: POST a cue, "
        "GET the status, then the notes, SFZ / DecentSampler presets and a zip bundle.",
    )
    Body = request_model(cfg)
    limit = cfg.serve.max_body_bytes
    api.add_exception_handler(RequestValidationError, validation_error)
    api.add_exception_handler(UserError, user_error)

    @api.exception_handler(Busy)
    async def busy(request: Request, exc: Busy) -> JSONResponse:
        return _json_error(503, "body", exc.reason, {"Retry-After": str(exc.retry_after_s)})

    @api.middleware("http")
    async def body_limit(request: Request, call_next):
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            return _json_error(
                413, "body", f"the body has {length} bytes; allowed: at most {limit} (serve.max_body_bytes)"
            )
        if length is None and request.method in ("POST", "PUT", "PATCH") and len(await request.body()) > limit:
            return _json_error(413, "body", f"the body is larger than {limit} bytes; allowed: at most {limit}")
        return await call_next(request)

    def authorised(request: Request) -> None:
        if not keys:
            return
        given = request.headers.get("x-api-key") or request.headers.get("authorization", "").removeprefix("Bearer ")
        if not any(hmac.compare_digest(given.encode(), key.encode()) for key in keys):
            raise Unauthorised()

    @api.exception_handler(Unauthorised)
    async def unauthorised(request: Request, exc: Unauthorised) -> JSONResponse:
        return _json_error(
            401,
            "authorization",
            "missing or unknown API key; allowed: 'Authorization: Bearer <key>' or 'X-API-Key: <key>'",
            {"WWW-Authenticate": "Bearer"},
        )

    @api.post(
        "/v1/instruments",
        status_code=202,
        dependencies=[Depends(authorised)],
        responses={
            200: {"description": "the same request was already done"},
            401: {},
            413: {},
            422: {},
            503: {"description": "too many instruments in flight; see Retry-After"},
        },
    )
    async def create(body: Body) -> JSONResponse:  # type: ignore[valid-type]  (no postponed annotations here: FastAPI must see the class)
        code, answer = await service.submit(body)
        return JSONResponse(answer, status_code=code)

    @api.get("/v1/instruments/{instrument}", dependencies=[Depends(authorised)], responses={404: {}})
    async def status(instrument: str = PathParam(pattern=ID_PATTERN)) -> JSONResponse:
        found = await asyncio.to_thread(service.status, instrument)
        if found is None:
            return _json_error(404, "id", f"no instrument {instrument}; allowed: an id from POST /v1/instruments")
        return JSONResponse(found)

    @api.get("/v1/instruments/{instrument}/files/{path:path}", dependencies=[Depends(authorised)], responses={404: {}})
    async def files(instrument: str, path: str):
        url = await asyncio.to_thread(service.file_url, instrument, path)
        if url is None:
            return _json_error(
                404,
                "path",
                f"{path!r} is not a file of instrument {instrument!r}; allowed: "
                "notes/<pitch>_v<velocity>.<ext>, instrument.sfz, instrument.dspreset, "
                "instrument.zip, codes.npy, manifest.json, status.json",
            )
        media = MEDIA_TYPES.get(Path(path).suffix, "application/octet-stream")
        return StreamingResponse(_stream(url), media_type=media)

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
        return {"status": "ok", "in_flight": len(service.tasks)}

    @api.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html")

    api.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return api


@serve.deployment
@serve.ingress()
class Ingress:
    """The HTTP entry: validates, answers at once, runs each instrument as a background task that fans
    shards out to the Generator deployment and hands the gathered results to the Scorer."""

    def __init__(self, generator, scorer, cfg: Config):
        self.cfg = cfg
        self.service = InstrumentService(cfg, generator, scorer)

    def __serve_build_asgi_app__(self) -> FastAPI:
        return build_api(self.service, self.cfg, api_keys(self.cfg))

    async def __del__(self):
        await self.service.shutdown()
