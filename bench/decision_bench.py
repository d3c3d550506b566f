"""The decision endpoint under load: requests/s and p99 latency, SQLite and PostgreSQL.

    .venv/bin/python bench/decision_bench.py                       # SQLite, 20,000 people
    .venv/bin/python bench/decision_bench.py --pg-url postgresql://postgres@127.0.0.1:5432/test
    .venv/bin/python bench/decision_bench.py --people 100000 --seconds 20 --connections 32

A sending tool asks ``POST /v1/decisions`` before every message: may this person be contacted
for this purpose on this channel now, and under which rule. The ledger is seeded with N people
(grants, withdrawals, an erasure, objections) and three servers are measured, one after another,
each a uvicorn process of its own on one port, loaded by wrk (Debian's ``wrk``) from another
process with a random person per request:

``floor``
    the same stack (uvicorn, FastAPI, a JSON body parsed and a JSON answer) answering a constant:
    no decision endpoint can answer faster on this machine.
``peer``
    what a user would write by hand: one SQL query of the stored state row by address
    (``consent_states`` joined to the address), answering ``suppressed`` as stored. It knows
    nothing of expiry, objections, erasure by keyed hash or unknown people: it is cheaper because
    it is wrong in those cases.
``consentsync``
    the capture API's ``/v1/decisions``, API key checked and rate-limited, the state recomputed
    by the policy from the ledger (``Ledger.decision_for``).

Prints requests/s, p50 and p99 latency per server, and the ratios consentsync/floor and
consentsync/peer (requests/s). The servers and wrk share the machine's cores.
"""

# No "from __future__ import annotations": FastAPI reads the annotations of the routes defined
# inside the app factories below at run time.
import argparse
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import quote

import yaml
from sqlalchemy import create_engine, text

POSTGRES_ENV = "CONSENTSYNC_TEST_POSTGRES_URL"
PURPOSE = "newsletter"

WRK_SCRIPT = """
local emails = {}
for line in io.lines(os.getenv("DECISION_EMAILS")) do emails[#emails + 1] = line end
local auth = "Bearer " .. os.getenv("DECISION_KEY")
math.randomseed(7)
request = function()
  local body = '{"email":"' .. emails[math.random(#emails)] .. '","purpose":"newsletter","channel":"email"}'
  local headers = {["Content-Type"] = "application/json", ["Authorization"] = auth}
  return wrk.format("POST", "/v1/decisions", headers, body)
end
done = function(summary, latency, requests)
  local e = summary.errors
  local bad = e.status + e.connect + e.read + e.write + e.timeout
  io.write(string.format(
    'RESULT {"requests": %d, "seconds": %f, "p50_us": %d, "p99_us": %d, "errors": %d}\\n',
    summary.requests, summary.duration / 1e6, latency:percentile(50), latency:percentile(99), bad))
end
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# -- the servers (each run as `decision_bench.py --serve KIND --config PATH --port N`) -----------


def floor_app():  # type: ignore[no-untyped-def]
    from fastapi import FastAPI
    from pydantic import BaseModel

    class Ask(BaseModel):
        email: str
        purpose: str
        channel: str = "email"

    app = FastAPI()

    @app.post("/v1/decisions")
    def decide(ask: Ask) -> dict[str, object]:
        return {"contact": True, "purpose": ask.purpose, "channel": ask.channel}

    return app


def peer_app(config_path: str):  # type: ignore[no-untyped-def]
    from fastapi import FastAPI
    from pydantic import BaseModel

    from consentsync.config import load_config

    class Ask(BaseModel):
        email: str
        purpose: str
        channel: str = "email"

    config = load_config(Path(config_path))
    engine = create_engine(config.ledger_url.replace("postgresql://", "postgresql+psycopg://", 1))
    query = text(
        "SELECT s.status, s.suppressed FROM consent_states s JOIN subject_identifiers i "
        "ON i.subject_id = s.subject_id WHERE i.kind = 'email' AND i.value = :email "
        "AND s.purpose = :purpose AND s.channel = :channel"
    )
    app = FastAPI()

    @app.post("/v1/decisions")
    def decide(ask: Ask) -> dict[str, object]:
        with engine.connect() as conn:
            row = conn.execute(
                query, {"email": ask.email.strip().lower(), "purpose": ask.purpose, "channel": ask.channel}
            ).first()
        return {"contact": bool(row) and not row.suppressed, "status": row.status if row else None}

    return app


def consentsync_app(config_path: str):  # type: ignore[no-untyped-def]
    from fastapi import FastAPI

    from consentsync.app import open_ledger
    from consentsync.config import load_config
    from consentsync.hub.api import create_app
    from consentsync.hub.capture import Hub

    config = load_config(Path(config_path))
    app = FastAPI()
    app.mount("/v1", create_app(Hub(config, open_ledger(config))))
    return app


def serve(kind: str, config_path: str, port: int) -> int:
    import uvicorn

    from consentsync.logs import configure

    configure("WARNING")
    app = {
        "floor": floor_app,
        "peer": lambda: peer_app(config_path),
        "consentsync": lambda: consentsync_app(config_path),
    }[kind]()
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
    return 0


# -- seeding and measuring -----------------------------------------------------------------------


def seed(workdir: Path, ledger_url: str, people: int) -> tuple[Path, str, Path]:
    """A config and ledger with ``people`` people; returns the config, an API key and the file of
    addresses wrk asks about (nine in ten known, one in ten unknown)."""
    from consentsync.app import open_ledger
    from consentsync.config import load_config, write_starter
    from consentsync.domain import ConsentStatus, Evidence, LawfulBasis, Origin
    from consentsync.hub import keys, notices
    from consentsync.ledger.identity import Identity
    from consentsync.ledger.service import RecordRequest

    config_path = workdir / "consentsync.yaml"
    write_starter(config_path, ledger_url)
    data = yaml.safe_load(config_path.read_text())
    data["purposes"].append(
        {"key": PURPOSE, "name": "Newsletter", "default_basis": "consent", "channels": ["email"]}
    )
    data["hub"] = {"rate_per_minute": 10_000_000}
    config_path.write_text(yaml.safe_dump(data, sort_keys=False))
    config = load_config(config_path)
    ledger = open_ledger(config, migrate=True)
    ledger.sync_purposes()
    notices.add(ledger, PURPOSE, "v1", "Our monthly newsletter.")
    rng = random.Random(11)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    requests = []
    for index in range(people):
        status = ConsentStatus.GRANTED if rng.random() < 0.7 else ConsentStatus.WITHDRAWN
        at = start + timedelta(minutes=index)
        basis = LawfulBasis.CONSENT if status is ConsentStatus.GRANTED else None
        evidence = Evidence(
            PURPOSE, "email", status, basis, at, at, "web_form", Origin.CAPTURE, notice_version="v1"
        )
        requests.append(RecordRequest(Identity(email=f"person{index}@example.test"), evidence))
    ledger.record_many(requests, batch_size=20_000)
    for index in range(0, people, 500):  # some objections and erasures among them
        ledger.raise_objection(f"person{index}@example.test", "profiling")
    ledger.erase("person1@example.test", reason="bench")
    _key, secret = keys.create(ledger, "bench", source="web_form", purposes=["*"], actions=["decisions"])
    ledger.engine.dispose()
    emails = workdir / "emails.txt"
    asked = [f"person{rng.randrange(people)}@example.test" for _ in range(20_000)]
    asked += [f"stranger{n}@example.test" for n in range(2_000)]
    rng.shuffle(asked)
    emails.write_text("\n".join(asked) + "\n")
    return config_path, secret, emails


def measure(
    kind: str, config_path: Path, secret: str, emails: Path, args: argparse.Namespace
) -> dict[str, float]:
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve", kind, "--config", str(config_path), "--port", str(port)],
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SystemExit(f"the {kind} server did not start") from None
                time.sleep(0.2)
        script = config_path.parent / "decisions.lua"
        script.write_text(WRK_SCRIPT)
        env = {**os.environ, "DECISION_EMAILS": str(emails), "DECISION_KEY": secret}
        base = f"http://127.0.0.1:{port}"
        # A warm-up, then the measured run.
        subprocess.run(
            ["wrk", "-t1", "-c4", "-d2s", "-s", str(script), base], env=env, capture_output=True, check=True
        )
        done = subprocess.run(
            ["wrk", "-t1", f"-c{args.connections}", f"-d{args.seconds}s", "--timeout", "10s",
             "-s", str(script), base],
            env=env, capture_output=True, text=True, check=True,
        )  # fmt: skip
    finally:
        server.terminate()
        server.wait(timeout=30)
    line = next(line for line in done.stdout.splitlines() if line.startswith("RESULT "))
    result = json.loads(line.removeprefix("RESULT "))
    result["rps"] = result["requests"] / result["seconds"]
    return result


def run_on(name: str, ledger_url: str, args: argparse.Namespace) -> dict[str, dict[str, float]]:
    with tempfile.TemporaryDirectory(prefix="decision_bench_") as folder:
        workdir = Path(folder)
        began = time.monotonic()
        config_path, secret, emails = seed(workdir, ledger_url, args.people)
        print(f"\n{name}: {args.people:,} people seeded in {time.monotonic() - began:.1f} s; "
              f"{args.connections} connections, {args.seconds} s per server")  # fmt: skip
        results = {
            kind: measure(kind, config_path, secret, emails, args)
            for kind in ("floor", "peer", "consentsync")
        }
    print(f"  {'server':<12} {'requests/s':>11} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}")
    for kind, result in results.items():
        print(f"  {kind:<12} {result['rps']:>11,.0f} {result['p50_us'] / 1000:>8.1f} "
              f"{result['p99_us'] / 1000:>8.1f} {result['errors']:>7,}")  # fmt: skip
    mine = results["consentsync"]["rps"]
    print(f"  consentsync / floor (requests/s): {mine / results['floor']['rps']:.2f}x")
    print(f"  consentsync / peer  (requests/s): {mine / results['peer']['rps']:.2f}x")
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--people", type=int, default=20_000)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--pg-url", help=f"also measure on this PostgreSQL server (default: ${POSTGRES_ENV})")
    parser.add_argument("--serve", choices=["floor", "peer", "consentsync"], help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        return serve(args.serve, args.config, args.port)
    if shutil.which("wrk") is None:
        print("decision_bench needs wrk: apt-get install wrk", file=sys.stderr)
        return 69
    from consentsync.logs import configure

    configure("WARNING")
    os.environ.setdefault("CONSENTSYNC_ERASURE_KEY", "decision-bench-key-0123456789abcdef")
    with tempfile.TemporaryDirectory() as folder:
        run_on("SQLite", f"sqlite:///{Path(folder) / 'ledger.db'}", args)
    pg_url = args.pg_url or os.environ.get(POSTGRES_ENV)
    if pg_url:
        schema = f"decision_bench_{uuid.uuid4().hex[:10]}"
        admin = create_engine(pg_url.replace("postgresql://", "postgresql+psycopg://", 1))
        with admin.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        try:
            separator = "&" if "?" in pg_url else "?"
            run_on("PostgreSQL", f"{pg_url}{separator}options={quote(f'-csearch_path={schema}')}", args)
        finally:
            with admin.begin() as conn:
                conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
            admin.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
