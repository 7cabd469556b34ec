"""Studio under load: N concurrent gradio_client users generating while a finetune runs, on 127.0.0.1.

    python bench/load.py                                  # 8 users x 2 requests, 6 denoising steps, 12 frames
    python bench/load.py --users 8 --requests 1 --steps 4 --finetune-steps 4
    python bench/load.py --users 2 --requests 1 --steps 4 --finetune-steps 3 --batch-size 1 --sampler-steps 4

Starts the studio in this process on a free local port (runs saved to a temporary folder, removed at the
end), warms it up with one generate request, then:

1. runs a finetune alone (``/finetune``, by default Nabla-R2D3 on geometry (the engine's method and reward) with the studio's batch 2,
   10 sampler steps, 64 px reward renders; no sample strips) and reads each step's time from the streamed
   metric rows (``sample_seconds + update_seconds``);
2. runs the same finetune again and, once its first update has streamed (the trainer exists), starts
   ``--users`` client threads, each its own gradio_client session sending ``--requests`` ``/generate``
   requests one after the other (tiny model, base, ``--steps`` denoising steps, ``--frames`` turntable
   frames; the result files are downloaded, as a page would);
3. prints one JSON line per phase and a summary line: users, requests, failed requests (target 0),
   p50 / p95 / max generate latency, the finetune's mean step time alone and under load and their ratio.

Latency is seconds from submit to result on the client, so it includes the time spent waiting in
Gradio's queue: ``/generate`` runs with ``concurrency_limit=1``, so concurrent requests are served one at
a time and the last user's latency is about the sum of the others' service times. That is expected; the
figure to watch is failures (0) and whether the finetune keeps stepping meanwhile (its own event,
``concurrency_limit=1`` with id "finetune", trains in a thread on its own copy of the model). Step 1 of
each run is left out of the means (warm-up); a step of the loaded run counts as "under load" when at
least half of it (by the client's clock) lies between the first request's submit and the last result.
Bounded: ``--users`` x ``--requests`` requests, each given up (and counted failed) after ``--timeout`` s,
and the finetune given up after ``--finetune-timeout`` s. Exits 1 if any request failed or a finetune
did not finish.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

PROMPTS = ["a red chair", "a blue car with yellow wheels", "a green mushroom with a white stem", "a yellow lamp",
           "a purple rocket", "an orange cup", "a white snowman", "a pink umbrella", "a brown table", "a black robot"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve(runs_dir: Path):
    """The studio on a free local port (as tests/test_app.py's _serve), its runs under ``runs_dir``."""
    from app import catalogue
    from app.ui import build_demo

    catalogue.set_runs_dir(runs_dir)
    demo = build_demo().queue()
    port = _free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        with contextlib.redirect_stdout(sys.stderr):  # gradio's "Closing server ..." line: keep stdout JSON only
            demo.close()


def client(url: str, downloads: Path):
    from gradio_client import Client

    return Client(url, verbose=False, download_files=str(downloads), analytics_enabled=False)


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in [0, 100])."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, min(len(ordered), -(-len(ordered) * q // 100)))
    return ordered[int(rank) - 1]


def _rows(table) -> list[dict]:
    if not isinstance(table, dict) or table.get("data") is None:
        return []
    return [dict(zip(table["headers"], row)) for row in table["data"]]


class Finetune:
    """One finetune (/finetune, then /follow) watched in a thread: each metric row with the client time it arrived."""

    def __init__(self, url: str, downloads: Path, settings: dict, timeout: float):
        self.settings, self.timeout = settings, timeout
        self.rows: list[dict] = []
        self.arrived: list[float] = []  # perf_counter() when each row was first seen
        self.started = threading.Event()  # the first streamed update (the trainer is built)
        self.error: str | None = None
        self.status = ""
        self.client = client(url, downloads)
        self.thread = threading.Thread(target=self._watch, name="bench-finetune", daemon=True)

    def _watch(self) -> None:
        t0 = time.perf_counter()
        try:
            run = self.client.predict(api_name="/finetune", **self.settings)  # a server job: its run name
            job = self.client.submit(run, api_name="/follow")  # its views as they change, to its end
            seen = 0
            while True:
                outputs = job.outputs()
                for update in outputs[seen:]:
                    self.status = update[0] or self.status
                    if "**Waiting" not in self.status and "**Starting" not in self.status:
                        self.started.set()  # the trainer is built (step 1 runs)
                    rows = _rows(update[3])
                    for row in rows[len(self.rows):]:
                        self.rows.append(row)
                        self.arrived.append(time.perf_counter())
                seen = len(outputs)
                if job.done():
                    break
                if time.perf_counter() - t0 > self.timeout:
                    job.cancel()
                    self.error = f"finetune gave up after {self.timeout:.0f} s at step {len(self.rows)}"
                    return
                time.sleep(0.05)
            final = job.result()
            self.status = final[0]
            for row in _rows(final[3])[len(self.rows):]:
                self.rows.append(row)
                self.arrived.append(time.perf_counter())
            if "Run finished" not in self.status:
                self.error = f"finetune did not finish: {self.status[:300]}"
        except Exception as err:  # noqa: BLE001 - reported in the JSON line
            self.error = f"{type(err).__name__}: {err}"
        finally:
            self.started.set()

    def start(self) -> "Finetune":
        self.thread.start()
        return self

    def join(self) -> "Finetune":
        self.thread.join(self.timeout + 60)
        if self.thread.is_alive() and not self.error:
            self.error = "finetune watcher still running after its timeout"
        return self

    def steps(self) -> list[tuple[int, float, float, float]]:
        """(step, seconds, start, end) per row; start/end on the client's clock (end = row arrival)."""
        out = []
        for row, end in zip(self.rows, self.arrived):
            seconds = float(row["sample_seconds"]) + float(row["update_seconds"])
            out.append((int(row["step"]), seconds, end - seconds, end))
        return out


def mean_step(steps: list[tuple[int, float, float, float]]) -> float | None:
    kept = [s for s in steps if s[0] > 1] or steps  # step 1 is the warm-up
    return statistics.mean(s[1] for s in kept) if kept else None


def user(i: int, url: str, downloads: Path, args, latencies: list, failures: list, windows: list) -> None:
    try:
        c = client(url, downloads / f"user{i}")
    except Exception as err:  # noqa: BLE001
        failures.extend({"user": i, "request": k, "error": f"client: {type(err).__name__}: {err}"[:300]}
                        for k in range(args.requests))
        return
    for k in range(args.requests):
        prompt, seed = PROMPTS[(i + k) % len(PROMPTS)], i * args.requests + k
        t0 = time.perf_counter()
        job = None
        try:
            job = c.submit(prompt, seed, args.steps, args.guidance, args.frames, "tiny", "base", api_name="/generate")
            ply, video, views, normals, _ply, info = job.result(timeout=args.timeout)
            if not (ply and video and str(ply).endswith(".ply") and prompt in info):
                raise RuntimeError(f"unexpected result: {info!r}")
            t1 = time.perf_counter()
            latencies.append(t1 - t0)
            windows.append((t0, t1))
        except Exception as err:  # noqa: BLE001 - counted and reported
            if job is not None:
                job.cancel()
            windows.append((t0, time.perf_counter()))
            why = f"no result within --timeout {args.timeout:g} s" if isinstance(err, TimeoutError) else err
            failures.append({"user": i, "request": k, "seconds": round(time.perf_counter() - t0, 1),
                             "error": f"{type(err).__name__}: {why}"[:300]})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--users", type=int, default=8, help="concurrent gradio_client users")
    p.add_argument("--requests", type=int, default=2, help="generate requests per user, one after the other")
    p.add_argument("--steps", type=int, default=6, help="denoising steps per generate request (the slider's 4-50)")
    p.add_argument("--frames", type=int, default=12, help="turntable frames per generate request (12-96, by 12)")
    p.add_argument("--guidance", type=float, default=4.5)
    p.add_argument("--timeout", type=float, default=600, help="seconds before a generate request counts as failed")
    p.add_argument("--finetune-steps", type=int, default=4)
    p.add_argument("--method", default="nabla-r2d3")
    p.add_argument("--reward", default="geometry")
    p.add_argument("--batch-size", type=int, help="finetune batch (default: the studio's, 2)")
    p.add_argument("--sampler-steps", type=int, help="finetune sampler steps (default: the studio's, 10)")
    p.add_argument("--render-resolution", type=int, help="finetune reward renders, px (default: the studio's, 64)")
    p.add_argument("--finetune-timeout", type=float, default=1200, help="seconds before a finetune is given up")
    args = p.parse_args()
    if not 4 <= args.steps <= 50 or not 12 <= args.frames <= 96 or args.frames % 12:
        p.error("--steps must be in [4, 50] and --frames one of 12, 24, ..., 96 (the Generate tab's sliders)")

    import torch

    settings = {"method": args.method, "reward": args.reward, "steps": args.finetune_steps, "sample_every": 0}
    for key in ("batch_size", "sampler_steps", "render_resolution"):
        if getattr(args, key) is not None:
            settings[key] = getattr(args, key)
    bad = False
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="r2d3_load_") as tmp, serve(Path(tmp) / "runs") as url:
        downloads = Path(tmp) / "downloads"
        # warm-up: loads the shared tiny model and builds the renderer before anything is timed
        t0 = time.perf_counter()
        client(url, downloads / "warmup").predict(PROMPTS[0], 0, args.steps, args.guidance, args.frames, "tiny", "base",
                                                  api_name="/generate")
        print(json.dumps({"phase": "warmup_generate", "seconds": round(time.perf_counter() - t0, 2),
                          "threads": torch.get_num_threads()}), flush=True)

        alone = Finetune(url, downloads / "ft1", settings, args.finetune_timeout).start().join()
        alone_steps = alone.steps()
        print(json.dumps({"phase": "finetune_alone", **settings, "step_s": [round(s[1], 2) for s in alone_steps],
                          "mean_step_s": _r(mean_step(alone_steps)), "error": alone.error}), flush=True)
        bad |= alone.error is not None

        loaded = Finetune(url, downloads / "ft2", settings, args.finetune_timeout).start()
        loaded.started.wait(args.finetune_timeout)
        latencies, failures, windows = [], [], []
        users = [threading.Thread(target=user, args=(i, url, downloads, args, latencies, failures, windows),
                                  name=f"bench-user{i}", daemon=True) for i in range(args.users)]
        for t in users:
            t.start()
        for t in users:  # each user's requests are bounded by --timeout (+ client start-up)
            t.join(args.requests * (args.timeout + 30) + 60)
        stuck = sum(t.is_alive() for t in users)
        if stuck:
            failures.append({"error": f"{stuck} user thread(s) still running after their time bound"})
        load_lo = min((w[0] for w in windows), default=0.0)
        load_hi = max((w[1] for w in windows), default=0.0)
        loaded.join()
        loaded_steps = loaded.steps()

        def overlap(s):
            return max(0.0, min(s[3], load_hi) - max(s[2], load_lo)) / s[1] if s[1] > 0 else 0.0

        under = [s for s in loaded_steps if s[0] > 1 and overlap(s) >= 0.5]
        print(json.dumps({"phase": "finetune_under_load", **settings, "step_s": [round(s[1], 2) for s in loaded_steps],
                          "load_overlap": [round(overlap(s), 2) for s in loaded_steps],
                          "steps_under_load": [s[0] for s in under],
                          "mean_step_s": _r(statistics.mean(s[1] for s in under)) if under else None,
                          "error": loaded.error}), flush=True)
        bad |= loaded.error is not None
        for f in failures[:10]:
            print(json.dumps({"phase": "failed_request", **f}), flush=True)

    mean_alone = mean_step(alone_steps)
    mean_loaded = statistics.mean(s[1] for s in under) if under else None
    print(json.dumps({
        "users": args.users, "requests": args.users * args.requests, "failed": len(failures),
        "gen_steps": args.steps, "frames": args.frames,
        "latency_p50_s": _r(percentile(latencies, 50)), "latency_p95_s": _r(percentile(latencies, 95)),
        "latency_max_s": _r(max(latencies, default=None)),
        "load_seconds": _r(load_hi - load_lo), "finetune_step_s_alone": _r(mean_alone),
        "finetune_step_s_loaded": _r(mean_loaded),
        "loaded_over_alone": _r(mean_loaded / mean_alone) if mean_alone and mean_loaded else None,
        "cpus": os.cpu_count(), "total_s": _r(time.perf_counter() - t_start),
    }), flush=True)
    sys.exit(1 if failures or bad else 0)


def _r(x: float | None, nd: int = 2) -> float | None:
    return None if x is None else round(x, nd)


if __name__ == "__main__":
    main()
