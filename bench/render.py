"""Renderer benchmark: forward and backward seconds and peak memory, one JSON object per line.

    python bench/render.py                    # the issue's grid: 1k/4k/16k Gaussians x 64/128/256 px
    python bench/render.py --quick            # the two headline rows only
    python bench/render.py --cores native pytorch --scenes dust shell

Every row renders 4 views (rgb, alpha, depth, normals) and back-propagates a loss on all outputs to
every Gaussian parameter. Times are medians over --repeats runs after a warm-up; peak_mb is the peak
resident memory above the level before the row (measured in a fresh subprocess per row).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from bench.scenes import SCENES, bench_cameras  # noqa: E402
from engine.render import RenderSettings, render  # noqa: E402
from engine.render.native import native_available  # noqa: E402

GRID = [(n, r) for n in (1024, 4096, 16384) for r in (64, 128, 256)]
QUICK = [(4096, 128), (16384, 256)]


def run_row(scene: str, n: int, res: int, core: str, backend: str, repeats: int) -> dict:
    torch.set_num_threads(os.cpu_count() or 1)
    device = "cuda" if backend == "gsplat" else "cpu"
    g = SCENES[scene](n).to(device)
    cams = bench_cameras(4)
    params = [t.requires_grad_() for t in g.fields().values()]
    settings = RenderSettings(core=core)
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    fwd, bwd = [], []
    for i in range(repeats + 1):
        t0 = time.perf_counter()
        out = render(g, cams, res, backend=backend, settings=settings)
        sync()
        t1 = time.perf_counter()
        loss = out.rgb.mean() + out.alpha.mean() + out.depth.mean() + out.normal.mean()
        loss.backward()
        sync()
        t2 = time.perf_counter()
        for p in params:
            p.grad = None
        if i:  # the first run warms up (and builds the native core if needed)
            fwd.append(t1 - t0)
            bwd.append(t2 - t1)
    peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base_rss) / 1024
    f, b = statistics.median(fwd), statistics.median(bwd)
    return {
        "backend": backend, "core": core if backend == "torch" else "cuda", "scene": scene, "gaussians": n, "views": 4,
        "resolution": res, "forward_s": round(f, 4), "backward_s": round(b, 4), "total_s": round(f + b, 4),
        "min_total_s": round(min(a + c for a, c in zip(fwd, bwd)), 4), "peak_mb": round(peak, 1),
        "threads": torch.get_num_threads(), "repeats": repeats,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenes", nargs="+", default=["dust", "shell"], choices=sorted(SCENES))
    ap.add_argument("--cores", nargs="+", default=None, help="torch-backend cores: native, pytorch (default: native, plus pytorch on the quick rows)")
    ap.add_argument("--quick", action="store_true", help="only 4k@128 and 16k@256")
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--row", help=argparse.SUPPRESS)  # internal: run one row in this process
    args = ap.parse_args()
    if args.row:
        scene, n, res, core, backend = args.row.split(",")
        print(json.dumps(run_row(scene, int(n), int(res), core, backend, args.repeats)), flush=True)
        return

    rows = []
    sizes = QUICK if args.quick else GRID
    cores = args.cores or ["native"]
    if "native" in cores and not native_available():
        print(json.dumps({"warning": "native core unavailable; benchmarking the pure-PyTorch core"}))
        cores = ["pytorch"]
    for scene in args.scenes:
        for n, res in sizes:
            for core in cores:
                rows.append((scene, n, res, core, "torch"))
            if args.cores is None and (n, res) in QUICK and "pytorch" not in cores:
                rows.append((scene, n, res, "pytorch", "torch"))  # the pure-PyTorch baseline, same run
            if torch.cuda.is_available():
                rows.append((scene, n, res, "auto", "gsplat"))
    for row in rows:  # a fresh process per row, so peak memory is that row's alone
        cmd = [sys.executable, __file__, "--row", ",".join(map(str, row)), "--repeats", str(args.repeats)]
        out = subprocess.run(cmd, capture_output=True, text=True)
        print(out.stdout.strip() or json.dumps({"row": row, "error": out.stderr.strip()[-500:]}), flush=True)


if __name__ == "__main__":
    main()
