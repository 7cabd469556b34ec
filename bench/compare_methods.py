"""One protocol, every alignment method, one reward: the comparison of issue 14.

    python bench/compare_methods.py --reward geometry --methods all --seeds 2 --steps 40 --out outputs/cmp/geometry
    python bench/compare_methods.py --reward colorfulness --methods refl,nabla-r2d3 --seeds 3 --minutes 10 --sweep --out DIR
    python bench/compare_methods.py ... --resume          # the same command again: finished runs are skipped
    python bench/compare_methods.py ... --report-only     # the same command again: only the report is rewritten

The command line of the engine's study library, ``engine/study/`` (``python -m engine.study`` is the same):
plan, budgeted runs with resume, the sweep, the summary and the paper's claims, the report and figures.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine import study  # noqa: E402

PROG = "python bench/compare_methods.py"


def parser():
    return study.parser(PROG, __doc__)


def main(argv=None) -> None:
    study.main(argv, prog=PROG, usage=__doc__)


if __name__ == "__main__":
    main()
