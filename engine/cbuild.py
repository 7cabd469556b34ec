"""Builds the engine's small C kernels on first use: the system C compiler, a per-user cache keyed by the
source, the flags and the CPU, and an atomic install so concurrent builders never load a half-written
library. The callers fall back to PyTorch when this raises (no compiler, read-only cache, ...)."""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

CFLAGS = ("-O3", "-march=native", "-ffast-math", "-fopenmp-simd", "-pthread", "-fPIC", "-std=c11")


def cache_dir() -> Path:
    root = os.environ.get("R2D3_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"), "r2d3studio")
    return Path(root) / "native"


def _cpu_signature() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _compiler() -> str | None:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return name
    return None


def wide_vectors() -> tuple[str, ...]:
    """Flags that let loops use 512-bit vectors where the CPU has them (x86: gcc and clang prefer 256 bits)."""
    return ("-mprefer-vector-width=512",) if platform.machine().lower() in ("x86_64", "amd64") else ()


def build(source: Path, defines: tuple[str, ...] = (), extra: tuple[str, ...] = ()) -> Path:
    """The shared library compiled from ``source`` with ``-D`` ``defines`` and ``extra`` flags, built once per
    source, flags and CPU."""
    cc = _compiler()
    if cc is None:
        raise RuntimeError("no C compiler found (install gcc, or set CC)")
    flags = [*CFLAGS, *extra, *(f"-D{d}" for d in defines)]
    key = hashlib.sha256(source.read_bytes() + " ".join([cc, *flags, _cpu_signature()]).encode()).hexdigest()[:16]
    out = cache_dir() / f"{source.stem}_{'_'.join(d.split('=')[-1] for d in defines) or 'lib'}_{key}.so"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        obj, lib = Path(tmp) / "k.o", Path(tmp) / "k.so"
        # Compile with -ffast-math (vectorised exp) but link without it: linking a shared library
        # with -ffast-math would pull in crtfastmath.o and flush denormals in the whole process.
        cmds = [
            [cc, *flags, "-c", str(source), "-o", str(obj)],
            [cc, "-shared", "-pthread", str(obj), "-o", str(lib), "-lm"],
        ]
        for cmd in cmds:
            result = subprocess.run(cmd, capture_output=True, text=True)
            if result.returncode != 0:
                raise RuntimeError(f"{' '.join(cmd)} failed:\n{result.stderr[-2000:]}")
        os.replace(lib, out)
    return out
