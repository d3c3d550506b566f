"""The example mapping files, shipped as package data and copied out by
``consentsync mapping examples [VENDOR] -o DIR``.

Each connector package carries its own examples in a ``mappings/`` folder beside its module
(``consentsync_salesforce/mappings/contact.yaml``), found through its entry point in
``consentsync.connectors``, so a third-party connector ships its examples the same way. What is
not a vendor's (the JSON Schema of the format and its README) lives in ``consentsync/mappings/``.

Copied out, the files keep the layout the docs use: ``DIR/<vendor>/<object>.yaml`` beside
``DIR/schema.json``, each file's first line pointing editors at ``../schema.json``.
"""

from __future__ import annotations

import re
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path

from consentsync.domain import InvalidInput
from consentsync.sdk.registry import available

SUFFIXES = (".yaml", ".yml")
SCHEMA_LINE = re.compile(r"\A# yaml-language-server: \$schema=\S*\n")
COPIED_SCHEMA_LINE = "# yaml-language-server: $schema=../schema.json\n"


def core_files() -> Traversable:
    """``schema.json`` and ``README.md`` of the mapping format."""
    return files("consentsync") / "mappings"


def vendor_dirs() -> dict[str, Traversable]:
    """Each installed connector with example mappings: vendor -> its ``mappings/`` folder."""
    found: dict[str, Traversable] = {}
    for vendor, entry in sorted(available().items()):
        try:
            folder = files(entry.module) / "mappings"
        except (ImportError, TypeError):
            continue  # a broken plugin has no examples to give; `consentsync connectors` says why
        if folder.is_dir() and examples_in(folder):
            found[vendor] = folder
    return found


def examples_in(folder: Traversable) -> list[Traversable]:
    return sorted(
        (item for item in folder.iterdir() if item.is_file() and item.name.endswith(SUFFIXES)),
        key=lambda item: item.name,
    )


def vendor_dir(vendor: str) -> Traversable:
    known = vendor_dirs()
    if vendor not in known:
        names = ", ".join(known) or "none"
        raise InvalidInput(f"no example mappings for vendor {vendor!r}: known are {names}")
    return known[vendor]


def vendor_path(vendor: str) -> Path:
    """The vendor's example folder as a file-system path (installed packages are plain folders)."""
    folder = vendor_dir(vendor)
    if not isinstance(folder, Path):
        raise InvalidInput(f"the example mappings of {vendor!r} are not in a folder ({folder})")
    return folder


def plan_copy(vendor: str | None, out: Path) -> list[tuple[Traversable, Path]]:
    """What ``copy_examples`` writes, source -> destination, without writing anything."""
    vendors = {vendor: vendor_dir(vendor)} if vendor else vendor_dirs()
    plan = [(core_files() / "schema.json", out / "schema.json")]
    plan += [
        (item, out / name / item.name) for name, folder in vendors.items() for item in examples_in(folder)
    ]
    return plan


def copy_examples(vendor: str | None, out: Path, *, force: bool = False) -> list[Path]:
    """Copies the examples of ``vendor`` (every vendor's when None) and the schema into ``out``.
    Refuses, writing nothing, when a file is there already, unless ``force``."""
    plan = plan_copy(vendor, out)
    if out.exists() and not out.is_dir():
        raise InvalidInput(f"{out}: not a folder (-o takes the folder to copy the examples into)")
    existing = [str(target) for _, target in plan if target.exists()]
    if existing and not force:
        shown = ", ".join(existing[:3]) + (f" and {len(existing) - 3} more" if len(existing) > 3 else "")
        verb = "exists" if len(existing) == 1 else "exist"
        raise InvalidInput(f"{shown} {verb} already: nothing was copied (--force overwrites)")
    written: list[Path] = []
    for source, target in plan:
        data = source.read_bytes()
        if target.suffix in SUFFIXES:
            text = SCHEMA_LINE.sub(COPIED_SCHEMA_LINE, data.decode("utf-8"), count=1)
            data = text.encode("utf-8")
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        except OSError as error:
            raise InvalidInput(f"{target}: cannot write it ({error.strerror or error})") from error
        written.append(target)
    return written
