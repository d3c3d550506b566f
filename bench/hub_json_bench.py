"""What the capture API's duplicate-key check costs against the JSON parse FastAPI makes anyway.

    .venv/bin/python bench/hub_json_bench.py              # bodies of up to BODY_MAX (8 MiB)
    .venv/bin/python bench/hub_json_bench.py --repeat 5 --size 1048576

Every JSON body the API reads is parsed by FastAPI (``json.loads``), then, once the API key is
checked, tested for an object that names a key twice (``hub.api.names_a_key_twice``); only a body
that has one is parsed again, in Python, to say which key and where (``hub.api.duplicate_key``,
in a worker thread). For each shape of body, at the size given, this prints the CPU time (best
of ``--repeat``) of:

``parse``
    ``json.loads``: what FastAPI spends on the body anyway, the unit of the ratios;
``check``
    ``names_a_key_twice`` on the body: what every request pays;
``named``
    ``duplicate_key`` on the same body with one key named twice in its last object: the worst
    place for it, and what a refused request pays on top of the parse.

The shapes: many empty objects (a hook per object costs most there), many small objects, a batch
of consents as a capture source sends it (BATCH_MAX of them, whatever the size), one long
string, and objects nested as deep as the parser goes around many small ones.
"""

import argparse
import json
import time
from collections.abc import Callable
from typing import Any

from consentsync.hub.api import BODY_MAX, duplicate_key, names_a_key_twice
from consentsync.hub.capture import BATCH_MAX

TWICE = b'{"a":1,"a":2}'


def _filled(head: bytes, item: bytes, tail: bytes, size: int) -> bytes:
    """``head``, as many ``item``s as fit in ``size`` bytes (comma-separated), then ``tail``."""
    count = max(1, (size - len(head) - len(tail) - len(TWICE) - 1) // (len(item) + 1))
    return head + b",".join([item] * count) + tail


def shapes(size: int) -> dict[str, tuple[bytes, bytes]]:
    """Each shape's body without a key named twice, and with one in its last object."""
    found: dict[str, tuple[bytes, bytes]] = {}
    for name, item in (("empty objects", b"{}"), ("small objects", b'{"a":1,"b":"x"}')):
        body = _filled(b"[", item, b"]", size)
        found[name] = (body, body[:-1] + b"," + TWICE + b"]")
    consent = {
        "email": "someone.with.a.longish.name@example.org",
        "purpose": "newsletter",
        "status": "granted",
        "notice_version": "2026-05",
        "evidence_ref": "form 7, page /signup",
    }
    batch = json.dumps({"consents": [consent] * BATCH_MAX}).encode()
    found[f"batch of {BATCH_MAX} consents"] = (batch, batch[:-3] + b',"status":"withdrawn"}]}')
    text = b'{"email":"' + b"x" * (size - 40) + b'"}'
    found["one long string"] = (text, text[:-1] + b',"email":"y"}')
    depth = 400  # json.loads goes about 990 deep; a Python hook's frames take some of that
    deep = _filled(b'{"a":' * depth + b"[", b'{"a":1,"b":"x"}', b"]" + b"}" * depth, size)
    found[f"{depth} deep, small objects"] = (deep, deep[: -depth - 1] + b"," + TWICE + b"]" + b"}" * depth)
    return found


def cpu(work: Callable[[bytes], Any], body: bytes, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.process_time()
        work(body)
        best = min(best, time.process_time() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=int, default=BODY_MAX, help="body size in bytes (default: BODY_MAX)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure; the best counts")
    args = parser.parse_args()
    print(f"{'shape':32} {'bytes':>9} {'parse ms':>9} {'check':>7} {'named':>7}")
    for name, (body, twice) in shapes(args.size).items():
        assert duplicate_key(body) is None and duplicate_key(twice) is not None, name
        parse = cpu(json.loads, body, args.repeat)
        check = cpu(names_a_key_twice, body, args.repeat)
        named = cpu(duplicate_key, twice, args.repeat)
        print(f"{name:32} {len(body):>9} {parse * 1000:>9.1f} {check / parse:>6.2f}x {named / parse:>6.2f}x")


if __name__ == "__main__":
    main()
