"""The preference centre's pages, for the person themselves (no account): mounted at ``/p``.

``/preferences/{token}`` shows each purpose in plain language with its state, basis and notice,
and the forms to grant, withdraw, decline what waits for confirmation, object (Art. 21), ask for
a copy of the record (Art. 15), for erasure (Art. 17) and for restriction (Art. 18).
``/confirm/{token}`` (double opt-in; also declined there), ``/erase/{token}`` (erasure) and
``/restrict/{token}`` (restriction) show what the mailed link confirms and confirm only on POST:
mail scanners fetch links. ``/export/{token}`` offers the copy's formats and downloads on POST.

What the preference link alone does not do (docs/hub.md, "What a preference link lets its holder
do"): the link is in every mail we send the person, and a mail may be forwarded. The copy of the
record is mailed as a download link to the address the person holds now, and a grant that would
lift their no (a withdrawal, a refusal, an objection) waits for the confirmation mailed there.

The token in the URL is the person's only credential, so it is guarded like one: it is never
logged (the subject's uid is), ``Referrer-Policy: no-referrer`` keeps it from other sites, and
``Cache-Control: no-store`` from shared caches. It also makes a CSRF token needless: a forged
form cannot name a token its author does not know. No JavaScript: plain forms and
Post/Redirect/Get; the CSP allows no script at all, and the brand colour comes from a stylesheet
of its own, built from the configured colour once it is checked to be one.
"""

# No "from __future__ import annotations": FastAPI reads the annotations of the routes defined
# inside create_app at run time, and postponed ones would name locals it cannot see.
import re
import tempfile
from collections.abc import Awaitable, Callable
from importlib import resources
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlencode, urlsplit

import structlog
from fastapi import FastAPI, Form, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.exceptions import HTTPException as StarletteHTTPException

from consentsync.config import BrandingSettings
from consentsync.domain import InvalidInput
from consentsync.hub import notices
from consentsync.hub.bodylimit import BodyLimit
from consentsync.hub.capture import TOKEN_MAX, Hub  # a longer token: refused before any work
from consentsync.hub.i18n import Translate, channel_labels, negotiate, translator
from consentsync.hub.links import LinkRefused, expired_uid
from consentsync.hub.preferences import (
    EXPORT_LINK_VALIDITY,
    EXPORT_REUSE_WINDOW,
    NoticeChanged,
    Person,
    PreferenceCentre,
)
from consentsync.ledger.service import NotFound
from consentsync.notice_texts import Notice
from consentsync.reconcile import Rule

log = structlog.get_logger("consentsync.hub.people")
_PACKAGE = resources.files("consentsync.hub")

LANGUAGE_NAMES = {"en": "English", "de": "Deutsch", "fr": "Français", "es": "Español", "it": "Italiano",
                  "nl": "Nederlands", "pl": "Polski", "sv": "Svenska", "da": "Dansk"}  # fmt: skip
_COLOUR = re.compile(r"^#[0-9a-fA-F]{6}$")
_RECORD_ID = re.compile(r"^[0-9a-f]{64}$")  # an evidence fingerprint (SHA-256)
_TOKEN_PATH = re.compile(r"^(/(?:preferences|confirm|erase|restrict|export)/)[^/]+")
# A path no route matched ("//preferences/<token>", "/PREFERENCES/<token>", a link a mail client
# mangled) may still hold a token: every segment longer than our route names is left out.
_LONG_SEGMENT = re.compile(r"[^/]{17,}")
# The pages whose token is a preference link (not a confirmation link): an expired one may ask
# for a new one.
_LINK_ROUTES = (
    "preferences", "choose", "object", "export", "erase_request", "restrict_request", "receipt", "new_link",
)  # fmt: skip
# The largest form the pages read (theirs are a few hundred bytes); bigger is refused unread.
FORM_MAX = 64 * 1024


def _status_labels(_: Translate) -> dict[str, str]:
    """A consent's states, in the person's words."""
    return {
        "granted": _("Yes: you agreed"),
        "withdrawn": _("No: you withdrew your consent"),
        "refused": _("No: you declined"),
        "requested": _("Waiting for your confirmation"),
        "applicable": _("Not decided yet"),
        "not_applicable": _("Does not apply to you"),
        "expired": _("Your consent has expired"),
    }


# The rules that stop a purpose for the person, whatever its basis: they said so (an objection),
# or asked for it (erasure, restriction).
_STOPPED_BY = frozenset(
    {Rule.OBJECTION_DIRECT_MARKETING, Rule.OBJECTION_UPHELD, Rule.OBJECTION_PENDING, Rule.RESTRICTION,
     Rule.ERASURE}
)  # fmt: skip


# The rules that hold a purpose back whatever the person consents to: a restriction (Art. 18,
# lifted by ops, who tell the person first: Art. 18(3)) and an objection under review (a reviewer
# decides it). A new consent of theirs lifts every other no (docs/policy.md, "A new consent"):
# an upheld objection, to direct marketing too (Art. 21(3)), and an erasure's suppression.
_NOT_LIFTED_BY_CONSENT = frozenset({Rule.RESTRICTION, Rule.OBJECTION_PENDING})


def _state_label(_: Translate, row: dict[str, Any]) -> str:
    """The state of a purpose on a channel in the person's words. A consent says what the person
    said ("agreed", "withdrew") unless an objection, a restriction or an erasure stops it;
    anything else whether we do it. Never "does not apply" while
    the ledger lets us do it: a soft opt-in says that we send it, and why."""
    status, suppressed = row["status"], row["suppressed"]
    if not suppressed and row["rule"] == Rule.EPRIVACY_SOFT_OPT_IN:
        return _("We send you this because you bought from us and did not say no (soft opt-in)")
    if suppressed and row["rule"] in _STOPPED_BY and status not in ("withdrawn", "refused"):
        # An objection, a restriction or an erasure stops it whatever the person agreed to: "Yes:
        # you agreed" would read as "we send it" (their own no stays in their words, below).
        return _("Stopped for you")
    if row["consent_based"] and status != "not_applicable":
        return _status_labels(_).get(status, status)
    if not suppressed:
        return _("We do this")
    if status == "not_applicable" and row["rule"] not in _STOPPED_BY:
        return _("Does not apply to you")
    return _("Stopped for you")


def _basis_labels(_: Translate) -> dict[str, str]:
    return {
        "consent": _("your consent"),
        "contract": _("our contract with you"),
        "legal_obligation": _("a legal obligation"),
        "vital_interests": _("your vital interests"),
        "public_task": _("a task in the public interest"),
        "legitimate_interests": _("our legitimate interests"),
    }


def _objection_labels(_: Translate) -> dict[str, str]:
    return {
        "pending": _("You objected. We are looking at your objection and will answer you."),
        "upheld": _("You objected, and we stopped."),
        "rejected": _("You objected; we found reasons that override it. You may object again."),
    }


def _confirmation_texts(
    _: Translate, kind: str, values: dict[str, str], waiting: bool = True
) -> dict[str, str]:
    """What a confirmation page asks, offers, says to whoever does not want it, and says once
    confirmed: a double opt-in the person asked for, a consent we ask for, or a renewal.
    ``waiting``: False for a double opt-in of a purpose the person's consent is in force for,
    where saying no only voids the link (``Hub.decline``): "we send you nothing" would be
    untrue, and the person must not believe it ends what they receive."""
    if kind == "request":
        return {
            "ask": _("We would like to send you {purpose} ({channel}). Do you agree?", **values),
            "button": _("Yes, I agree"),
            "no": _("No, thank you"),
            "decline": _("If you do not want this, say no or close this page: nothing is sent to you."),
            "done": _("Thank you: you agreed to {purpose} ({channel}).", **values),
        }
    if kind == "renewal":
        return {
            "ask": _(
                "Your consent to {purpose} ({channel}) runs out soon. Do you want to keep it?", **values
            ),
            "button": _("Yes, keep it"),
            "decline": _("If you do not, close this page: your consent ends and we stop."),
            "done": _("Thank you: your consent to {purpose} ({channel}) is renewed.", **values),
        }
    return {
        "ask": _("You asked to receive {purpose} ({channel}). Please confirm that it was you.", **values),
        "button": _("Yes, I confirm"),
        "no": _("No, I did not ask for this"),
        "decline": _("If it was not you, say so: we send you nothing, and this link stops working.")
        if waiting
        else _(
            "If it was not you, say so: this link stops working, and your choices about {purpose} "
            "stay as they are (to end them, use the link to your privacy choices in our mails).",
            **values,
        ),
        "done": _("Thank you: you confirmed that you want to receive {purpose} ({channel}).", **values),
    }


def _ground_labels(_: Translate) -> dict[str, str]:
    """The grounds of Art. 18(1) on which a person may have processing restricted, in their words
    (the keys are ``preferences.RESTRICTION_GROUNDS``)."""
    return {
        "accuracy": _("Your data is wrong, and you want it restricted while we check it (Art. 18(1)(a))."),
        "unlawful": _(
            "We have no right to process your data, but you want it kept rather than erased (Art. 18(1)(b))."
        ),
        "legal_claims": _("We no longer need your data, but you need it for a legal claim (Art. 18(1)(c))."),
        "objection": _(
            "You objected, and want it restricted while we check whose reasons prevail (Art. 18(1)(d))."
        ),
    }


def mask_email(email: str) -> str:
    """Whose page this is, without spelling out the address to whoever the link was passed to."""
    local, _, domain = email.partition("@")
    return f"{local[:1]}•••@{domain}"


def _contrast(colour: str, other: str) -> float:
    """WCAG contrast ratio of two #rrggbb colours."""

    def luminance(value: str) -> float:
        channels = [int(value[i : i + 2], 16) / 255 for i in (1, 3, 5)]
        linear = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
        return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]

    light, dark = sorted((luminance(colour), luminance(other)), reverse=True)
    return (light + 0.05) / (dark + 0.05)


def brand_css(branding: BrandingSettings) -> str:
    """The brand colour as CSS variables: the text on it black or white, whichever reads better,
    and a darker ink for links and borders where the colour itself is too light to read on
    white (WCAG AA needs 4.5:1). Anything but #rrggbb falls back to the default colour: the
    value goes into a stylesheet, so nothing else may reach it."""
    colour = branding.primary_colour if _COLOUR.match(branding.primary_colour) else "#1f4e79"
    on_brand = "#ffffff" if _contrast(colour, "#ffffff") >= _contrast(colour, "#000000") else "#000000"
    ink = colour if _contrast(colour, "#ffffff") >= 4.5 else "#1b1f24"
    return f":root {{ --brand: {colour}; --on-brand: {on_brand}; --brand-ink: {ink}; }}\n"


def _origin(url: str | None) -> str | None:
    """The http(s) origin of a configured URL (to allow the logo in the CSP), else None."""
    if not url:
        return None
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return None
    return f"{parts.scheme}://{parts.netloc}"


def content_security_policy(branding: BrandingSettings) -> str:
    images = " ".join(filter(None, ["'self'", "data:", _origin(branding.logo_url)]))
    return (
        f"default-src 'none'; style-src 'self'; img-src {images}; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    )


def _log_path(request: Request) -> str:
    """The path as a route template: a token in a URL is a credential, never logged."""
    route = request.scope.get("route")
    template = getattr(route, "path", None)
    if isinstance(template, str):
        return template
    path = request.url.path.removeprefix(request.scope.get("root_path", ""))
    return _LONG_SEGMENT.sub("{token}", _TOKEN_PATH.sub(r"\1{token}", path))


def refusal_status(error: LinkRefused) -> int:
    """410 Gone where the link was ours but its time or its record has passed, 403 otherwise."""
    text = str(error)
    gone = ("expired", "erased", "confirmed already", "no longer in use")
    return 410 if any(word in text for word in gone) else 403


def sentence(text: str) -> str:
    """A service's message (written to follow a colon in a log) as a sentence on a page."""
    return text[:1].upper() + text[1:] + ("" if text.endswith(".") else ".")


def _merged(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One line for the channels of a purpose the person cannot switch that read the same
    (four identical lines say less than one)."""
    merged: dict[tuple[str, str], dict[str, Any]] = {}
    for row in rows:
        key = (row["status_label"], row["basis_label"])
        if key in merged:
            merged[key]["channel_label"] += ", " + row["channel_label"]
        else:
            merged[key] = dict(row)
    return list(merged.values())


class BadForm(ValueError):
    """A form that our pages never send (a purpose that cannot be granted, say)."""


def create_app(hub: Hub) -> FastAPI:
    app = FastAPI(title="consentsync preference centre", docs_url=None, redoc_url=None, openapi_url=None)
    centre = PreferenceCentre(hub)
    # The pages and the capture API start together (web/app.py): said once, here.
    hub.warn_if_gpc_honoured_nowhere()
    settings = hub.settings
    branding = settings.branding
    offered = list(settings.languages) or ["en"]
    templates = Jinja2Templates(directory=str(_PACKAGE / "templates"))
    app.add_middleware(BodyLimit, limit=FORM_MAX)
    # A name of its own: path_of asks the outermost app first (the console, whose own /static is
    # mounted as console_static), so a shared "static" linked the console's folder, not this one.
    app.mount("/static", StaticFiles(directory=str(_PACKAGE / "static")), name="people_static")
    csp = content_security_policy(branding)
    stylesheet = brand_css(branding)
    # An http(s) URL (its origin is allowed in the CSP) or a path on this site; "//host" is neither.
    local_logo = (branding.logo_url or "").startswith("/") and not (branding.logo_url or "").startswith("//")
    logo = branding.logo_url if branding.logo_url and (_origin(branding.logo_url) or local_logo) else None

    def language(request: Request, chosen: str | None = None) -> str:
        return negotiate(
            request.headers.get("accept-language"), offered, chosen or request.query_params.get("lang")
        )

    def path_of(request: Request, name: str, query: dict[str, str] | None = None, **params: str) -> str:
        """A path under the mount point (relative: no Host header is trusted to build it)."""
        path = request.url_for(name, **params).path
        return path + ("?" + urlencode(query) if query else "")

    def render(
        request: Request, template: str, lang: str, context: dict[str, Any], *, status: int = 200
    ) -> HTMLResponse:
        _ = translator(lang)
        here = request.url.path
        # Another language is the same page again, so only a page that a GET shows offers one.
        switch = [
            {
                "code": code,
                "name": LANGUAGE_NAMES.get(code, code),
                "href": here + "?" + urlencode({"lang": code}),
            }
            for code in offered
            if code != lang and request.method == "GET"
        ]
        return templates.TemplateResponse(
            request,
            template,
            {
                "_": _,
                "lang": lang,
                "brand": branding,
                "logo": logo,
                "languages": switch,
                "css": [path_of(request, "people_static", path="people.css"), path_of(request, "brand_css")],
                **context,
            },
            status_code=status,
        )

    def refused(request: Request, error: LinkRefused, lang: str | None = None) -> HTMLResponse:
        status = refusal_status(error)
        log.info("people.link_refused", path=_log_path(request), status=status)
        lang = lang or language(request)
        _ = translator(lang)
        if status == 403:
            title = _("This link does not work")
        else:  # its time ran out, or what it was for is done (the record erased)
            title = (
                _("This link has expired") if "expired" in str(error) else _("This link is no longer in use")
            )
        # Art. 7(3): an expired preference link offers a new one (mailed, never shown), so that
        # withdrawing does not wait for the person to write to us.
        renew = None
        route = getattr(request.scope.get("route"), "name", None)
        token = request.path_params.get("token")
        if status == 410 and "expired" in str(error) and route in _LINK_ROUTES and isinstance(token, str):
            uid = expired_uid(hub.ledger, token) if len(token) <= TOKEN_MAX else None
            if uid is not None and hub.ledger.email_of(uid) is not None:  # not erased meanwhile
                renew = path_of(request, "new_link", token=token)
        return render(
            request,
            "refused.html",
            lang,
            {"title": title, "message": sentence(_(str(error))), "renew": renew},
            status=status,
        )

    def problem(request: Request, status: int, message: str) -> HTMLResponse:
        lang = language(request)
        _ = translator(lang)
        return render(
            request,
            "problem.html",
            lang,
            {"title": _("Something went wrong"), "message": _(message)},
            status=status,
        )

    @app.middleware("http")
    async def guard(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        # A page, not a traceback: an error's text may name the person (or hold the token).
        try:
            response = await call_next(request)
        except Exception as error:
            log.error(
                "people.failed", method=request.method, path=_log_path(request), error=type(error).__name__
            )
            response = problem(request, 500, "We could not do this just now. Please try again later.")
        response.headers["Cache-Control"] = "no-store"
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers["X-Robots-Tag"] = "noindex, nofollow"
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["Content-Security-Policy"] = csp
        log.info(
            "people.request", method=request.method, path=_log_path(request), status=response.status_code
        )
        return response

    @app.exception_handler(LinkRefused)
    async def _refused(request: Request, error: LinkRefused) -> Response:
        return refused(request, error)

    @app.exception_handler(NotFound)
    async def _gone(request: Request, _error: NotFound) -> Response:
        # The link's person is no longer in the ledger (erased meanwhile): its text names them.
        return refused(request, LinkRefused("this link opens no record any more: the record was erased"))

    @app.exception_handler(BadForm)
    @app.exception_handler(InvalidInput)
    async def _bad_form(request: Request, _error: Exception) -> Response:
        return problem(request, 400, "This form cannot be sent like this. Please open the page again.")

    @app.exception_handler(RequestValidationError)
    async def _malformed(request: Request, _error: RequestValidationError) -> Response:
        return problem(request, 400, "This form cannot be sent like this. Please open the page again.")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, error: StarletteHTTPException) -> Response:
        if error.status_code == 404:
            return problem(request, 404, "There is no page at this address.")
        return problem(request, error.status_code, "This page cannot be opened like this.")

    def person_of(token: str) -> Person:
        if len(token) > TOKEN_MAX:
            raise LinkRefused("this link is not valid: it may have been cut or changed")
        return centre.person(token)

    def visitor_of(request: Request) -> Any:
        # The socket's peer: behind a trusted proxy, uvicorn has already put the client there.
        return centre.visitor(
            request.client.host if request.client else None,
            request.headers.get("user-agent"),
            gpc=(request.headers.get("sec-gpc") or "").strip() == "1",
        )

    def back(request: Request, token: str, lang: str, done: str, **more: str | None) -> RedirectResponse:
        """To the page again (Post/Redirect/Get), saying what was done (``item``: to what;
        ``receipt``: the record whose receipt the page offers)."""
        query = {"lang": lang, "done": done, **{name: value for name, value in more.items() if value}}
        return RedirectResponse(path_of(request, "preferences", query, token=token), status_code=303)

    def row_of(person: Person, purpose: str, channel: str | None = None) -> dict[str, Any]:
        for row in centre.purposes(person):
            if row["purpose"] == purpose and (channel is None or row["channel"] == channel):
                return row
        raise BadForm(f"unknown purpose or channel: {purpose!r} {channel!r}")

    # -- the preference page ------------------------------------------------------------------

    @app.get("/preferences/{token}", name="preferences", response_class=HTMLResponse)
    def preferences(request: Request, token: str) -> Response:
        if _prefetch(request):
            # Opening this page may record (the person's GPC signal, below): a browser fetching
            # it ahead of a click that may never come must not. Refused, the prefetch is thrown
            # away and the click fetches the page afresh (a non-2xx prefetch is not used).
            return Response(status_code=503, headers={"Retry-After": "0"})
        person = person_of(token)
        lang = language(request)
        _ = translator(lang)
        # The person's own Global Privacy Control signal, honoured for them (CCPA § 7025).
        gpc_stopped = centre.honour_gpc(person, visitor_of(request))
        rows = centre.purposes(person, lang)
        view = hub.ledger.subject_view(person.email)
        objections = {o["purpose"]: o for o in view["objections"]}
        bases, channels = _basis_labels(_), channel_labels(_)
        groups: dict[str, dict[str, Any]] = {}
        for row in rows:
            group = groups.setdefault(
                row["purpose"],
                {
                    "key": row["purpose"],
                    "name": _(row["name"]),
                    "description": _(row["description"]) if row["description"] else None,
                    "notice_text": row["notice_text"],
                    "notice_version": row["notice_version"],
                    "consent_based": row["consent_based"],
                    "direct_marketing": row["direct_marketing"],
                    "objectable": False,
                    "stoppable": False,
                    "in_use": False,
                    "objection": objections.get(row["purpose"]),
                    "rows": [],
                },
            )
            group["objectable"] = group["objectable"] or row["objectable"]
            # Done now on a basis the person ends by objecting (a soft opt-in, legitimate
            # interests): the page offers to stop it, whatever any older objection said.
            group["stoppable"] = group["stoppable"] or row["stop"] == "object"
            group["in_use"] = group["in_use"] or not row["suppressed"]
            granted = row["status"] == "granted"
            group["rows"].append(
                {
                    "channel": row["channel"],
                    "channel_label": channels.get(row["channel"], row["channel"]),
                    "status": row["status"],
                    "status_label": _state_label(_, row),
                    "basis_label": bases.get(row["basis"], row["basis"]),
                    # Shown as a yes only where the consent is in force: one an objection, a
                    # restriction or an erasure stops reads "Stopped for you", and is no yes.
                    "granted": granted and not row["suppressed"],
                    # The consent on record is a grant: withdrawing it stays offered where
                    # something else stops it too (Art. 7(3); it also voids a mailed "I agree").
                    "withdrawable": granted,
                    # "I agree" where nothing is done now (sent to the person now on another
                    # basis, there is nothing to agree to) and a consent would change that: not
                    # over a grant that a restriction or a pending objection holds back, which
                    # a new consent does not lift. Over the person's no (an objection too) it
                    # is confirmed by mail first (``PreferenceCentre._grant``).
                    "grantable": row["suppressed"]
                    and not (granted and row["rule"] in _NOT_LIFTED_BY_CONSENT),
                    "requested": row["status"] == "requested",
                    "suppressed": row["suppressed"],
                    "in_use": not row["suppressed"],
                }
            )
        for group in groups.values():
            if not group["consent_based"]:
                group["rows"] = _merged(group["rows"])
            # Shown for the purposes the person cannot switch: why not, in plain words.
            basis = bases.get(
                next((r for r in rows if r["purpose"] == group["key"]), {}).get("basis", ""), ""
            )
            group["basis_label"] = basis
            objection = group["objection"]
            if objection and objection["status"] != "rejected" and group["in_use"]:
                objection = None  # "we stopped" no longer holds: a newer consent lifted it
            group["objection_label"] = _objection_labels(_).get(objection["status"]) if objection else None
            # Offered while done on a basis ended by objecting (``stoppable``), and otherwise for
            # a purpose that may be objected to with no objection standing; but not for direct
            # marketing on a consent, which withdrawing ends (one way to stop, not two).
            by_basis = group["objectable"] and not (group["direct_marketing"] and group["consent_based"])
            group["may_object"] = group["stoppable"] or (
                by_basis and (objection is None or objection["status"] == "rejected")
            )
        log.info("people.preferences_shown", subject=person.uid)
        return render(
            request,
            "preferences.html",
            lang,
            {
                "title": _("Your privacy choices"),
                "who": mask_email(person.email),
                "groups": list(groups.values()),
                "status": _done_message(_, request, token, channels) or _gpc_message(_, gpc_stopped),
                "token": token,
                "actions": {
                    name: path_of(request, name, token=token)
                    for name in ("choose", "object", "export", "erase_request", "restrict_request")
                },
                "export_hours": int(EXPORT_LINK_VALIDITY.total_seconds() // 3600),
                "restricted": bool(view["restricted"]),
                "grounds": list(_ground_labels(_).items()),
                "formats": [("json", "JSON"), ("csv", "CSV"), ("xlsx", _("Excel (XLSX)"))],
                "days": settings.confirmation_days,
            },
        )

    def _done_message(
        _: Translate, request: Request, token: str, channels: dict[str, str]
    ) -> dict[str, str] | None:
        """The outcome of the action just taken (Post/Redirect/Get), from a fixed set of
        messages: nothing from the query string is shown but a configured purpose's name."""
        done = request.query_params.get("done")
        purpose, _sep, channel = (request.query_params.get("item") or "").partition(":")
        known = hub.ledger.purposes.get(purpose)
        name = _(known.name) if known else ""
        channel_label = channels.get(channel, "") if known and channel in known.channels else ""
        messages = {
            "granted": (
                "good",
                _("Thank you: you agreed to {purpose} ({channel}).", purpose=name, channel=channel_label),
            ),
            "withdrawn": (
                "good",
                _(
                    "Done: you withdrew your consent to {purpose} ({channel}).",
                    purpose=name,
                    channel=channel_label,
                ),
            ),
            "refused": (
                "good",
                _(
                    "Done: you said no to {purpose} ({channel}). The confirmation link we mailed "
                    "you no longer works.",
                    purpose=name,
                    channel=channel_label,
                ),
            ),
            "objected_upheld": ("good", _("Done: we stopped {purpose} for you.", purpose=name)),
            "objected_marketing": (
                "good",
                _(
                    "Done: you objected, and we stopped {purpose} for you at once, with all our "
                    "other direct marketing to you.",
                    purpose=name,
                ),
            ),
            "objected_pending": (
                "good",
                _("We received your objection to {purpose} and will answer you.", purpose=name),
            ),
            "erasure_mailed": (
                "good",
                _("We sent you a mail. Your data is erased once you open the link in it and confirm."),
            ),
            "erasure_failed": (
                "bad",
                _("We could not send the confirmation mail just now. Please try again later."),
            ),
            "restriction_mailed": (
                "good",
                _(
                    "We sent you a mail. The processing of your data is restricted once you open "
                    "the link in it and confirm."
                ),
            ),
            "restriction_failed": (
                "bad",
                _("We could not send the confirmation mail just now. Please try again later."),
            ),
            "restriction_already": ("good", _("The processing of your data is restricted already.")),
            "export_mailed": (
                "good",
                _(
                    "We sent you a mail with a link to download a copy of your data. The link works "
                    "for {hours} hours.",
                    hours=int(EXPORT_LINK_VALIDITY.total_seconds() // 3600),
                ),
            ),
            "export_failed": (
                "bad",
                _("We could not send the mail just now. Please try again later."),
            ),
            "grant_mailed": (
                "good",
                _(
                    "You had said no to {purpose} ({channel}). We sent you a mail: your consent is "
                    "recorded once you open the link in it and confirm.",
                    purpose=name,
                    channel=channel_label,
                ),
            ),
            "grant_failed": (
                "bad",
                _("We could not send the confirmation mail just now. Please try again later."),
            ),
            "notice_changed": (
                "bad",
                _(
                    "The text about {purpose} changed while your page was open, so nothing was "
                    "recorded. Please read the new text below and choose again.",
                    purpose=name,
                ),
            ),
        }
        about_the_person = (
            "erasure_mailed",
            "erasure_failed",
            "export_mailed",
            "export_failed",
            *(m for m in messages if "restriction" in m),
        )
        if done not in messages or (done not in about_the_person and not known):
            return None
        kind, text = messages[done]
        shown = {"kind": kind, "text": text}
        record_id = request.query_params.get("receipt") or ""
        if done in ("granted", "withdrawn", "refused") and _RECORD_ID.match(record_id):
            shown["receipt"] = path_of(request, "receipt", token=token, record_id=record_id)
        return shown

    def _gpc_message(_: Translate, stopped: list[str]) -> dict[str, str] | None:
        """What the page says when it honoured the browser's signal just now (§ 7025(c)(6))."""
        if not stopped:
            return None
        names = ", ".join(_(hub.ledger.purposes[key].name) for key in stopped)
        return {
            "kind": "good",
            "text": _(
                "Your browser sent a Global Privacy Control signal: we stopped {purposes} for you.",
                purposes=names,
            ),
        }

    @app.post("/preferences/{token}/choose", name="choose")
    def choose(
        request: Request,
        token: str,
        purpose: Annotated[str, Form(max_length=64)],
        channel: Annotated[str, Form(max_length=32)],
        action: Annotated[str, Form(pattern="^(grant|withdraw|decline)$")],
        lang: Annotated[str, Form(max_length=16)] = "",
        notice_version: Annotated[str, Form(max_length=100)] = "",
    ) -> Response:
        person = person_of(token)
        lang = language(request, lang)
        row = row_of(person, purpose, channel)
        if not row["consent_based"]:
            raise BadForm(f"{purpose!r} is not based on consent: it cannot be granted or withdrawn here")
        visitor = visitor_of(request)
        if action == "decline":  # "no, I did not ask for this": a refusal, the mailed link void
            result = centre.decline(person, purpose, channel, visitor=visitor, language=lang)
        else:
            try:
                result = centre.choose(
                    person,
                    purpose,
                    channel,
                    grant=action == "grant",
                    visitor=visitor,
                    language=lang,
                    shown=notice_version or None,
                )
            except NoticeChanged:  # the page again, with the text now current to read
                return back(request, token, lang, "notice_changed", item=f"{purpose}:{channel}")
            if result.get("confirmation"):  # a grant over the person's no: mailed to confirm
                return back(
                    request, token, lang, f"grant_{result['confirmation']}", item=f"{purpose}:{channel}"
                )
        return back(
            request,
            token,
            lang,
            result["recorded"],
            item=f"{purpose}:{channel}",
            receipt=result.get("record_id"),
        )

    @app.post("/preferences/{token}/object", name="object")
    def object_(
        request: Request,
        token: str,
        purpose: Annotated[str, Form(max_length=64)],
        lang: Annotated[str, Form(max_length=16)] = "",
    ) -> Response:
        person = person_of(token)
        lang = language(request, lang)
        # Refused (400, InvalidInput) where it cannot be objected to (centre.object): a purpose
        # not configured, a contract, a consent outside direct marketing (withdrawn instead).
        result = centre.object(person, purpose, visitor_of(request))
        if result["status"] == "upheld":
            done = "objected_marketing" if result["direct_marketing"] else "objected_upheld"
        else:
            done = "objected_pending"
        return back(request, token, lang, done, item=purpose)

    @app.post("/preferences/{token}/export", name="export")
    def export(
        request: Request,
        token: str,
        lang: Annotated[str, Form(max_length=16)] = "",
        # Sent by the form of an older page; the format is chosen where the mailed link opens.
        format: Annotated[str, Form(pattern="^(json|csv|xlsx)$")] = "",
    ) -> Response:
        """Art. 15 asked: a download link is mailed to the address the person holds now
        (``PreferenceCentre.request_export``); the copy is never handed to whoever holds the
        page's link, which every mail of ours carries and a forwarded mail passes on."""
        person = person_of(token)
        lang = language(request, lang)
        sent = centre.request_export(person, visitor_of(request), lang)
        return back(request, token, lang, f"export_{sent}")

    @app.get("/export/{token}", name="download", response_class=HTMLResponse)
    def download_page(request: Request, token: str) -> Response:
        """The mailed download link: the formats, downloaded on POST (mail scanners fetch links,
        and a fetch must not use up the link's window)."""
        lang = language(request)
        _ = translator(lang)
        if len(token) > TOKEN_MAX:
            raise LinkRefused("this confirmation link is not valid: it may have been cut or changed")
        centre.export_link(token)
        return render(
            request,
            "export.html",
            lang,
            {
                "title": _("Download a copy of your data"),
                "action": path_of(request, "download", token=token),
                "formats": [("json", "JSON"), ("csv", "CSV"), ("xlsx", _("Excel (XLSX)"))],
                "minutes": int(EXPORT_REUSE_WINDOW.total_seconds() // 60),
            },
        )

    @app.post("/export/{token}")
    def download(
        request: Request,
        token: str,
        format: Annotated[str, Form(pattern="^(json|csv|xlsx)$")],
    ) -> Response:
        # openpyxl is slow to import, and the console's media types are the ones to send.
        from consentsync.export import write_export
        from consentsync.web.console import EXPORT_TYPES

        if len(token) > TOKEN_MAX:
            raise LinkRefused("this confirmation link is not valid: it may have been cut or changed")
        view = centre.export_by_link(token)
        with tempfile.TemporaryDirectory(prefix="consentsync-export-") as folder:
            path = Path(folder) / f"record.{format}"
            write_export(view, format, path)
            content = path.read_bytes()
        log.info("people.exported", subject=view["subject"], format=format)
        name = f"my-data-{view['as_of'][:10]}.{format}"
        return Response(
            content,
            media_type=EXPORT_TYPES[format],
            headers={"Content-Disposition": f'attachment; filename="{name}"'},
        )

    @app.get("/preferences/{token}/receipt/{record_id}", name="receipt")
    def receipt(request: Request, token: str, record_id: str) -> Response:
        """The consent receipt of one of the person's choices (ISO/IEC TS 27560, JSON)."""
        from consentsync.hub import receipts

        person = person_of(token)
        if not _RECORD_ID.match(record_id):
            return problem(request, 404, "There is no page at this address.")
        try:
            document = hub.receipt(person.uid, record_id, language(request))
        except NotFound:  # not this person's record: nothing of anyone else's is said
            return problem(request, 404, "There is no page at this address.")
        name, content, media_type = receipts.as_attachment(document)
        log.info("people.receipt", subject=person.uid)
        return Response(
            content, media_type=media_type, headers={"Content-Disposition": f'attachment; filename="{name}"'}
        )

    @app.post("/preferences/{token}/erase", name="erase_request")
    def erase_request(
        request: Request, token: str, lang: Annotated[str, Form(max_length=16)] = ""
    ) -> Response:
        person = person_of(token)
        lang = language(request, lang)
        mailed = centre.request_erasure(person, visitor_of(request), lang)
        return back(request, token, lang, "erasure_mailed" if mailed else "erasure_failed")

    @app.post("/preferences/{token}/restrict", name="restrict_request")
    def restrict_request(
        request: Request,
        token: str,
        ground: Annotated[str, Form(max_length=32)],
        lang: Annotated[str, Form(max_length=16)] = "",
    ) -> Response:
        """Art. 18: asks for restriction of processing; a mailed link confirms it."""
        person = person_of(token)
        lang = language(request, lang)
        if ground not in _ground_labels(translator(lang)):
            raise BadForm(f"unknown ground of restriction: {ground!r}")
        asked = centre.request_restriction(person, ground, visitor_of(request), lang)
        return back(request, token, lang, f"restriction_{asked}")

    @app.post("/preferences/{token}/new-link", name="new_link")
    def new_link(request: Request, token: str, lang: Annotated[str, Form(max_length=16)] = "") -> Response:
        """An expired preference link asks for a new one, mailed to the address on record."""
        if len(token) > TOKEN_MAX:
            raise LinkRefused("this link is not valid: it may have been cut or changed")
        lang = language(request, lang)
        _ = translator(lang)
        try:
            sent = centre.mail_new_link(token, lang)
        except LinkRefused as error:
            if "still works" not in str(error):
                raise
            return RedirectResponse(path_of(request, "preferences", {"lang": lang}, token=token), 303)
        texts = {
            "mailed": ("good", _("We sent you a mail with a new link. Please open it to make your choices.")),
            "recently": (
                "good",
                _("We sent you a new link a few minutes ago. Please look for it in your mailbox."),
            ),
            "failed": ("bad", _("We could not send the mail just now. Please try again later.")),
        }
        kind, text = texts[sent]
        return render(
            request,
            "new_link.html",
            lang,
            {"title": _("A new link"), "kind": kind, "message": text},
            status=200 if kind == "good" else 503,
        )

    # -- links from mails: shown on GET, done on POST -----------------------------------------

    def consent_confirmation(token: str) -> dict[str, Any]:
        """The consent a confirmation link opens (a double opt-in, a consent request or a
        renewal). An erasure's link is kept in the same table: it must grant nothing."""
        refused = LinkRefused("this confirmation link is not valid: it may have been cut or changed")
        if len(token) > TOKEN_MAX:
            raise refused
        pending = hub.pending_confirmation(token)
        if pending["kind"] == "erasure" or pending["purpose"] not in hub.ledger.purposes:
            raise refused
        return pending

    @app.get("/confirm/{token}", name="confirm", response_class=HTMLResponse)
    def confirm_page(request: Request, token: str) -> Response:
        lang = language(request)
        _ = translator(lang)
        pending = consent_confirmation(token)
        values = {
            "purpose": _(hub.ledger.purposes[pending["purpose"]].name),
            "channel": channel_labels(_).get(pending["channel"], pending["channel"]),
        }
        return render(
            request,
            "confirm.html",
            lang,
            {
                "title": _("Please confirm") if not pending["confirmed_at"] else _("Confirmed"),
                "confirmed": pending["confirmed_at"] is not None,
                "texts": _confirmation_texts(_, pending["kind"], values, pending["waiting"]),
                "notice": _shown_notice(hub, pending["purpose"], pending["notice_version"], lang),
                "action": path_of(request, "confirm", token=token),
                "decline": path_of(request, "decline", token=token) if pending["declinable"] else None,
            },
        )

    @app.post("/confirm/{token}/decline", name="decline")
    def decline(request: Request, token: str, lang: Annotated[str, Form(max_length=16)] = "") -> Response:
        """ "No, I did not ask for this": a refusal of what waits for confirmation; of a sign-up
        made while the person's consent was in force, nothing recorded (``Hub.decline``). The
        link is void from then on either way."""
        pending = consent_confirmation(token)
        lang = language(request, lang)
        if pending["confirmed_at"] is not None:  # confirmed already: the page says so
            return RedirectResponse(path_of(request, "confirm", {"lang": lang}, token=token), 303)
        done = hub.decline(token, lang)
        # The page that says so has no token: the link is void, and a reload must not ask again.
        query = {"lang": lang, "item": f"{pending['purpose']}:{pending['channel']}"}
        if done.get("recorded") is False:  # a sign-up disowned: the consent in force stands
            query["kept"] = "1"
        return RedirectResponse(path_of(request, "declined", query), status_code=303)

    @app.get("/declined", name="declined", response_class=HTMLResponse)
    def declined(request: Request) -> Response:
        lang = language(request)
        _ = translator(lang)
        purpose, _sep, channel = (request.query_params.get("item") or "").partition(":")
        known = hub.ledger.purposes.get(purpose)
        if known is None or channel not in known.channels:  # only a configured purpose is named
            return problem(request, 404, "There is no page at this address.")
        values = {"purpose": _(known.name), "channel": channel_labels(_).get(channel, channel)}
        if request.query_params.get("kept") == "1":
            # The sign-up was disowned and nothing was recorded: the person's choice stands, and
            # ending it is another act, on the page their mails link to. (Anyone may open this
            # address: it says nothing about whether a consent is on record.)
            return render(
                request,
                "declined.html",
                lang,
                {
                    "title": _("Thank you for telling us"),
                    "message": _(
                        "Done: the link in our mail no longer works, and this sign-up changed "
                        "nothing. Your choices about {purpose} ({channel}) stay as they were.",
                        **values,
                    ),
                    "kept": _(
                        "If you want to stop receiving {purpose}, open the link to your privacy "
                        "choices at the end of any of our mails (also the one you came from) and "
                        "withdraw there.",
                        **values,
                    ),
                },
            )
        return render(
            request,
            "declined.html",
            lang,
            {
                "title": _("You said no"),
                "message": _(
                    "Done: you said no to {purpose} ({channel}). We send you nothing for it, and the "
                    "link in our mail no longer works.",
                    **values,
                ),
            },
        )

    @app.post("/confirm/{token}")
    def confirm(request: Request, token: str, lang: Annotated[str, Form(max_length=16)] = "") -> Response:
        consent_confirmation(token)
        lang = language(request, lang)
        hub.confirm(token, lang)  # its receipt in the language the person confirmed in
        return RedirectResponse(path_of(request, "confirm", {"lang": lang}, token=token), status_code=303)

    @app.get("/erase/{token}", name="erase", response_class=HTMLResponse)
    def erase_page(request: Request, token: str) -> Response:
        lang = language(request)
        _ = translator(lang)
        if len(token) > TOKEN_MAX:
            raise LinkRefused("this confirmation link is not valid: it may have been cut or changed")
        centre.erasure_pending(token)
        return render(
            request,
            "erase.html",
            lang,
            {"title": _("Erase your data?"), "action": path_of(request, "erase", token=token)},
        )

    @app.post("/erase/{token}")
    def erase(request: Request, token: str, lang: Annotated[str, Form(max_length=16)] = "") -> Response:
        if len(token) > TOKEN_MAX:
            raise LinkRefused("this confirmation link is not valid: it may have been cut or changed")
        centre.confirm_erasure(token)
        # The erased page has no token: the link is spent, and a reload must not ask again.
        return RedirectResponse(
            path_of(request, "erased", {"lang": language(request, lang)}), status_code=303
        )

    @app.get("/restrict/{token}", name="restrict", response_class=HTMLResponse)
    def restrict_page(request: Request, token: str) -> Response:
        lang = language(request)
        _ = translator(lang)
        if len(token) > TOKEN_MAX:
            raise LinkRefused("this confirmation link is not valid: it may have been cut or changed")
        pending = centre.restriction_pending(token)
        return render(
            request,
            "restrict.html",
            lang,
            {
                "title": _("Processing restricted")
                if pending["confirmed"]
                else _("Restrict the processing of your data?"),
                "confirmed": pending["confirmed"],
                "ground": _ground_labels(_).get(pending["ground"] or ""),
                "action": path_of(request, "restrict", token=token),
            },
        )

    @app.post("/restrict/{token}")
    def restrict(request: Request, token: str, lang: Annotated[str, Form(max_length=16)] = "") -> Response:
        if len(token) > TOKEN_MAX:
            raise LinkRefused("this confirmation link is not valid: it may have been cut or changed")
        centre.confirm_restriction(token)
        return RedirectResponse(
            path_of(request, "restrict", {"lang": language(request, lang)}, token=token), status_code=303
        )

    @app.get("/erased", name="erased", response_class=HTMLResponse)
    def erased(request: Request) -> Response:
        lang = language(request)
        _ = translator(lang)
        return render(request, "erased.html", lang, {"title": _("Your data was erased")})

    @app.get("/brand.css", name="brand_css")
    def brand() -> Response:
        return Response(stylesheet, media_type="text/css")

    return app


def _shown_notice(hub: Hub, purpose: str, version: str | None, lang: str) -> Notice | None:
    """The notice a confirmation link grants under, in the page's language where that version
    has a text in it: confirming records that version as shown, so the page shows it (a consent
    request or a renewal, and a renewal's newer notice, were shown nowhere else)."""
    if version is None:
        return None
    # The one rule: what confirming or declining here records as shown (``Hub.confirm``).
    return notices.text_shown_on_page(hub.ledger, purpose, version, lang)


def _prefetch(request: Request) -> bool:
    """Whether the browser asks for the page ahead of a possible navigation, not for the person
    to see it now: ``Sec-Purpose: prefetch`` (the Fetch standard's header, also for a prerender),
    and the older ``Purpose: prefetch`` and ``X-Moz: prefetch`` some browsers still send."""
    for name in ("sec-purpose", "purpose", "x-moz"):
        tokens = request.headers.get(name, "").replace(";", ",").split(",")
        if any(token.strip().lower() == "prefetch" for token in tokens):
            return True
    return False
