"""A full and an incremental consentsync sync against the floor and a hand-written peer, side by side.

    .venv/bin/python bench/sync_bench.py                       # 20,000 contacts, no delay
    .venv/bin/python bench/sync_bench.py --contacts 20000 100000 --delay 0.25
    .venv/bin/python bench/sync_bench.py --delay 0.25 --delay-writes  # writes wait too (a real org)
    .venv/bin/python bench/sync_bench.py --delay 0.25 --delay-writes --push-concurrency 1
    .venv/bin/python bench/sync_bench.py --contacts 100000 --url postgresql://postgres@127.0.0.1/test
    .venv/bin/python bench/sync_bench.py --contacts 1000000 --skip-peer --timeout 120  # 6 GiB, 16 min

For each org size, a Salesforce sandbox is seeded in a process of its own (contacts, with leads,
Individuals and consent records beside them) and answers every query page after ``--delay``
seconds (the round trip of a real org). Each contestant runs in a process of its own, so that its
CPU time and peak memory are its own:

``floor``
    the same query pages consentsync reads (its own SOQL, the same page size), fetched with plain
    requests, JSON decoded and discarded: no sync can read faster.
``peer``
    what a user would write by hand: simple-salesforce ``query_all`` of contacts and leads, and
    one update call per record whose email opt-out differs from another record's of the same
    address (on a sandbox of its own, seeded the same way).
``full``
    ``consentsync sync --full`` on a fresh ledger (SQLite unless ``--url``), pushes included.
``next``
    the next incremental sync, once the look-back window has passed: it reads back the full
    sync's own writes, against ``floor-next``: the page-through of the rows that query returns.
``incremental``
    after 0.1% of the contacts changed, an incremental sync, against ``floor-incremental``: the
    page-through of the rows that query returns.

Prints wall and CPU seconds, records/s and peak RSS per contestant (and, on Linux, the bytes
each sync wrote: mostly the ledger's log), then the ratios the issue sets targets for:
full/floor, CPU per record across sizes, next/floor of the rows read back, incremental/floor
of its rows.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()
CONNECTOR = "salesforce-bench"
BENCH_DATABASE = "consentsync_syncbench"  # made anew on the --url server by every run
# The sandbox's kinds of call the delay applies to: query pages, and with --delay-writes the
# write calls too (sObject Collections, one record's update, a Bulk API 2.0 job's upload and close).
QUERY_CALLS = ("query", "queryMore")
WRITE_CALLS = ("composite", "sobject_patch", "bulk_upload", "bulk_state")
LOOKBACK_SECONDS = 15  # the bench's look-back window (the connector's default is 10 minutes)


# ------------------------------------------------------------------------------ the sandbox process


def serve(contacts: int, delay: float, info_path: Path, seed: int, delayed: tuple[str, ...]) -> None:
    """Seeds an org and serves it until stdin closes, answering the ``delayed`` kinds of call
    after ``delay`` seconds. Reads commands on stdin: ``change K`` flips the email opt-out of K
    random contacts and answers ``changed``."""
    from consentsync_salesforce.sandbox import SalesforceSandbox
    from consentsync_salesforce.sandbox.org import SalesforceOrg

    org = SalesforceOrg()
    org.seed(contacts, seed=seed)
    faults = {"delay": delay, "delay_kinds": delayed} if delay > 0 else None
    sandbox = SalesforceSandbox(org, faults=faults, api_limit=10**9, tls_dir=info_path.parent / "tls")
    sandbox.start()
    credentials = sandbox.credentials
    counts = {name: org.count(name) for name in ("Contact", "Lead", "Individual", "ContactPointTypeConsent")}
    info = {
        "instance_url": sandbox.instance_url,
        "login_url": sandbox.login_url,
        "token_url": sandbox.token_url,
        "client_id": credentials.client_id,
        "client_secret": credentials.client_secret,
        "ca_bundle": str(sandbox.ca_cert_path),
        "counts": counts,
    }
    info_path.write_text(json.dumps(info))
    print("ready", flush=True)
    rng = random.Random(seed + 1)
    for line in sys.stdin:
        words = line.split()
        if words[:1] == ["change"]:
            ids = [record["Id"] for record in org.records("Contact")]
            for record_id in rng.sample(ids, int(words[1])):
                record = org.get(record_id)
                org.update(record_id, HasOptedOutOfEmail=not record["HasOptedOutOfEmail"])
            print("changed", flush=True)
    sandbox.close()


@contextmanager
def sandbox_process(
    contacts: int, delay: float, workdir: Path, seed: int, delayed: tuple[str, ...] = QUERY_CALLS
) -> Iterator[tuple[dict[str, Any], Any]]:
    info_path = workdir / "sandbox.json"
    process = subprocess.Popen(
        [sys.executable, str(HERE), "serve", str(contacts), str(delay), str(info_path), str(seed), *delayed],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        if process.stdout.readline().strip() != "ready":
            raise SystemExit("the sandbox did not start")
        yield json.loads(info_path.read_text()), process
    finally:
        if process.stdin:
            process.stdin.close()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


def change_contacts(process: Any, count: int) -> None:
    process.stdin.write(f"change {count}\n")
    process.stdin.flush()
    if process.stdout.readline().strip() != "changed":
        raise SystemExit("the sandbox did not change the org")


# ------------------------------------------------------------------------------ configuration


def write_config(
    workdir: Path,
    info: dict[str, Any],
    url: str | None,
    timeout: float,
    batch_size: int | None = None,
    *,
    push_after_examining: bool = False,
    push_concurrency: int | None = None,
    decide_ahead_from: str | None = None,
) -> Path:
    import yaml
    from consentsync_salesforce.sandbox.demo import MAPPINGS, find_mappings

    from consentsync.config import write_starter

    config_path = workdir / "consentsync.yaml"
    write_starter(config_path, url or f"sqlite:///{workdir / 'ledger.db'}")
    data = yaml.safe_load(config_path.read_text())
    data["secrets"] = {"erasure_hmac_key": "bench-key-0123456789abcdef"}
    data["connectors"] = [
        {
            "name": CONNECTOR,
            "vendor": "salesforce",
            "mappings": [str(find_mappings() / name) for name in MAPPINGS],
            "settings": {
                "login_url": info["login_url"],
                "auth": "client_credentials",
                "client_id": info["client_id"],
                "client_secret": info["client_secret"],
                "ca_bundle": info["ca_bundle"],
                "timeout": timeout,
            },
            "signpost_lag_seconds": 0,
            "lookback_seconds": LOOKBACK_SECONDS,
            "mode": "two_way",
            # A guard no run reaches still makes a run examine everyone before it pushes.
            "push_guard": {"max_records": 10**9 if push_after_examining else None, "max_share": None},
            **({"batch_size": batch_size} if batch_size else {}),
            **({"push_concurrency": push_concurrency} if push_concurrency else {}),
            **(
                {"decide_ahead_from": None if decide_ahead_from == "off" else int(decide_ahead_from)}
                if decide_ahead_from
                else {}
            ),
        }
    ]
    config_path.write_text(yaml.safe_dump(data, sort_keys=False))
    return config_path


def _open(config_path: Path) -> Any:
    from consentsync.app import open_ledger, open_sync
    from consentsync.config import load_config
    from consentsync.logs import configure as configure_logging

    configure_logging(os.environ.get("BENCH_LOG_LEVEL", "WARNING"))
    config = load_config(config_path)
    ledger = open_ledger(config, migrate=True)
    return open_sync(config, CONNECTOR, ledger)


# ------------------------------------------------------------------------------ contestants


def _queries(engine: Any, since_stored: bool) -> list[tuple[str, str, bool]]:
    """The SOQL consentsync's connector sends for each mapping (a full read, or the incremental
    read from the stored cursors and the look-back window), with whether it goes to queryAll."""
    from consentsync.sdk.connector import Cursor

    connector = engine.connector
    queries = []
    for mapping in engine.mappings:
        since = Cursor()
        if since_stored:
            with engine.ledger.engine.connect() as conn:
                stored, _whole, _again = engine._load_read(conn, mapping.object)
            since = connector.resume_from(stored, engine._lookback())
        until = engine.ledger.clock()
        query = connector.build_query(mapping.object, mapping.pull_fields(), since, until)
        queries.append((mapping.object, query, "IsDeleted" in connector.describe(mapping.object)))
    return queries


def run_floor(config_path: Path, info: dict[str, Any], incremental: bool) -> dict[str, Any]:
    import requests

    engine = _open(config_path)
    queries = _queries(engine, incremental)
    connector = engine.connector
    sf = connector.sf
    session = requests.Session()
    # Not session.verify: requests lets REQUESTS_CA_BUNDLE from the environment win over it.
    verify = info["ca_bundle"]
    headers = {
        "Authorization": f"Bearer {sf.session_id}",
        "Sforce-Query-Options": f"batchSize={connector.config.query_batch_size}",
    }
    base = sf.base_url.rstrip("/")
    origin = sf.base_url.split("/services/")[0]
    started, cpu = time.perf_counter(), time.process_time()
    records = 0
    for _object, query, include_deleted in queries:
        url = f"{base}/{'queryAll' if include_deleted else 'query'}/"
        page = session.get(url, params={"q": query}, headers=headers, verify=verify).json()
        records += len(page["records"])
        while not page.get("done", True):
            page = session.get(origin + page["nextRecordsUrl"], headers=headers, verify=verify).json()
            records += len(page["records"])
    return {"wall": time.perf_counter() - started, "cpu": time.process_time() - cpu, "records": records}


def run_peer(info: dict[str, Any]) -> dict[str, Any]:
    import requests
    from simple_salesforce import Salesforce

    session = requests.Session()
    session.trust_env = False  # else REQUESTS_CA_BUNDLE wins over session.verify
    session.verify = info["ca_bundle"]
    started, cpu = time.perf_counter(), time.process_time()
    token = session.post(
        info["token_url"],
        data={
            "grant_type": "client_credentials",
            "client_id": info["client_id"],
            "client_secret": info["client_secret"],
        },
    ).json()
    sf = Salesforce(instance_url=token["instance_url"], session_id=token["access_token"], session=session)
    contacts = sf.query_all("SELECT Id, Email, HasOptedOutOfEmail FROM Contact")["records"]
    leads = sf.query_all("SELECT Id, Email, HasOptedOutOfEmail FROM Lead WHERE IsConverted = false")[
        "records"
    ]
    opted_out = {r["Email"].lower() for r in contacts + leads if r["Email"] and r["HasOptedOutOfEmail"]}
    updates = 0
    for kind, rows in (("Contact", contacts), ("Lead", leads)):
        for row in rows:
            if row["Email"] and row["Email"].lower() in opted_out and not row["HasOptedOutOfEmail"]:
                getattr(sf, kind).update(row["Id"], {"HasOptedOutOfEmail": True})
                updates += 1
    return {
        "wall": time.perf_counter() - started,
        "cpu": time.process_time() - cpu,
        "records": len(contacts) + len(leads),
        "pushed": updates,
    }


def _children_cpu() -> float:
    """CPU seconds of this process's children that ended (sync/ahead.py's deciding process)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_sync(config_path: Path, full: bool) -> dict[str, Any]:
    engine = _open(config_path)
    started, cpu, children = time.perf_counter(), time.process_time(), _children_cpu()
    report = engine.run(full=full)
    if report.status != "succeeded":
        raise SystemExit(f"sync {report.status}: {report.error}")
    helpers = _children_cpu() - children  # the process deciding the examination ahead, if any
    return {
        "wall": time.perf_counter() - started,
        "cpu": time.process_time() - cpu + helpers,
        "helper_cpu": helpers,
        "records": report.counts.read,
        "pushed": report.counts.pushed,
        "enqueued": report.counts.pushes_enqueued,
        "calls": report.counts.api_calls,
        "stages": getattr(report, "seconds", {}),  # per stage, where the engine reports it
    }


def contestant(name: str, config_path: Path, info_path: Path) -> None:
    info = json.loads(info_path.read_text())
    if name == "floor":
        result = run_floor(config_path, info, incremental=False)
    elif name == "floor-incremental":
        result = run_floor(config_path, info, incremental=True)
    elif name == "peer":
        result = run_peer(info)
    else:
        result = run_sync(config_path, full=name == "full")
    result["rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    written = _bytes_written()
    if written is not None:
        result["written"] = written
    print(json.dumps(result), flush=True)


def _bytes_written() -> int | None:
    """What this process handed to write calls, all threads (Linux's ``/proc/self/io``): for a
    sync on SQLite, mostly the write-ahead log and its checkpoints. Unlike CPU time it hardly
    varies from run to run, so the ledger's write amplification can be compared across sizes
    and changes by one run each."""
    try:
        fields = dict(line.split(": ") for line in Path("/proc/self/io").read_text().splitlines())
    except OSError:
        return None
    return int(fields["wchar"])


def cpu_seconds(pid: int) -> float | None:
    """CPU seconds (user and system) process ``pid`` used so far; None where /proc is not."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(name: str, config_path: Path, workdir: Path, sandbox: Any = None) -> dict[str, Any]:
    """Runs contestant ``name`` in a process of its own; with ``sandbox`` (its process), also the
    CPU the emulator spent meanwhile, on the same cores: a second core the sync could use is
    busy that long serving it."""
    serving = cpu_seconds(sandbox.pid) if sandbox is not None else None
    process = subprocess.Popen(
        [sys.executable, str(HERE), "contestant", name, str(config_path), str(workdir / "sandbox.json")],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, **PROFILE_ENV.get(name, {})},
    )
    assert process.stdout is not None
    output = process.stdout.read()
    _pid, status, _usage = os.wait4(process.pid, 0)
    if status != 0:
        raise SystemExit(f"{name} failed ({status})")
    result: dict[str, Any] = json.loads(output.strip().splitlines()[-1])
    served = cpu_seconds(sandbox.pid) if sandbox is not None else None
    if serving is not None and served is not None:
        result["sandbox_cpu"] = served - serving
    return result


PROFILE_ENV: dict[str, dict[str, str]] = {}


# ------------------------------------------------------------------------------ the run


def bench_size(contacts: int, args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    results: dict[str, dict[str, Any]] = {}
    workdir = Path(tempfile.mkdtemp(prefix=f"consentsync-syncbench-{contacts}-"))
    try:
        delayed = QUERY_CALLS + (WRITE_CALLS if args.delay_writes else ())
        with sandbox_process(contacts, args.delay, workdir, args.seed, delayed) as (info, process):
            config_path = write_config(
                workdir,
                info,
                _fresh_database(args.url) if args.url else None,
                args.timeout,
                args.batch_size,
                push_after_examining=args.push_after_examining,
                push_concurrency=args.push_concurrency,
                decide_ahead_from=args.decide_ahead_from,
            )
            print(
                f"\n{contacts:,} contacts: {info['counts']}  (delay {args.delay} s per "
                f"{'query page and write call' if args.delay_writes else 'query page'})",
                flush=True,
            )
            for name in ("floor", "full"):
                results[name] = measure(name, config_path, workdir, process)
                _print(name, results[name])
            # As a scheduled run would come: after the look-back window behind the full sync's
            # pushes (the next run reads them back, once).
            time.sleep(LOOKBACK_SECONDS + 1)
            results["floor-next"] = measure("floor-incremental", config_path, workdir)
            _print("floor-next", results["floor-next"])
            results["next"] = measure("next", config_path, workdir)
            _print("next", results["next"])
            change_contacts(process, max(1, contacts // 1000))
            for name in ("floor-incremental", "incremental"):
                results[name] = measure(name, config_path, workdir)
                _print(name, results[name])
        if not args.skip_peer:
            with sandbox_process(contacts, args.delay, workdir, args.seed, delayed) as (info, _process):
                results["peer"] = measure("peer", config_path, workdir)
                _print("peer", results["peer"])
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    full, floor = results["full"], results["floor"]
    print(f"  full / floor (wall)            {full['wall'] / floor['wall']:6.2f}x")
    if "peer" in results:
        print(f"  full / peer (wall)             {full['wall'] / results['peer']['wall']:6.2f}x")
    print(f"  next / floor (its rows)        {results['next']['wall'] / results['floor-next']['wall']:6.2f}x")
    print(
        f"  incremental / floor (changed)  "
        f"{results['incremental']['wall'] / results['floor-incremental']['wall']:6.2f}x"
        f"  ({results['incremental']['records']:,} rows read)"
    )
    print(f"  CPU per record (full)          {full['cpu'] / max(1, full['records']) * 1e6:8.0f} µs")
    return results


def _fresh_database(url: str) -> str:
    """A new, empty database for the ledger on the given PostgreSQL server (made anew by every
    run, so that the figures are a first sync's), as a ledger URL."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    from consentsync.ledger.engine import normalise_url

    server = create_engine(normalise_url(url), isolation_level="AUTOCOMMIT")
    with server.connect() as conn:
        conn.execute(text(f"DROP DATABASE IF EXISTS {BENCH_DATABASE} WITH (FORCE)"))
        conn.execute(text(f"CREATE DATABASE {BENCH_DATABASE}"))
    server.dispose()
    return make_url(url).set(database=BENCH_DATABASE).render_as_string(hide_password=False)


def _kib_per_record(result: dict[str, Any]) -> float:
    return result["written"] / 1024 / result["records"]


def _print(name: str, result: dict[str, Any]) -> None:
    rate = result["records"] / result["wall"] if result["wall"] else 0.0
    extra = ""
    if "pushed" in result:
        extra = f"  pushed {result['pushed']:,}"
    if "enqueued" in result:
        extra += f" (enqueued {result['enqueued']:,}, {result['calls']:,} API calls)"
    if "written" in result and "calls" in result and result["records"]:  # the syncs only
        mib, per_record = result["written"] / 2**20, _kib_per_record(result)
        extra += f"\n{' ' * 21}written {mib:,.0f} MiB, {per_record:.1f} KiB a record"
    if "sandbox_cpu" in result:
        extra += f"\n{' ' * 21}the emulator's CPU meanwhile {result['sandbox_cpu']:.1f} s"
    if result.get("helper_cpu"):
        extra += f"\n{' ' * 21}of the CPU, the process deciding ahead {result['helper_cpu']:.1f} s"
    if result.get("stages"):
        extra += (
            "\n" + " " * 21 + "stages: " + ", ".join(f"{k} {v:.1f} s" for k, v in result["stages"].items())
        )
    print(
        f"  {name:<18} wall {result['wall']:8.1f} s  cpu {result['cpu']:7.1f} s  "
        f"{result['records']:>9,} records  {rate:9,.0f}/s  peak RSS {result['rss_mib']:6.0f} MiB{extra}",
        flush=True,
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["serve"]:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        serve(int(argv[1]), float(argv[2]), Path(argv[3]), int(argv[4]), tuple(argv[5:]))
        return 0
    if argv[:1] == ["contestant"]:
        contestant(argv[1], Path(argv[2]), Path(argv[3]))
        return 0
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--contacts", type=int, nargs="+", default=[20_000])
    parser.add_argument("--delay", type=float, default=0.0, help="seconds per query page (0.25: a real org)")
    parser.add_argument(
        "--url",
        help="a PostgreSQL server URL: the ledger goes in a database of its own made anew there "
        "(default: a fresh SQLite file)",
    )
    parser.add_argument(
        "--delay-writes",
        action="store_true",
        help="every write call waits --delay too, as a real org's do (the floor only reads)",
    )
    parser.add_argument(
        "--push-after-examining",
        action="store_true",
        help="a push guard no run reaches: the sync examines every person before it pushes, as "
        "before pushes were sent along the examination (to compare)",
    )
    parser.add_argument(
        "--push-concurrency",
        type=int,
        help="write calls side by side (the connector's push_concurrency; default: the connector's own)",
    )
    parser.add_argument("--skip-peer", action="store_true", help="leave out the hand-written peer")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--timeout",
        type=float,
        default=30.0,
        help="the connector's request timeout, seconds (the sandbox answers a first query over a "
        "million records, four side by side, in more than the default 30)",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        help="records per ledger transaction (the connector's batch_size; default: the shipped one)",
    )
    parser.add_argument(
        "--decide-ahead-from",
        metavar="PEOPLE|off",
        help="the connector's decide_ahead_from: from how many people examined a second process "
        "decides ahead (default: the shipped one; off: never)",
    )
    parser.add_argument("--profile", metavar="DIR", help="write a cProfile of each consentsync sync here")
    args = parser.parse_args(argv)
    if args.profile:
        Path(args.profile).mkdir(parents=True, exist_ok=True)
        for name in ("full", "next", "incremental"):
            PROFILE_ENV[name] = {"SYNC_BENCH_PROFILE": str(Path(args.profile) / f"{name}.prof")}
    measured = {size: bench_size(size, args) for size in args.contacts}
    if len(measured) > 1:
        sizes = sorted(measured)
        small, large = measured[sizes[0]]["full"], measured[sizes[-1]]["full"]
        ratio = (large["cpu"] / large["records"]) / (small["cpu"] / small["records"])
        print(f"\nCPU per record, {sizes[-1]:,} against {sizes[0]:,} contacts: {ratio:.2f}x")
        if "written" in small and "written" in large:
            grown = _kib_per_record(large) / _kib_per_record(small)
            print(f"bytes written per record, {sizes[-1]:,} against {sizes[0]:,} contacts: {grown:.2f}x")
        print(
            "peak RSS of the full sync: "
            + ", ".join(f"{size:,}: {measured[size]['full']['rss_mib']:.0f} MiB" for size in sizes)
        )
    return 0


if __name__ == "__main__":
    if os.environ.get("SYNC_BENCH_PROFILE"):
        import cProfile

        cProfile.run("main()", os.environ["SYNC_BENCH_PROFILE"])
        sys.exit(0)
    sys.exit(main())
