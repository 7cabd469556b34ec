"""Atomic file writes and folder swaps: a reader (or a crash) never sees half a file or half a folder.

A file is written to a temporary name beside its target and renamed over it (``os.replace`` is atomic on
one file system). A folder is built under a temporary name and swapped in; the old one is kept under a
third name until the new one is in place, so a crash between the renames leaves one complete folder.
Weights are fingerprinted by one function, ``tensors_digest``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Callable, Iterable, Iterator


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
def scratch_folder(dest: str | Path) -> Iterator[Path]:
    """``with scratch_folder(dest) as tmp:`` a new empty folder beside ``dest`` (``.<name>.tmp-<random>``), removed
    on leaving unless it was moved away (e.g. renamed to ``dest``) inside the block."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".{dest.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def building_folder(dest: str | Path, *, tmp: str | Path | None = None, old: str | Path | None = None) -> Iterator[Path]:
    """``with building_folder(dest) as tmp:`` fill ``tmp``; on success it replaces ``dest`` (see swap_folder),
    on an exception it is removed and ``dest`` is untouched. ``tmp``, ``old``: fixed names for the folder being
    built and the previous one (a reader can then find them after a crash); a stale ``tmp`` is removed first."""
    if tmp is None:
        with scratch_folder(dest) as scratch:
            yield scratch
            swap_folder(scratch, dest, old=old)
        return
    tmp = Path(tmp)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        swap_folder(tmp, dest, old=old)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def swap_folder(new: str | Path, dest: str | Path, *, old: str | Path | None = None) -> None:
    """Puts the complete folder ``new`` at ``dest``: the old ``dest`` moves aside first (to ``old``, replacing
    whatever is there; default a random hidden name) and is removed last."""
    new, dest = Path(new), Path(dest)
    old = Path(old) if old is not None else dest.parent / f".{dest.name}.old-{uuid.uuid4().hex[:8]}"
    if dest.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(dest, old)
    try:
        os.replace(new, dest)
    except BaseException:
        if old.exists() and not dest.exists():
            os.replace(old, dest)  # put the previous folder back
        raise
    shutil.rmtree(old, ignore_errors=True)


def tensors_digest(named: Iterable[tuple[str, object]], *, bf16: bool = False, header: str = "{name}:{dtype}:{shape};") -> str:
    """SHA-256 (hex) of named tensors, in the order given: per tensor ``header`` (``name``, ``dtype``, ``shape`` as
    a list) then its bytes. ``bf16``: floating tensors are rounded to bf16 and hashed as int16 first, so the fp32,
    fp16 and bf16 copies of one checkpoint agree. (The header is a parameter only because stored fingerprints
    were made with two orders: engine.models.lora.base_fingerprint's and engine.align.evaluate's.)"""
    import torch

    digest = hashlib.sha256()
    for name, t in named:
        t = t.detach()
        if bf16 and t.is_floating_point():
            t = t.to(torch.bfloat16).view(torch.int16)
        t = t.cpu().contiguous()
        digest.update(header.format(name=name, dtype=t.dtype, shape=list(t.shape)).encode())
        digest.update((t.view(torch.int16) if t.dtype == torch.bfloat16 else t).numpy().tobytes())
    return digest.hexdigest()
