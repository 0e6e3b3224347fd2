"""Which directories grokcopy wrote, and of what kind: the one rule for what a command may replace.

    output_kind(path)     # "run" | "corpus" | "export" | None (not grokcopy's, or missing)

Each kind of output is recognised by a mark grokcopy puts there when it creates the directory:

    run      <run>/.grokcopy-run       written by train.py before anything else in the directory
                                        (a run from before the marker: a config.json with preset and model)
    export   <dir>/.grokcopy-export    written with the export; lists the files the export wrote
    corpus   <dir>/meta.json           the corpus format's own mark (data/FORMAT.md), or a
                                        `.NAME.prepare-*` directory that prepare is building

The rule every command follows: a command writes into a directory that is new, empty, or of its
own kind; `--overwrite` replaces only an output of the command's own kind, and only the files that
output lists as its own; nothing replaces a run, a corpus or the command's own input; a temp file
is deleted only when its name is one grokcopy gives its own temp files. Reading inputs (prepare)
skips every grokcopy output inside them, by the same marks.

Only json and pathlib here: data/ (prepare) and model/ (train, export) both use it.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

RUN_MARKER = ".grokcopy-run"
EXPORT_MARKER = ".grokcopy-export"
CORPUS_META = "meta.json"
MARKERS = {"run": RUN_MARKER, "export": EXPORT_MARKER}
# what prepare names the directory it builds a corpus in, beside --out (data/prepare.py)
PREPARE_BUILD_DIR = re.compile(r"\..+\.prepare-.+")
# tempfile.mkstemp's random part: 8 characters of this alphabet (CPython's _RandomNameSequence)
MKSTEMP_PART = r"[a-z0-9_]{8}"
KIND_NAMES = {"run": "a grokcopy run directory", "corpus": "a grokcopy corpus", "export": "a grokcopy export"}


def _json_object(path: Path) -> dict | None:
    try:
        value = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return value if isinstance(value, dict) else None


def output_kind(path: str | os.PathLike) -> str | None:
    """The kind of grokcopy output `path` is, by its mark, or None (not a directory, or not grokcopy's)."""
    path = Path(path)
    if not path.is_dir():
        return None
    for kind, marker in MARKERS.items():
        if (path / marker).is_file():
            return kind
    meta = _json_object(path / CORPUS_META) if (path / CORPUS_META).is_file() else None
    if meta is not None and {"format_version", "splits", "tokenizer"} <= set(meta):
        return "corpus"
    if PREPARE_BUILD_DIR.fullmatch(path.name):
        return "corpus"
    config = _json_object(path / "config.json") if (path / "config.json").is_file() else None
    if config is not None and {"preset", "model"} <= set(config):
        return "run"  # a run written before the marker existed
    return None


def write_marker(path: Path, kind: str, **fields) -> None:
    """Mark `path` as grokcopy's output of `kind` (a small JSON file; fields are recorded in it)."""
    from grokcopy.data.atomic import write_atomically  # not at import: keeps this module dependency-free

    text = json.dumps({"kind": kind, "format": 1, **fields}, indent=2) + "\n"
    write_atomically(path / MARKERS[kind], lambda f: f.write(text.encode()))


def read_marker(path: Path, kind: str) -> dict:
    """The marker's fields ({} when it is missing or unreadable)."""
    return _json_object(path / MARKERS[kind]) or {}


def listed(paths: list, at_most: int = 5) -> str:
    names = ", ".join(str(p) for p in paths[:at_most])
    return names + (f" and {len(paths) - at_most} more" if len(paths) > at_most else "")


def describe_contents(path: Path) -> str:
    """What a non-empty directory holds, for a refusal: its kind, or its first entries."""
    kind = output_kind(path)
    if kind:
        return KIND_NAMES[kind]
    return f"files grokcopy did not write ({listed(sorted(p.name for p in path.iterdir()))})"


def is_inside(path: Path, folder: Path) -> bool:
    """Whether `path` is `folder` or lies under it (both resolved: symlinks and `..` followed)."""
    path, folder = Path(path).resolve(), Path(folder).resolve()
    return path == folder or folder in path.parents
