"""What the ledger's writer lock costs on PostgreSQL: N one-row write transactions through
consentsync's engine (the advisory lock taken at BEGIN) and through a plain SQLAlchemy engine
(the floor), in alternating blocks, in a schema of their own (created and dropped).

    python bench/writer_lock_cost.py [--url postgresql://postgres@127.0.0.1:5432/test] [--n 1000]

Prints the best per-transaction time of each and the difference. A sync commits a page (tens to
hundreds of milliseconds of work) a transaction; a capture request, one or two.
"""

from __future__ import annotations

import argparse
import os
import time
import uuid
from urllib.parse import quote

from sqlalchemy import Engine, create_engine, text

from consentsync.ledger.engine import make_engine, normalise_url


def per_transaction_us(engine: Engine, n: int) -> float:
    start = time.perf_counter()
    for i in range(n):
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO t (v) VALUES (:v)"), {"v": i})
    return (time.perf_counter() - start) / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default = os.environ.get("CONSENTSYNC_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--url", default=default)
    parser.add_argument("--n", type=int, default=1000)
    args = parser.parse_args()
    schema = f"lockbench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(normalise_url(args.url))
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        conn.execute(text(f'CREATE TABLE "{schema}".t (id serial PRIMARY KEY, v int)'))
    url = f"{args.url}{'&' if '?' in args.url else '?'}options={quote(f'-csearch_path={schema}')}"
    try:
        locked, floor = make_engine(url), create_engine(normalise_url(url))
        per_transaction_us(locked, 200), per_transaction_us(floor, 200)  # warm both pools
        best_locked = min(per_transaction_us(locked, args.n) for _ in range(5))
        best_floor = min(per_transaction_us(floor, args.n) for _ in range(5))
        print(f"one-row write transaction, best of 5 x {args.n}:")
        print(f"  floor (plain engine)         {best_floor:7.0f} us")
        print(f"  consentsync (writer lock)    {best_locked:7.0f} us")
        cost, ratio = best_locked - best_floor, best_locked / best_floor
        print(f"  lock's cost                  {cost:+7.0f} us ({ratio:.2f}x the floor)")
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))


if __name__ == "__main__":
    main()
