"""The HTTP API's request model and its errors: every invalid field is a 422 naming the field and what is allowed.

The request model is built from the config (`request_model(cfg)`), so the limits a deployment
sets (`serve.max_prompt_chars`, `serve.max_candidates`, the model's codebook size) are the
constraints of its OpenAPI schema at `/openapi.json`, which clients and fuzzers read.
"""

from __future__ import annotations

from typing import Literal

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from starlette.exceptions import HTTPException as StarletteHTTPException

from instrumentgen.audio import AUDIO_FORMATS
from instrumentgen.config import Config
from instrumentgen.errors import UserError
from instrumentgen.vocab import FAMILIES, PITCH_MAX, PITCH_MIN, SOURCES, VELOCITIES

SEED_MAX = 2**32 - 1  # per-note streams mix 32-bit seeds
REFERENCE_SCHEMES = ("http://", "https://", "s3://")  # never file paths of the server itself
CUE_FIELDS = "prompt, reference_audio_url, or family/source"
ALLOWED_CONTEXT = ("ge", "le", "gt", "lt", "min_length", "max_length", "expected", "pattern")  # pydantic's limits


def velocity_layers(velocities: list[int]) -> list[int]:
    """Requested velocities -> the sorted layers; ValueError naming unknown or repeated ones."""
    unknown = [v for v in velocities if v not in VELOCITIES]
    if unknown:
        raise ValueError(f"velocities {unknown} are not velocity layers; allowed: {list(VELOCITIES)}")
    if len(set(velocities)) != len(velocities):
        raise ValueError(f"velocities repeat a layer; allowed: distinct values of {list(VELOCITIES)}")
    return sorted(velocities)


class RequestError(UserError):
    """A request the API refuses with 422; `field` names the offending field."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field, self.message = field, message


def _ordered_keys_schema() -> dict:
    """low <= high in JSON Schema (which cannot compare two fields): some key k with low <= k <= high,
    one branch per key (a bound left out is its default, the lowest or highest key)."""
    keys = range(PITCH_MIN, PITCH_MAX + 1)
    return {"anyOf": [{"properties": {"low": {"maximum": k}, "high": {"minimum": k}}} for k in keys]}


# Exactly one cue, as JSON Schema: a fuzzer reading /openapi.json generates only requests the server accepts.
ONE_CUE_SCHEMA = {
    "oneOf": [
        {"required": ["prompt"]},
        {"required": ["reference_audio_url"]},
        {"anyOf": [{"required": ["family"]}, {"required": ["source"]}]},
    ]
}


def _not_null(schema: dict) -> None:
    """Optional fields are omitted, never null: their schema is the type alone (null gets a 422)."""
    for prop in schema.get("properties", {}).values():
        variants = prop.pop("anyOf", None)
        if variants is not None:
            prop.update(next(v for v in variants if v.get("type") != "null"))
            if "default" in prop and prop["default"] is None:
                del prop["default"]


def _whole(value):
    """JSON Schema counts 3.0 as an integer: a float without a fraction is taken as that integer."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, list):
        return [_whole(v) for v in value]
    return value


class KeyRange(BaseModel):
    """The instrument's keys: MIDI low..high, both included."""

    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra=_ordered_keys_schema())
    low: int = Field(PITCH_MIN, ge=PITCH_MIN, le=PITCH_MAX, description="lowest MIDI key")
    high: int = Field(PITCH_MAX, ge=PITCH_MIN, le=PITCH_MAX, description="highest MIDI key")

    _integers = field_validator("low", "high", mode="before")(_whole)

    @model_validator(mode="after")
    def _ordered(self) -> "KeyRange":
        if self.low > self.high:
            raise ValueError(
                f"keys.low={self.low} is above keys.high={self.high}; "
                f"allowed: {PITCH_MIN} <= low <= high <= {PITCH_MAX}"
            )
        return self


def _request_schema(schema: dict) -> None:
    _not_null(schema)
    schema.update(ONE_CUE_SCHEMA)
    schema["examples"] = [
        {"prompt": "warm analog brass", "seed": 7, "keys": {"low": 48, "high": 72}, "velocities": [50, 100]}
    ]


def request_model(cfg: Config) -> type[BaseModel]:
    """The POST /v1/instruments body, with this deployment's limits."""
    limits, defaults = cfg.serve, cfg.generate

    class InstrumentRequest(BaseModel):
        """Exactly one cue (prompt, reference_audio_url, or family/source) and optional generation settings."""

        model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra=_request_schema)
        prompt: str | None = Field(
            None,
            min_length=1,
            max_length=limits.max_prompt_chars,
            description="text description of the timbre (not blank)",
            json_schema_extra={"pattern": r"\S"},
        )
        reference_audio_url: str | None = Field(
            None,
            min_length=8,
            max_length=2048,
            pattern=r"^(https?|s3)://[^\s]+$",
            description=f"a recording to imitate ({', '.join(REFERENCE_SCHEMES)}; at most "
            f"{limits.max_reference_bytes} bytes and {limits.max_reference_seconds} s)",
        )
        family: Literal[FAMILIES] | None = Field(None, description="NSynth instrument family")
        source: Literal[SOURCES] | None = Field(None, description="NSynth instrument source")
        seed: int | None = Field(None, ge=0, le=SEED_MAX, description="drawn and reported when omitted")
        cfg_coef: float = Field(defaults.cfg_coef, ge=0.0, le=20.0, description="classifier-free guidance")
        top_k: int = Field(defaults.top_k, ge=0, le=cfg.model.card, description="0: the whole vocabulary")
        temperature: float = Field(defaults.temperature, ge=0.0, le=10.0, description="0: greedy")
        keys: KeyRange = Field(default_factory=KeyRange)
        velocities: list[int] = Field(
            list(VELOCITIES),
            min_length=1,
            max_length=len(VELOCITIES),
            description=f"velocity layers, each at most once, of {list(VELOCITIES)}",
            json_schema_extra={"items": {"type": "integer", "enum": list(VELOCITIES)}, "uniqueItems": True},
        )
        candidates: int = Field(
            1, ge=1, le=limits.max_candidates, description="k > 1: k candidates per note, the most consistent kept"
        )
        format: Literal[tuple(AUDIO_FORMATS)] = Field("wav24", description="audio format of the notes")

        @field_validator("prompt", "reference_audio_url", "family", "source", "seed", mode="before")
        @classmethod
        def _omitted_not_null(cls, value):
            if value is None:
                raise ValueError("null is not a value here; allowed: leave the field out")
            return value

        _integers = field_validator("seed", "top_k", "candidates", "velocities", mode="before")(_whole)

        @field_validator("prompt")
        @classmethod
        def _prompt_has_words(cls, prompt: str | None) -> str | None:
            if prompt is not None and not prompt.strip():
                raise ValueError("prompt is blank; allowed: a description such as 'warm analog brass'")
            return prompt if prompt is None else " ".join(prompt.split())

        @field_validator("velocities")
        @classmethod
        def _layers(cls, velocities: list[int]) -> list[int]:
            return velocity_layers(velocities)

        @model_validator(mode="after")
        def _one_cue(self) -> "InstrumentRequest":
            given = [name for name in ("prompt", "reference_audio_url") if getattr(self, name) is not None]
            if self.family is not None or self.source is not None:
                given.append("family/source")
            if len(given) != 1:
                raise ValueError(
                    f"the request gives {' and '.join(given) or 'no cue'}; allowed: exactly one of {CUE_FIELDS}"
                )
            return self

    return InstrumentRequest


class ErrorDetail(BaseModel):
    """One problem with a request: the field, what is wrong, and the limits pydantic reports."""

    field: str
    message: str
    allowed: dict | None = None


class ErrorBody(BaseModel):
    """Every 4xx and 5xx answer: `error` is one line naming the field and what is allowed."""

    error: str
    field: str
    detail: list[ErrorDetail]


def error_body(field: str, message: str, details: list[dict] | None = None) -> dict:
    """The JSON of every 4xx answer: one line naming the field, and the details behind it."""
    return {"error": f"{field}: {message}", "field": field, "detail": details or [{"field": field, "message": message}]}


def _field(location: tuple) -> str:
    parts = [str(part) for part in location if part != "body"]
    return ".".join(parts) or "body"


async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    """FastAPI's validation errors as `error_body`: field path, message (without pydantic's "Value error,"
    prefix), allowed values (from pydantic's context); a body that is not JSON at all is a 400."""
    errors = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        reason = next(e for e in errors if e.get("type") == "json_invalid").get("ctx", {}).get("error", "")
        message = f"the body is not valid JSON ({reason}); allowed: a JSON object as in /openapi.json"
        return JSONResponse(error_body("body", message.replace(" ()", "")), status_code=400)
    details = [
        {
            "field": _field(tuple(e.get("loc", ()))),
            "message": str(e.get("msg", "invalid")).removeprefix("Value error, "),
            "allowed": {k: v for k, v in e.get("ctx", {}).items() if k in ALLOWED_CONTEXT},
        }
        for e in errors
    ]
    first = details[0] if details else {"field": "body", "message": "invalid request"}
    return JSONResponse(error_body(first["field"], first["message"], details), status_code=422)


async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    """Starlette's own answers (unknown route, method, unparsable body) in the same `error_body`."""
    status = exc.status_code
    if status == 404:
        field, message = "path", f"no route {request.url.path!r}; allowed: the paths of /openapi.json"
    elif status == 401:
        field, message = "authorization", str(exc.detail)
    elif status == 405:
        allowed = (exc.headers or {}).get("Allow", "")
        field, message = "method", f"{request.method} is not allowed on {request.url.path!r}; allowed: {allowed}"
    else:
        field, message = "body", f"{exc.detail}; allowed: a UTF-8 JSON object as in /openapi.json"
    return JSONResponse(error_body(field, message), status_code=status, headers=exc.headers)


async def user_error(request: Request, exc: UserError) -> JSONResponse:
    """Any `UserError` raised while answering (bad reference audio, a prompt for a metadata model): 422."""
    field = exc.field if isinstance(exc, RequestError) else "body"
    message = exc.message if isinstance(exc, RequestError) else str(exc)
    return JSONResponse(error_body(field, message), status_code=422)


def _regenerate_schema(schema: dict) -> None:
    _not_null(schema)  # replaces the optional lists' schema by the array variant: their item limits again
    schema["properties"]["keys"]["items"] = {"type": "integer", "minimum": PITCH_MIN, "maximum": PITCH_MAX}
    schema["properties"]["velocities"]["items"] = {"type": "integer", "enum": list(VELOCITIES)}
    schema["anyOf"] = [{"required": ["keys"]}, {"required": ["velocities"]}]
    schema["examples"] = [{"keys": [60, 61], "seed": 3}]


class RegenerateRequest(BaseModel):
    """The notes of a done instrument to render again: `keys` (all its layers of those keys), `velocities`
    (those layers of all its keys) or both (those layers of those keys); every other note is copied."""

    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra=_regenerate_schema)
    keys: list[int] | None = Field(
        None,
        min_length=1,
        max_length=PITCH_MAX - PITCH_MIN + 1,
        description=f"MIDI keys of the parent, each at most once, {PITCH_MIN}..{PITCH_MAX}",
        json_schema_extra={
            "items": {"type": "integer", "minimum": PITCH_MIN, "maximum": PITCH_MAX},
            "uniqueItems": True,
        },
    )
    velocities: list[int] | None = Field(
        None,
        min_length=1,
        max_length=len(VELOCITIES),
        description=f"velocity layers of the parent, each at most once, of {list(VELOCITIES)}",
        json_schema_extra={"items": {"type": "integer", "enum": list(VELOCITIES)}, "uniqueItems": True},
    )
    seed: int | None = Field(
        None, ge=0, le=SEED_MAX, description="drawn and reported when omitted; same body, same child"
    )

    @field_validator("keys", "velocities", "seed", mode="before")
    @classmethod
    def _omitted_not_null(cls, value):
        if value is None:
            raise ValueError("null is not a value here; allowed: leave the field out")
        return _whole(value)

    @field_validator("keys")
    @classmethod
    def _keys(cls, keys: list[int] | None) -> list[int] | None:
        if keys is None:
            return keys
        outside = [k for k in keys if not PITCH_MIN <= k <= PITCH_MAX]
        if outside:
            raise ValueError(f"keys {outside} are not piano keys; allowed: {PITCH_MIN}..{PITCH_MAX}")
        if len(set(keys)) != len(keys):
            raise ValueError("keys repeat a key; allowed: distinct keys")
        return sorted(keys)

    @field_validator("velocities")
    @classmethod
    def _layers(cls, velocities: list[int] | None) -> list[int] | None:
        if velocities is None:
            return velocities
        return velocity_layers(velocities)

    @model_validator(mode="after")
    def _some_notes(self) -> "RegenerateRequest":
        if self.keys is None and self.velocities is None:
            raise ValueError("the request names no notes; allowed: keys and/or velocities")
        return self
