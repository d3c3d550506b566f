"""The capture API (``/v1``): consents, objections, erasure requests and the decision a sending
tool asks for before every message. Authenticated by API key (``Authorization: Bearer``), scoped
and rate-limited per key, separate from the console's logins; documented at ``/v1/docs``."""

# No "from __future__ import annotations": FastAPI reads the annotations of the routes defined
# inside create_app at run time, and postponed ones would name locals it cannot see.
import json
import math
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Annotated, Any, Literal

import structlog
from fastapi import BackgroundTasks, Depends, FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from pydantic import AwareDatetime, BaseModel, BeforeValidator, ConfigDict, Discriminator, Field, Tag

from consentsync.domain import InvalidInput
from consentsync.hub import keys
from consentsync.hub.bodylimit import BodyLimit
from consentsync.hub.capture import (
    BATCH_MAX,
    Conflict,
    ConsentCapture,
    ErasedAddress,
    ErasedRequest,
    Forbidden,
    Hub,
    request_digest,
)
from consentsync.hub.keys import ApiKey
from consentsync.hub.ratelimit import RateLimiter
from consentsync.ledger.service import NotFound

log = structlog.get_logger("consentsync.hub.api")
KEY_CACHE_SECONDS = 1.0
# The largest body the API reads: a full batch (BATCH_MAX consents) with every field at its
# longest, escaped as JSON, stays below it. Bigger is refused (413) before it is read or parsed,
# which FastAPI would otherwise do before the API key is checked.
BODY_MAX = 8 * 1024 * 1024


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _iso_text(value: object) -> object:
    """A time as ISO 8601 text: pydantic would take a number for Unix seconds, so that 123
    became a grant of 1970, expired at once, where the person meant nothing of the kind."""
    if not isinstance(value, str):
        raise ValueError("accepted is an ISO 8601 time with its offset, as text (2026-05-01T09:30:00+02:00)")
    return value


# A time with its offset, written as text.
IsoTime = Annotated[AwareDatetime, BeforeValidator(_iso_text)]


class ConsentIn(_Body):
    email: str = Field(max_length=320, description="The person's email address.")
    purpose: str = Field(max_length=64, description="A configured purpose key.")
    channel: str = Field(default="email", max_length=32)
    status: Literal["granted", "withdrawn", "refused"]
    basis: str | None = Field(default=None, description="Only consent is captured for a grant.")
    # With its offset: a time without one is hours from the truth anywhere but UTC, and would
    # order a withdrawal wrongly against the person's other acts (refused, 422).
    event_time: IsoTime | None = Field(
        default=None, description="When the person acted (ISO 8601 with offset); default: now."
    )
    notice_version: str | None = Field(
        default=None, max_length=100, description="The notice version shown; required for a grant."
    )
    evidence_ref: str | None = Field(default=None, max_length=500, description="Where the proof is kept.")
    language: str | None = Field(
        default=None,
        max_length=16,
        description="The language the person was shown the notice in, one of hub.languages; the "
        "confirmation mail and the receipt are written in it (default: the first of hub.languages).",
    )


class ConsentBatchIn(_Body):
    consents: list[ConsentIn] = Field(max_length=BATCH_MAX)
    gpc: bool = Field(default=False, description="The person's browser sent a Global Privacy Control signal.")


def _shape(value: Any) -> str:
    return "batch" if isinstance(value, dict) and "consents" in value else "one"


# One consent, or a batch: told apart by the "consents" key, so that a mistake is reported
# against the shape that was meant, not against both.
ConsentsBody = Annotated[
    Annotated[ConsentBatchIn, Tag("batch")] | Annotated[ConsentIn, Tag("one")], Discriminator(_shape)
]


class ObjectionIn(_Body):
    email: str = Field(max_length=320)
    purpose: str = Field(max_length=64)
    direct_marketing: bool = False


class ErasureIn(_Body):
    email: str = Field(max_length=320)
    reason: str = Field(max_length=500, description="Why; kept with the suppression, so no address in it.")


class DecisionIn(_Body):
    email: str = Field(max_length=320)
    purpose: str = Field(max_length=64)
    channel: str = Field(default="email", max_length=32)


class _Object(dict[str, Any]):
    """A JSON object as parsed (``duplicate_key``), with the first key it names twice, if any."""

    __slots__ = ("twice",)


def _named(key: str) -> str:
    """A key as an error names it: on one line (escaped as in a repr), at most 64 characters."""
    shown = repr(key[:64])[1:-1]
    return shown if len(key) <= 64 else shown + "..."


def duplicate_key(body: bytes) -> str | None:
    """The one-line error for a JSON ``body`` with an object that names a key twice, the first
    in document order (``consents[1].email: duplicate key 'email' in consents[1]``), or None: no
    key named twice, or no JSON at all (FastAPI answers that as ever). Python's parser, like
    most, takes the last of two; a gateway or an audit proxy may take the first and see another
    request than the one recorded, so which was meant cannot be told: bad input (docs/hub.md)."""
    named_twice = False

    def parsed(pairs: list[tuple[str, Any]]) -> _Object:
        nonlocal named_twice
        value = _Object(pairs)
        value.twice = None
        if len(value) < len(pairs):
            named_twice = True
            seen: set[str] = set()
            for key, _item in pairs:
                if key in seen:
                    value.twice = key
                    break
                seen.add(key)
        return value

    try:
        document = json.loads(body, object_pairs_hook=parsed)
    except (ValueError, RecursionError):  # not JSON (JSONDecodeError, UnicodeDecodeError), too deep
        return None
    if not named_twice:
        return None
    # Depth first in document order, without recursion: a body as deep as the parser allows.
    pending: list[tuple[Any, str]] = [(document, "")]
    while pending:
        value, at = pending.pop()
        if isinstance(value, _Object):
            if value.twice is not None:
                field = f"{at}.{_named(value.twice)}" if at else _named(value.twice)
                return f"{field}: duplicate key '{_named(value.twice)}' in {at or 'the top level'}"
            pending += [
                (item, f"{at}.{_named(key)}" if at else _named(key)) for key, item in reversed(value.items())
            ]
        elif isinstance(value, list):
            pending += [(item, f"{at}[{index}]") for index, item in reversed(list(enumerate(value)))]
    return None


def _json_body(request: Request) -> bool:
    """Whether FastAPI reads the request's body as JSON (its type is JSON, or none is given)."""
    media = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    return (
        not media
        or media == "application/json"
        or (media.startswith("application/") and media.endswith("+json"))
    )


class UniqueKeysRoute(APIRoute):
    """A route whose JSON body is refused (422, ``{"error": ...}``, nothing done) where an object
    in it names a key twice (``duplicate_key``), before FastAPI parses it, taking the last; as
    early as FastAPI refuses a body that is no JSON, before the API key is checked."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handle = super().get_route_handler()
        if self.body_field is None:
            return handle

        async def checked(request: Request) -> Response:
            if _json_body(request):
                error = duplicate_key(await request.body())  # kept: FastAPI reads it again
                if error is not None:
                    return JSONResponse({"error": error}, status_code=422)
            return await handle(request)

        return checked


class Unauthorised(Exception):
    pass


class RateLimited(Exception):
    def __init__(self, retry_after: float) -> None:
        self.retry_after = retry_after


# The core's refusals, each answered with its message as ``{"error": ...}`` and this status.
REFUSAL_STATUS: dict[type[Exception], int] = {
    InvalidInput: 422,
    Forbidden: 403,
    Conflict: 409,
    ErasedAddress: 409,
    ErasedRequest: 410,
    NotFound: 404,
}


def _refused(status: int) -> Callable[[Request, Exception], Awaitable[JSONResponse]]:
    """An exception handler answering a refusal with its message and ``status``, and its
    ``code`` where it has one (``NotObjectable``): a client acts on the code, never on the
    wording of the message, which may change."""

    async def answer(_request: Request, error: Exception) -> JSONResponse:
        body = {"error": str(error)}
        code = getattr(error, "code", None)
        if isinstance(code, str):
            body["code"] = code
        return JSONResponse(body, status_code=status)

    return answer


def create_app(hub: Hub) -> FastAPI:
    app = FastAPI(
        title="consentsync capture API",
        version="1",
        description="Record consents, objections and erasure requests where people act, and ask "
        "before each message whether a person may be contacted. Authenticate with an API key "
        "(`consentsync apikey add`) as `Authorization: Bearer <key>`.",
        docs_url="/docs",
        redoc_url=None,
        openapi_url="/openapi.json",
    )
    # Every route's JSON body is refused where it names a key twice (set before any is added).
    app.router.route_class = UniqueKeysRoute
    app.add_middleware(BodyLimit, limit=BODY_MAX)
    limiter = RateLimiter()
    default_rate = hub.settings.rate_per_minute

    # Keys looked up in the last second, by secret: a sending tool asks before every message,
    # and a key read per request would cost as much as the decision. A revoked key is refused
    # within KEY_CACHE_SECONDS (docs/hub.md).
    known: dict[str, tuple[ApiKey, float]] = {}

    def api_key(authorization: Annotated[str | None, Header()] = None) -> ApiKey:
        scheme, _, secret = (authorization or "").partition(" ")
        secret = secret.strip()
        if scheme.lower() != "bearer":
            raise Unauthorised()
        cached = known.get(secret)
        now = time.monotonic()
        if cached is not None and cached[1] > now:
            key: ApiKey | None = cached[0]
        else:
            key = keys.authenticate(hub.ledger, secret)
            if key is not None:
                if len(known) > 10_000:  # a flood of made-up keys is never cached, but be sure
                    known.clear()
                known[secret] = (key, now + KEY_CACHE_SECONDS)
        if key is None:
            raise Unauthorised()
        wait = limiter.take(key.id, key.rate_per_minute or default_rate)
        if wait:
            raise RateLimited(wait)
        return key

    Key = Annotated[ApiKey, Depends(api_key)]

    @app.exception_handler(Unauthorised)
    async def _unauthorised(_request: Request, _error: Unauthorised) -> JSONResponse:
        return JSONResponse(
            {"error": "a valid API key is needed: Authorization: Bearer <key>"},
            status_code=401,
            headers={"WWW-Authenticate": "Bearer"},
        )

    @app.exception_handler(RateLimited)
    async def _limited(_request: Request, error: RateLimited) -> JSONResponse:
        return JSONResponse(
            {"error": "too many requests for this API key"},
            status_code=429,
            headers={"Retry-After": str(max(1, math.ceil(error.retry_after)))},
        )

    for refusal, status in REFUSAL_STATUS.items():
        app.add_exception_handler(refusal, _refused(status))

    @app.exception_handler(RequestValidationError)
    async def _malformed(_request: Request, error: RequestValidationError) -> JSONResponse:
        first = error.errors()[0] if error.errors() else {"loc": (), "msg": "malformed request"}
        where = ".".join(
            f"[{part}]" if isinstance(part, int) else str(part)
            for part in first.get("loc", ())
            if part not in ("body", "batch", "one")
        ).replace(".[", "[")
        return JSONResponse(
            {"error": f"{where}: {first.get('msg')}" if where else str(first.get("msg"))}, 422
        )

    @app.post("/consents", status_code=201)
    def record_consents(
        body: ConsentsBody,
        key: Key,
        background: BackgroundTasks,
        sec_gpc: Annotated[str | None, Header(alias="Sec-GPC")] = None,
        idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key", max_length=255)] = None,
    ) -> JSONResponse:
        """One consent, or a batch (``{"consents": [...]}``), recorded in one transaction. With an
        ``Idempotency-Key`` header a retried request records once and gets the first answer."""
        batch = body if isinstance(body, ConsentBatchIn) else ConsentBatchIn(consents=[body])
        header_gpc = (sec_gpc or "").strip() == "1"
        gpc = batch.gpc or header_gpc
        offered = list(hub.settings.languages) or ["en"]
        items: list[ConsentCapture] = []
        for index, item in enumerate(batch.consents):
            fields = item.model_dump()
            language = fields.pop("language") or offered[0]
            if language not in offered:
                raise InvalidInput(
                    f"consents[{index}].language: {language!r} is not one of {', '.join(offered)}"
                )
            items.append(ConsentCapture(**fields, language=language))
        # The request an Idempotency-Key names is its body and its GPC header: the same body
        # sent again with the person's opt-out signal is another request (409), not a replay
        # that drops the opt-out. Without the header the digest is the body's, as it always was.
        content: Any = body.model_dump(mode="json")
        for one in content.get("consents", [content]):
            if one.get("language") is None:  # a request without it digests as it always did
                one.pop("language", None)
        if header_gpc:
            content = {"body": content, "sec_gpc": "1"}
        result = hub.capture(
            key,
            items,
            gpc=gpc,
            idempotency_key=idempotency_key,
            fingerprint=request_digest(content) if idempotency_key else None,
        )
        # Mails go after the answer (BackgroundTasks): the capture is committed either way, and a
        # mail server's delay is not the form's. A mail that fails is logged (hub.mail_failed).
        for mail in result.mails:
            background.add_task(hub.send_confirmation, mail)
        for pending in result.receipts:
            background.add_task(hub.mail_receipt, pending)
        headers = {"Idempotent-Replayed": "true"} if result.replayed else {}
        return JSONResponse(
            result.body, status_code=result.status_code, headers=headers, background=background
        )

    @app.get("/receipts/{subject}/{record_id}")
    def get_receipt(subject: str, record_id: str, key: Key, language: str | None = None) -> dict[str, Any]:
        """The consent receipt (ISO/IEC TS 27560, JSON) of a record this API returned
        (``results[].subject`` and ``results[].record_id``), in ``language`` (one of
        hub.languages; default: the first)."""
        if not key.may("consents"):
            raise Forbidden(f"API key {key.name!r} may not read consent receipts")
        # The receipt states the language it is in: one nobody configured is no receipt's.
        offered = list(hub.settings.languages) or ["en"]
        language = language or offered[0]
        if language not in offered:
            raise InvalidInput(f"language: {language[:16]!r} is not one of {', '.join(offered)}")
        document = hub.receipt(subject, record_id, language)
        # A key limited to some purposes reads the receipts of those purposes only.
        for purpose in document["purposes"]:
            if not key.covers(purpose["purpose_id"]):
                raise Forbidden(f"API key {key.name!r} may not read receipts of {purpose['purpose_id']!r}")
        return document

    @app.post("/objections", status_code=201)
    def raise_objection(body: ObjectionIn, key: Key) -> dict[str, Any]:
        """An objection (GDPR Art. 21); to direct marketing it is upheld at once (Art. 21(3))."""
        return hub.objection(key, body.email, body.purpose, direct_marketing=body.direct_marketing)

    @app.post("/erasure-requests", status_code=200)
    def request_erasure(body: ErasureIn, key: Key) -> dict[str, Any]:
        """Erases the person (GDPR Art. 17): a keyed hash stays so they are never re-imported."""
        return hub.erasure(key, body.email, body.reason)

    @app.post("/decisions")
    def decide(body: DecisionIn, key: Key) -> dict[str, Any]:
        """May this person be contacted for this purpose on this channel now, and under which
        rule. A POST, so that the address never appears in a URL or an access log."""
        return hub.decide(key, body.email, body.purpose, body.channel)

    return app
