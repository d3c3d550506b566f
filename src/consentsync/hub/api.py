"""The capture API (``/v1``): consents, objections, erasure requests and the decision a sending
tool asks for before every message. Authenticated by API key (``Authorization: Bearer``), scoped
and rate-limited per key, separate from the console's logins; documented at ``/v1/docs``."""

# No "from __future__ import annotations": FastAPI reads the annotations of the routes defined
# inside create_app at run time, and postponed ones would name locals it cannot see.
import json
import math
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Annotated, Any, Literal

import structlog
from fastapi import BackgroundTasks, Depends, FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    TypeAdapter,
    ValidationError,
    model_validator,
)
from starlette.concurrency import run_in_threadpool

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
from consentsync.hub.preferences import PreferenceCentre
from consentsync.hub.ratelimit import RateLimiter
from consentsync.ledger.service import NotFound
from consentsync.web.swagger import ASSETS as SWAGGER_ASSETS
from consentsync.web.swagger import swagger_page

log = structlog.get_logger("consentsync.hub.api")
KEY_CACHE_SECONDS = 1.0
# The largest body the API reads: a full batch (BATCH_MAX consents) with every field at its
# longest, escaped as JSON, stays below it. Bigger is refused (413) before it is read or parsed,
# which FastAPI would otherwise do before the API key is checked.
BODY_MAX = 8 * 1024 * 1024
# The docs page's CSP, the console's own (web/app.py) with the page's inline script hashed in.
DOCS_CSP = (
    "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
)


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
_ISO_TIME: TypeAdapter[datetime] = TypeAdapter(IsoTime)


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

    @model_validator(mode="before")
    @classmethod
    def _a_no_keeps_its_no(cls, data: Any) -> Any:
        """A no (withdrawn, refused) is never turned away for its time (docs/policy.md: a no can
        only protect the person): one without an offset, or no time at all, is recorded at the
        moment it is received, which counts a no as late as it can be (an unsubscribe webhook
        seldom retries a 4xx; refused, the person would stay contactable). A grant's time is
        held to the rule (422): it decides what the person agreed to and when."""
        if (
            isinstance(data, dict)
            and data.get("status") in ("withdrawn", "refused")
            and data.get("event_time") is not None
            and not _aware_iso(data["event_time"])
        ):
            log.warning("hub.no_time_set_aside", reason="not an ISO 8601 time with its offset")
            return {**data, "event_time": None}
        return data


def _aware_iso(value: object) -> bool:
    """Whether ``value`` is a time the ``event_time`` field takes (``IsoTime``). Asked of the
    field's own validator: Python's ``fromisoformat`` also reads forms it refuses (ISO 8601's
    basic ``20261207T110000Z`` and week ``2026-W49-1T11:00:00Z`` forms), which a no would have
    kept here, only to be refused (422) by the field, the person left contactable."""
    try:
        _ISO_TIME.validate_python(value)
    except ValidationError:
        return False
    return True


GPC_FIELD = Field(default=False, description="The person's browser sent a Global Privacy Control signal.")


class ConsentBatchIn(_Body):
    consents: list[ConsentIn] = Field(max_length=BATCH_MAX)
    gpc: bool = GPC_FIELD


class OneConsentIn(ConsentIn):
    """One consent sent alone, which may carry the request's GPC signal as a batch does: the
    signal is the request's (the person's browser), not one consent's, so a batch's items do
    not take it (``ConsentIn``)."""

    gpc: bool = GPC_FIELD

    def as_batch(self) -> ConsentBatchIn:
        # Checked already: built as it is, not parsed again (a time is parsed from text only).
        one = ConsentIn.model_construct(**self.model_dump(exclude={"gpc"}))
        return ConsentBatchIn(consents=[one], gpc=self.gpc)


def _shape(value: Any) -> str:
    return "batch" if isinstance(value, dict) and "consents" in value else "one"


# One consent, or a batch: told apart by the "consents" key, so that a mistake is reported
# against the shape that was meant, not against both.
ConsentsBody = Annotated[
    Annotated[ConsentBatchIn, Tag("batch")] | Annotated[OneConsentIn, Tag("one")], Discriminator(_shape)
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


def _named(key: str) -> str:
    """A key as an error names it: on one line (escaped as in a repr), at most 64 characters."""
    shown = repr(key[:64])[1:-1]
    return shown if len(key) <= 64 else shown + "..."


def names_a_key_twice(body: bytes) -> bool:
    """Whether a JSON ``body`` has an object that names a key twice, at any depth: False for no
    JSON at all (FastAPI answers that as ever) or one nested too deep for the parser.

    The test every JSON body of the API pays, so it costs about what the parse FastAPI has
    already made does (bench/hub_json_bench.py): two parses whose hooks are C functions, no
    Python code run per object. The one counts the pairs the objects name, the other the keys
    they keep (a dict keeps one of two): a key named twice, anywhere, makes them differ. Only
    then does ``duplicate_key`` pay a parse in Python to say which and where."""
    named: list[tuple[str, Any]] = []
    kept: list[str] = []
    try:
        json.loads(body, object_pairs_hook=named.extend)  # every pair of every object
        json.loads(body, object_hook=kept.extend)  # every key each object keeps
    except (ValueError, RecursionError):  # not JSON (JSONDecodeError, UnicodeDecodeError), too deep
        return False
    return len(named) != len(kept)


class _Twice(dict[str, Any]):
    """An object (``_first_twice``) that names ``key`` twice: of its keys named twice, the one
    whose second comes first."""

    __slots__ = ("key",)


class _Holds(dict[str, Any]):
    """An object (``_first_twice``) with a ``_Twice`` below it, at any depth."""

    __slots__ = ()


_MARKED = frozenset({_Twice, _Holds})
# The error for a body naming a key twice where ``_first_twice`` cannot say which: in an object
# nested within a few levels of the deepest the parser reads.
NOT_NAMED = "duplicate key in an object nested too deep to name"


def _with_marks(lists: Any, holding: set[int]) -> bool:
    """Whether any of ``lists`` (JSON arrays, and the arrays in them at any depth) holds a
    marked object (``_Twice``, ``_Holds``); each array that does is added to ``holding``, by its
    id (the document keeps it alive). Without recursion, and one look at each array: C
    functions (map, set, filter) go through its items."""
    found = False
    pending: list[tuple[list[Any], tuple[Any, ...] | None]] = [(array, None) for array in lists]
    while pending:
        array, outer = pending.pop()
        kinds = set(map(type, array))
        if not _MARKED.isdisjoint(kinds):
            found = True
            chain: tuple[Any, ...] | None = (array, outer)
            while chain is not None and id(chain[0]) not in holding:  # it, and the arrays around it
                holding.add(id(chain[0]))
                chain = chain[1]
        if list in kinds:
            pending += [(inner, (array, outer)) for inner in filter(list.__instancecheck__, array)]
    return found


def _first_twice(body: bytes) -> str:
    """``duplicate_key``'s answer for a body ``names_a_key_twice``: one parse with a Python hook
    that marks each object naming a key twice (``_Twice``) and, once there is one, each object
    with one below it (``_Holds``; the arrays between them by id). The way down to the first
    in document order then goes through marked objects only, however big the rest.

    The parse runs to the end: an object's key is known only once it is closed, so a parse
    stopped at the first key named twice could not say where that is. ``names_a_key_twice`` has
    already found one; this costs a few parses more (bench/hub_json_bench.py), and only a request
    refused for it, with an API key, within its rate, off the event loop, pays it."""
    holding: set[int] = set()
    marked = False

    def parsed(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        nonlocal marked
        value = dict(pairs)
        if len(value) < len(pairs):
            seen: set[str] = set()
            for key, _item in pairs:
                if key in seen:
                    break
                seen.add(key)
            twice = _Twice(value)
            twice.key = key
            marked = True
            return twice
        if not marked:  # nothing marked yet: nothing below it is
            return value
        kinds = set(map(type, value.values()))
        arrays = list in kinds and _with_marks(filter(list.__instancecheck__, value.values()), holding)
        return _Holds(value) if arrays or not _MARKED.isdisjoint(kinds) else value

    try:
        document = json.loads(body, object_pairs_hook=parsed)
    except (ValueError, RecursionError):  # a Python hook's frames: a few levels less deep
        return NOT_NAMED
    if type(document) is list:
        _with_marks([document], holding)
    where: list[str | int] = []
    at: Any = document
    while type(at) is not _Twice:
        for part, item in at.items() if isinstance(at, dict) else enumerate(at):
            if type(item) in _MARKED or (type(item) is list and id(item) in holding):
                where.append(part)
                at = item
                break
        else:
            return NOT_NAMED  # nothing marked: not a body names_a_key_twice
    path = ""
    for part in where:
        path += f"[{part}]" if isinstance(part, int) else f".{_named(part)}" if path else _named(part)
    field = f"{path}.{_named(at.key)}" if path else _named(at.key)
    return f"{field}: duplicate key '{_named(at.key)}' in {path or 'the top level'}"


def duplicate_key(body: bytes) -> str | None:
    """The one-line error for a JSON ``body`` with an object that names a key twice, the first
    in document order (``consents[1].email: duplicate key 'email' in consents[1]``), or None: no
    key named twice, or no JSON at all (FastAPI answers that as ever). Python's parser, like
    most, takes the last of two; a gateway or an audit proxy may take the first and see another
    request than the one recorded, so which was meant cannot be told: bad input (docs/hub.md).

    A body without one costs ``names_a_key_twice``; one with one a parse in Python more
    (``_first_twice``), which ``checked_key`` runs in a worker thread."""
    return _first_twice(body) if names_a_key_twice(body) else None


def _json_body(request: Request) -> bool:
    """Whether FastAPI may read the request's body as JSON: its type is JSON, or none is given
    (older versions of FastAPI read that as JSON; newer ones, strict about the type, refuse it
    anyway, so checking it only costs the parse)."""
    media = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    return (
        not media
        or media == "application/json"
        or (media.startswith("application/") and media.endswith("+json"))
    )


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
        # FastAPI's own docs page loads Swagger UI from a CDN and starts it with an inline script,
        # both refused by the console's CSP (a blank page): served below from the package instead.
        docs_url=None,
        redoc_url=None,
        openapi_url="/openapi.json",
    )
    app.add_middleware(BodyLimit, limit=BODY_MAX)
    # Relative links: the page at /v1/docs loads /v1/openapi.json and /v1/swagger-ui/..., and the
    # app served alone (the tests) finds them at /openapi.json and /swagger-ui/... alike.
    app.mount("/swagger-ui", StaticFiles(directory=str(SWAGGER_ASSETS)), name="capture_swagger_ui")
    docs_body, docs_csp = swagger_page(
        openapi_url="openapi.json", title="consentsync capture API", assets="swagger-ui", csp=DOCS_CSP
    )

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        return HTMLResponse(docs_body, headers={"Content-Security-Policy": docs_csp})

    limiter = RateLimiter()
    default_rate = hub.settings.rate_per_minute
    centre = PreferenceCentre(hub)  # an erasure asked for an address its person left: asked of them

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

    async def checked_key(request: Request, key: Annotated[ApiKey, Depends(api_key)]) -> ApiKey:
        """The request's API key (``api_key``), once its JSON body is known to name no key
        twice: one that does is refused (422, ``duplicate_key``), nothing done. Checked after
        the key and its rate (429 first), as FastAPI checks a body against the route's model
        after them; only a body that is no JSON at all is refused before, by FastAPI's own
        parse. So a client without a key gets 401 for any JSON, and the check's cost is
        counted against a key's rate, never spent for whoever sends a body. The test itself
        (``names_a_key_twice``) runs here: its parses are C code, which holds the interpreter
        in a worker thread as much as here."""
        route = request.scope.get("route")
        if getattr(route, "body_field", None) is not None and _json_body(request):
            body = await request.body()  # read already: FastAPI parsed it before any dependency
            if names_a_key_twice(body):
                # Saying which and where runs Python per object: not on the event loop.
                raise InvalidInput(await run_in_threadpool(_first_twice, body))
        return key

    # Every route of the API takes a key, so every JSON body it reads is checked.
    Key = Annotated[ApiKey, Depends(checked_key)]

    def refuse_grants_of_reserved_key(key: ApiKey, batch: ConsentBatchIn) -> None:
        """A key whose source is one consentsync keeps for its own records
        (``keys.RESERVED_SOURCES``), which ``apikey add`` refuses now and an older version took,
        records no grant (403, nothing recorded): it would claim the hub's provenance (a form post
        read as a confirmed double opt-in, trusted by default, lifting an erasure). Its nos are
        recorded as before (a withdrawal, a refusal, an objection, an erasure request can only
        protect the person: an unchanged integration must not start dropping them)."""
        if keys.is_reserved_source(key.source) and any(item.status == "granted" for item in batch.consents):
            log.warning("hub.reserved_source_key", apikey=key.name)
            raise Forbidden(
                f"API key {key.name!r} names source {key.source!r}, which consentsync keeps for its own "
                "records: it records no grant, so nothing of this request was recorded, its withdrawals "
                "and refusals included: send those again without the grants (they are recorded, as its "
                "objections and erasure requests are); revoke it and add a key with its capture "
                "source's own name (consentsync apikey add NAME --source ...)"
            )

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
        batch = body if isinstance(body, ConsentBatchIn) else body.as_batch()
        refuse_grants_of_reserved_key(key, batch)
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
        if isinstance(body, OneConsentIn) and not body.gpc:
            content.pop("gpc")  # a consent sent alone without it digests as it always did
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
        return hub.erasure(key, body.email, body.reason, asked_of_holder=centre.erasure_asked_of_holder)

    @app.post("/decisions")
    def decide(body: DecisionIn, key: Key) -> dict[str, Any]:
        """May this person be contacted for this purpose on this channel now, and under which
        rule. A POST, so that the address never appears in a URL or an access log."""
        return hub.decide(key, body.email, body.purpose, body.channel)

    return app
