"""Signed checkpoints of the audit chain's head, kept outside the ledger.

A hash chain proves nothing against whoever can rewrite all of it: the database owner can
disable the append-only triggers, edit an entry, recompute every hash after it and move
``audit_head``, or cut the tail and move the head back, and the chain verifies again. A
checkpoint is the head (entry number and hash), the time and the ledger's identity, signed with
an Ed25519 key that is not in the database, and written as a file an operator ships to WORM
storage (and as a log line). ``consentsync audit verify --checkpoints DIR`` then proves that the
chain still extends every checkpoint: the entry at each checkpoint's seq still has the signed
hash, so a recomputed or truncated chain is caught. See docs/tamper-evidence.md.

The ledger's identity is the hash of its first audit entry (its time and a random subject id
make it unique); it tells checkpoints of another ledger, and a rewritten first entry, apart.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from sqlalchemy import Connection, Engine, select

from consentsync.config import Config, ConfigError
from consentsync.domain import canonical_json, iso
from consentsync.ledger.schema import audit_entries, audit_head

KEY_ENV = "CONSENTSYNC_CHECKPOINT_KEY"
FORMAT = "consentsync-checkpoint/1"
PREFIX = "checkpoint-"
SIGNED_FIELDS = ("format", "ledger", "seq", "hash", "at", "reason", "run_id", "key_id")

log = structlog.get_logger("consentsync.checkpoints")


class CheckpointError(ConfigError):
    """A key or checkpoint directory problem, phrased for the operator (exit 2)."""


# -- keys ------------------------------------------------------------------------------------------


def key_id(public: Ed25519PublicKey) -> str:
    """A short name of a public key: the first 16 hex digits of the SHA-256 of its raw bytes."""
    import hashlib

    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def generate_key(path: Path) -> tuple[Path, str]:
    """Writes a new Ed25519 signing key to ``path`` (PEM, mode 0600) and its public half to
    ``path.pub``; refuses to overwrite either. Returns the public key's path and its id."""
    public_path = path.with_name(path.name + ".pub")
    for existing in (path, public_path):
        if existing.exists():
            raise CheckpointError(
                f"{existing} exists: refusing to overwrite a signing key (move it away first)"
            )
    if not path.parent.is_dir():
        raise CheckpointError(f"{path.parent}: no such directory for the signing key")
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise CheckpointError(f"{path} exists: refusing to overwrite a signing key") from None
    with os.fdopen(fd, "wb") as handle:
        handle.write(private_pem)
    fd = os.open(public_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    with os.fdopen(fd, "wb") as handle:
        handle.write(public_pem)
    return public_path, key_id(key.public_key())


def _private_key(data: bytes, where: str) -> Ed25519PrivateKey:
    text = data.strip()
    try:
        if text.startswith(b"-----BEGIN"):
            key = serialization.load_pem_private_key(text, password=None)
        else:  # the 32 raw bytes, base64: what fits in one environment variable
            key = Ed25519PrivateKey.from_private_bytes(base64.b64decode(text, validate=True))
    except (ValueError, TypeError, binascii.Error):
        key = None
    if not isinstance(key, Ed25519PrivateKey):
        raise CheckpointError(
            f"{where}: not an Ed25519 private key (expected the PEM file `consentsync audit keygen` "
            "writes, or its 32 raw bytes in base64)"
        )
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    """The public key in ``path`` (PEM, as ``keygen`` writes KEY.pub); a private key file is
    accepted too (its public half is used)."""
    try:
        data = path.read_bytes().strip()
    except OSError as error:
        raise CheckpointError(f"{path}: cannot read the public key: {error.strerror}") from None
    try:
        if b"PRIVATE KEY" in data:
            return _private_key(data, str(path)).public_key()
        key = serialization.load_pem_public_key(data)
    except ValueError:
        key = None
    if not isinstance(key, Ed25519PublicKey):
        raise CheckpointError(f"{path}: not an Ed25519 public key in PEM (the KEY.pub keygen writes)")
    return key


def configured_key(config: Config) -> Ed25519PrivateKey | None:
    """The signing key: the environment variable first, then ``audit.checkpoints.key_file``."""
    from_env = os.environ.get(KEY_ENV)
    if from_env:
        return _private_key(from_env.encode(), f"environment variable {KEY_ENV}")
    key_file = config.settings.audit.checkpoints.key_file
    if not key_file:
        return None
    path = config.resolve_path(key_file)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ConfigError(
            f"{config.path}: audit.checkpoints.key_file: cannot read {path}: {error.strerror}"
        ) from None
    return _private_key(data, f"{config.path}: audit.checkpoints.key_file ({path})")


# -- writing -------------------------------------------------------------------------------------


def ledger_identity(conn: Connection) -> str | None:
    """The hash of the ledger's first audit entry (None while the chain is empty)."""
    return conn.execute(select(audit_entries.c.hash).where(audit_entries.c.seq == 1)).scalar()


def _signed_text(fields: dict[str, Any]) -> bytes:
    return canonical_json({name: fields.get(name) for name in SIGNED_FIELDS}).encode("utf-8")


@dataclass
class Signer:
    """Writes signed checkpoints of one ledger's chain head into ``directory``."""

    key: Ed25519PrivateKey
    directory: Path
    interval_seconds: int = 3600
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))
    last: tuple[int, str] | None = None  # the head this signer last wrote

    @property
    def key_id(self) -> str:
        return key_id(self.key.public_key())

    def checkpoint(self, engine: Engine, reason: str, run_id: str | None = None) -> Path | None:
        """Signs the current head and writes it; logs and returns None when that fails (a
        checkpoint is never the reason a run fails: the next one is written at the next run or
        interval)."""
        try:
            return self.write(engine, reason, run_id)
        except Exception as error:  # logged with its reason, never raised into a run
            log.error(
                "audit.checkpoint_failed", reason=reason, directory=str(self.directory), error=str(error)
            )
            return None

    def checkpoint_if_moved(self, engine: Engine) -> Path | None:
        """The daemon's interval checkpoint: written when the head moved since the last one."""
        with engine.connect() as conn:
            head = conn.execute(select(audit_head.c.seq, audit_head.c.hash).where(audit_head.c.id == 1)).one()
        if self.last == (head.seq, head.hash):
            return None
        return self.checkpoint(engine, "interval")

    def write(self, engine: Engine, reason: str, run_id: str | None) -> Path:
        with engine.connect() as conn:
            head = conn.execute(select(audit_head.c.seq, audit_head.c.hash).where(audit_head.c.id == 1)).one()
            ledger = ledger_identity(conn)
        at = self.clock()
        fields: dict[str, Any] = {
            "format": FORMAT,
            "ledger": ledger,
            "seq": head.seq,
            "hash": head.hash,
            "at": iso(at),
            "reason": reason,
            "run_id": run_id,
            "key_id": self.key_id,
        }
        fields["signature"] = base64.b64encode(self.key.sign(_signed_text(fields))).decode("ascii")
        self.directory.mkdir(parents=True, exist_ok=True)
        stamp = at.astimezone(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        path = _fresh_path(self.directory, f"{PREFIX}{head.seq:012d}-{stamp}")
        temporary = path.with_name("." + path.name + ".tmp")
        with open(temporary, "x", encoding="utf-8") as handle:
            handle.write(json.dumps(fields, indent=2, sort_keys=True) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
        self.last = (head.seq, head.hash)
        log.info(
            "audit.checkpoint",
            seq=head.seq,
            hash=head.hash,
            ledger=ledger,
            at=fields["at"],
            reason=reason,
            run_id=run_id,
            key_id=fields["key_id"],
            signature=fields["signature"],
            file=str(path),
        )
        return path


def _fresh_path(directory: Path, stem: str) -> Path:
    """A checkpoint file is never overwritten: a second one in the same microsecond gets a suffix."""
    path = directory / f"{stem}.json"
    counter = 1
    while path.exists():
        path = directory / f"{stem}-{counter}.json"
        counter += 1
    return path


def signer_for(config: Config, clock: Callable[[], datetime] | None = None) -> Signer | None:
    """The configured signer, or None when checkpoints are off (no directory configured). A
    directory without a key, or a key without a directory, is a config error."""
    settings = config.settings.audit.checkpoints
    if settings.directory is None:
        if settings.key_file:
            raise ConfigError(
                f"{config.path}: audit.checkpoints.key_file is set but audit.checkpoints.directory "
                "is not: set both to write signed checkpoints (or neither)"
            )
        return None
    key = configured_key(config)
    if key is None:
        raise ConfigError(
            f"{config.path}: audit.checkpoints.directory is set but there is no signing key: set "
            f"audit.checkpoints.key_file or {KEY_ENV} (create one with `consentsync audit keygen`)"
        )
    directory = config.resolve_path(settings.directory)
    if directory.exists() and not directory.is_dir():
        raise ConfigError(f"{config.path}: audit.checkpoints.directory: {directory} is not a directory")
    signer = Signer(key, directory, settings.interval_seconds)
    if clock is not None:
        signer.clock = clock
    return signer


# -- verifying -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CheckpointCheck:
    file: str
    seq: int | None
    at: str | None
    ok: bool
    problem: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"file": self.file, "seq": self.seq, "at": self.at, "ok": self.ok, "problem": self.problem}


@dataclass(frozen=True, slots=True)
class CheckpointsResult:
    ok: bool
    checked: list[CheckpointCheck]

    @property
    def first_failure(self) -> CheckpointCheck | None:
        return next((check for check in self.checked if not check.ok), None)

    def as_dict(self) -> dict[str, Any]:
        failure = self.first_failure
        return {
            "ok": self.ok,
            "checked": len(self.checked),
            "first_failure": failure.as_dict() if failure else None,
            "checkpoints": [check.as_dict() for check in self.checked],
        }


def read_directory(directory: Path) -> list[Path]:
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: no such directory of checkpoints")
    files = sorted(directory.glob(f"{PREFIX}*.json"))
    if not files:
        raise CheckpointError(f"{directory}: holds no checkpoint files ({PREFIX}*.json)")
    return files


def verify(conn: Connection, directory: Path, public_key: Ed25519PublicKey) -> CheckpointsResult:
    """Checks every checkpoint in ``directory`` against the ledger, oldest (lowest seq) first.
    The chain itself is verified by ``audit.verify``; together they prove the chain extends
    each checkpoint."""
    head = conn.execute(select(audit_head.c.seq, audit_head.c.hash).where(audit_head.c.id == 1)).one()
    ledger = ledger_identity(conn)
    loaded = [_load(path, public_key) for path in read_directory(directory)]
    loaded.sort(
        key=lambda item: (item[1].get("seq") if isinstance(item[1].get("seq"), int) else -1, item[0].name)
    )
    checks: list[CheckpointCheck] = []
    for path, fields, problem in loaded:
        seq, at = fields.get("seq"), fields.get("at")
        if problem is None:
            problem = _against_ledger(conn, fields, head, ledger)
        checks.append(
            CheckpointCheck(path.name, seq if isinstance(seq, int) else None, at, problem is None, problem)
        )
    return CheckpointsResult(all(check.ok for check in checks), checks)


def _load(path: Path, public_key: Ed25519PublicKey) -> tuple[Path, dict[str, Any], str | None]:
    try:
        fields = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeError, ValueError) as error:
        return path, {}, f"not a readable checkpoint: {error}"
    if not isinstance(fields, dict) or fields.get("format") != FORMAT:
        return path, {}, f"not a checkpoint (expected format {FORMAT})"
    try:
        signature = base64.b64decode(str(fields.get("signature", "")), validate=True)
        public_key.verify(signature, _signed_text(fields))
    except (InvalidSignature, binascii.Error, ValueError):
        named = fields.get("key_id")
        mine = key_id(public_key)
        why = (
            f"signed by key {named}, not by the given key {mine}"
            if named != mine
            else "the checkpoint was edited after it was signed"
        )
        return path, fields, f"bad signature: {why}"
    if not isinstance(fields.get("seq"), int) or not isinstance(fields.get("hash"), str):
        return path, fields, "signed, but holds no entry number and hash"
    return path, fields, None


def _against_ledger(conn: Connection, fields: dict[str, Any], head: Any, ledger: str | None) -> str | None:
    seq, signed = fields["seq"], fields["hash"]
    if seq == 0:
        return None  # signed before the first entry: nothing to extend
    if fields.get("ledger") != ledger:
        return (
            f"signed for ledger {str(fields.get('ledger'))[:16]}, but this ledger's first entry hashes "
            f"to {str(ledger)[:16]}: a checkpoint of another ledger, or entry 1 was rewritten"
        )
    if head.seq < seq:
        return (
            f"signed entry {seq}, but the chain's head is at entry {head.seq}: the tail of the "
            "chain was cut and the head moved back"
        )
    stored = conn.execute(select(audit_entries.c.hash).where(audit_entries.c.seq == seq)).scalar()
    if stored is None:
        return f"entry {seq} that the checkpoint signed is missing from the ledger"
    if stored != signed:
        return (
            f"entry {seq} now hashes to {stored[:16]}, the checkpoint signed {signed[:16]}: "
            f"the chain was rewritten at or before entry {seq}"
        )
    return None
