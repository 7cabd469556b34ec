"""A studio server killed mid-run (SIGKILL) and started again: the run reads killed, /resume continues it from its
last checkpoint, and it ends as an uninterrupted run of the same config does (rows 1..N once each, same adapter)."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

pytest.importorskip("gradio")

ROOT = Path(__file__).resolve().parents[1]
STEPS = 4


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _server(runs: Path, port: int) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "app.py", "--port", str(port), "--runs-dir", str(runs), "--device", "cpu"],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _client(port: int, timeout: float = 120):
    from gradio_client import Client

    deadline = time.time() + timeout
    while True:
        try:
            return Client(f"http://127.0.0.1:{port}/", verbose=False)
        except Exception:  # noqa: BLE001 - not listening yet
            if time.time() > deadline:
                raise
            time.sleep(1)


def _state(client, name) -> dict:
    table = client.predict(api_name="/jobs")
    rows = [dict(zip(table["headers"], r)) for r in table["data"]]
    return next((r for r in rows if r["run"] == name), {})


def _wait(client, name, predicate, timeout=240) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        row = _state(client, name)
        if row and predicate(row):
            return row
        time.sleep(0.3)
    pytest.fail(f"{name}: not reached within {timeout} s; last {_state(client, name)}")


def test_a_killed_server_resumes_its_run_to_the_uninterrupted_result(tmp_path):
    from gradio_client import handle_file

    from engine.align.config import RunConfig
    from engine.align.trainer import Trainer
    from engine.models.lora import read_adapter_info
    from safetensors.torch import load_file

    cfg = RunConfig(method="refl", reward="geometry", steps=STEPS, batch_size=1, sampler_steps=4, render_resolution=32,
                    sample_every=0, checkpoint_every=1, seed=5)
    (tmp_path / "config.json").write_text(json.dumps(cfg.to_dict()))
    runs, port = tmp_path / "runs", _port()
    server = _server(runs, port)
    try:
        client = _client(port)
        name = client.predict(handle_file(str(tmp_path / "config.json")), api_name="/finetune_config")
        _wait(client, name, lambda r: r["state"] == "running" and 2 <= r["steps"] < STEPS)
        server.send_signal(signal.SIGKILL)  # mid-run: no chance to save anything
        server.wait(30)
        assert json.loads((runs / name / "status.json").read_text())["state"] == "running"

        port = _port()
        server = _server(runs, port)
        client = _client(port)
        assert _state(client, name)["state"] == "killed"
        assert client.predict(name, None, api_name="/resume") == name
        assert _wait(client, name, lambda r: r["state"] == "finished")["steps"] == STEPS
    finally:
        server.kill()
        server.wait(30)
    steps = [int(line.split(",")[0]) for line in (runs / name / "metrics.csv").read_text().splitlines()[1:]]
    assert steps == list(range(1, STEPS + 1))  # each row once, no gap

    torch.set_num_threads(1)  # as the server's OMP_NUM_THREADS=1
    straight = Trainer(cfg, tmp_path / "straight")
    list(straight.run())
    assert read_adapter_info(runs / name / "adapter")["step"] == STEPS
    a = load_file(runs / name / "adapter" / "adapter_model.safetensors")
    b = load_file(tmp_path / "straight" / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-6)
