"""Atomic file writes and folder swaps: a reader (or a crash) never sees half a file or half a folder.

A file is written to a temporary name beside its target and renamed over it (``os.replace`` is atomic on
one file system). A folder is built under a temporary name and swapped in; the old one is kept under a
third name until the new one is in place, so a crash between the renames leaves one complete folder.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Callable, Iterator


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    return atomic_save(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_text(path: str | Path, text: str, encoding: str = "utf-8") -> Path:
    return atomic_save(path, lambda tmp: tmp.write_text(text, encoding=encoding))


def atomic_write_json(path: str | Path, data, **dump_options) -> Path:
    """``data`` as JSON (indent 2 unless told), ending in a newline."""
    dump_options.setdefault("indent", 2)
    return atomic_write_text(path, json.dumps(data, **dump_options) + "\n")


def atomic_save(path: str | Path, write: Callable[[Path], object]) -> Path:
    """Calls ``write(tmp)`` on a temporary path beside ``path`` (same suffix, for writers that read it), then
    renames it over ``path``; the temporary file is removed if ``write`` fails."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}")
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


@contextlib.contextmanager
def building_folder(dest: str | Path) -> Iterator[Path]:
    """``with building_folder(dest) as tmp:`` fill ``tmp``; on success it replaces ``dest`` (see swap_folder),
    on an exception it is removed and ``dest`` is untouched."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".{dest.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        swap_folder(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def swap_folder(new: str | Path, dest: str | Path) -> None:
    """Puts the complete folder ``new`` at ``dest``: the old ``dest`` moves aside first and is removed last."""
    new, dest = Path(new), Path(dest)
    old = dest.parent / f".{dest.name}.old-{uuid.uuid4().hex[:8]}"
    if dest.exists():
        os.replace(dest, old)
    try:
        os.replace(new, dest)
    except BaseException:
        if old.exists() and not dest.exists():
            os.replace(old, dest)  # put the previous folder back
        raise
    shutil.rmtree(old, ignore_errors=True)
