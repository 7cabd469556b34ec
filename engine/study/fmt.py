"""How the study writes: numbers in its tables and sentences, and its progress lines on stderr."""

from __future__ import annotations

import math
import sys


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def fmt(v) -> str:
    """A setting's value as written in run names and the report (1e-3 -> '0.001', 3 -> '3')."""
    return f"{v:g}" if isinstance(v, float) else str(v)


def num(v, digits=4) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "—"
    return f"{v:.{digits}g}"


def pm(mean, std) -> str:
    if not math.isfinite(mean):
        return "—"
    return num(mean) if not math.isfinite(std) else f"{num(mean)} ± {num(std, 2)}"


def signed(v, digits=4) -> str:
    return "—" if not math.isfinite(v) else f"{v:+.{digits}g}"
