"""OData ``$batch`` bodies (multipart/mixed) for Dataverse: PATCH, DELETE and GET requests out,
one answer per request back, in order."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class PartRequest:
    method: str
    url: str
    body: Mapping[str, Any] | None = None
    headers: Mapping[str, str] | None = None


@dataclass(frozen=True, slots=True)
class PartResponse:
    status: int
    body: Any
    headers: Mapping[str, str]

    @property
    def error(self) -> tuple[str | None, str]:
        """(code, message) of an OData error body ``{"error": {"code", "message"}}``."""
        error = self.body.get("error") if isinstance(self.body, dict) else None
        if isinstance(error, dict):
            return (str(error.get("code")) if error.get("code") else None, str(error.get("message", "")))
        return None, str(self.body or "")[:300]


def encode(requests: Sequence[PartRequest]) -> tuple[str, bytes]:
    """(Content-Type, body) of a batch holding each request as its own part (no change set, so
    that with ``Prefer: odata.continue-on-error`` one refused row does not hold up the others)."""
    boundary = f"batch_{uuid.uuid4()}"
    lines: list[str] = []
    for request in requests:
        lines += [
            f"--{boundary}",
            "Content-Type: application/http",
            "Content-Transfer-Encoding: binary",
            "",
            f"{request.method} {request.url} HTTP/1.1",
            *(["Content-Type: application/json; charset=utf-8"] if request.body is not None else []),
            *(f"{name}: {value}" for name, value in (request.headers or {}).items()),
            "",
            json.dumps(request.body, ensure_ascii=False) if request.body is not None else "",
        ]
    lines.append(f"--{boundary}--")
    return f"multipart/mixed; boundary={boundary}", ("\r\n".join(lines) + "\r\n").encode("utf-8")


def decode(content_type: str, body: bytes) -> list[PartResponse]:
    """The responses of a batch, in order (change-set responses flattened)."""
    return list(_responses(content_type, body.decode("utf-8", "replace")))


def _boundary(content_type: str) -> str:
    match = re.search(r'boundary="?([^";]+)"?', content_type)
    if match is None:
        raise ValueError(f"batch response without a boundary: {content_type!r}")
    return match.group(1)


def _split_head(text: str) -> tuple[dict[str, str], str]:
    parts = re.split(r"\r?\n\r?\n", text, maxsplit=1)
    headers = {}
    for line in re.split(r"\r?\n", parts[0]):
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return headers, parts[1] if len(parts) > 1 else ""


def _responses(content_type: str, text: str) -> Any:
    marker = "--" + _boundary(content_type)
    for chunk in text.split(marker)[1:]:
        if chunk.startswith("--"):
            return
        headers, rest = _split_head(chunk.lstrip("\r\n"))
        kind = headers.get("content-type", "")
        if kind.lower().startswith("multipart/mixed"):
            yield from _responses(kind, rest)
            continue
        status_line, _, after = rest.partition("\n")
        match = re.match(r"HTTP/1\.1 (\d{3})", status_line.strip())
        if match is None:
            raise ValueError(f"batch response part without a status line: {status_line[:80]!r}")
        inner_headers, payload = _split_head(after)
        payload = payload.strip()
        try:
            parsed: Any = json.loads(payload) if payload else None
        except ValueError:
            parsed = payload
        yield PartResponse(int(match.group(1)), parsed, inner_headers)
