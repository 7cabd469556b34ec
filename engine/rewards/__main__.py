"""``python -m engine.rewards --list``: the rewards, what they need and whether they can run here."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict

from . import REWARDS, list_rewards


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine.rewards", description=__doc__)
    parser.add_argument("--list", action="store_true", help="list the rewards and their availability (the default)")
    parser.add_argument("--weights", action="append", default=[], metavar="NAME=PATH",
                        help="where a reward's weights are, e.g. hpsv2=~/weights/HPS_v2.1_compressed.pt (repeatable)")
    parser.add_argument("--json", action="store_true", help="one JSON object per reward")
    args = parser.parse_args(argv)
    weights = {}
    for item in args.weights:
        name, sep, path = item.partition("=")
        if not sep or name not in REWARDS:
            parser.error(f"--weights takes NAME=PATH with NAME in {', '.join(REWARDS)}, got {item!r}")
        weights[name] = path
    infos = list_rewards(weights)
    if args.json:
        for info in infos:
            print(json.dumps(asdict(info)))
        return 0
    for info in infos:
        lo, hi = info.value_range
        print(f"{info.name:13s} {'available' if info.available else 'missing  '}  "
              f"{'higher' if info.higher_is_better else 'lower'} is better, usual {lo:g}..{hi:g}, needs {'+'.join(info.needs)}")
        print(f"{'':13s} {info.description}")
        print(f"{'':13s} {info.detail}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
