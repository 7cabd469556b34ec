"""engine.core.io (atomic writes, folder swaps, the weights digest) and engine.align.run_folder (a run's layout)."""

import csv
import hashlib
import json
from pathlib import Path

import pytest
import torch

from engine.align.config import RunConfig
from engine.align.run_folder import RUN_FILES, RunFolder, write_csv
from engine.core.io import (
    atomic_save,
    atomic_write_text,
    building_folder,
    scratch_folder,
    swap_folder,
    tensors_digest,
)

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted(p.parent for p in (ROOT / "checkpoints" / "runs").glob("*/*/config.json"))


class Boom(RuntimeError):
    pass


def _fail(tmp: Path) -> None:
    tmp.write_text("half")
    raise Boom


# -- atomic writes and folder swaps ------------------------------------------------------------------------
def test_atomic_write_leaves_no_temp_files_and_keeps_the_old_file_on_a_failing_writer(tmp_path):
    target = tmp_path / "sub" / "a.json"
    atomic_write_text(target, "one")
    assert target.read_text() == "one" and sorted(p.name for p in target.parent.iterdir()) == ["a.json"]
    with pytest.raises(Boom):
        atomic_save(target, _fail)
    assert target.read_text() == "one" and sorted(p.name for p in target.parent.iterdir()) == ["a.json"]
    seen = []
    atomic_save(str(target), lambda tmp: (seen.append(tmp), tmp.write_text("two")))
    assert seen[0].suffix == ".json" and seen[0].parent == target.parent  # writers that read the suffix see it
    assert target.read_text() == "two" and sorted(p.name for p in target.parent.iterdir()) == ["a.json"]


def test_building_folder_swaps_in_a_complete_folder_or_leaves_the_old_one(tmp_path):
    dest = tmp_path / "dest"
    with building_folder(dest) as tmp:
        (tmp / "x").write_text("1")
    with pytest.raises(Boom):
        with building_folder(dest) as tmp:
            (tmp / "x").write_text("2")
            raise Boom
    assert (dest / "x").read_text() == "1" and sorted(p.name for p in tmp_path.iterdir()) == ["dest"]
    with building_folder(dest) as tmp:
        (tmp / "y").write_text("3")
    assert sorted(p.name for p in dest.iterdir()) == ["y"] and sorted(p.name for p in tmp_path.iterdir()) == ["dest"]


def test_swap_folder_puts_the_old_folder_back_when_the_new_one_cannot_move(tmp_path):
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "x").write_text("1")
    with pytest.raises(OSError):
        swap_folder(tmp_path / "missing", dest, old=tmp_path / "dest-old")
    assert (dest / "x").read_text() == "1" and sorted(p.name for p in tmp_path.iterdir()) == ["dest"]


def test_scratch_folder_is_removed_unless_moved(tmp_path):
    with scratch_folder(tmp_path / "up") as tmp:
        (tmp / "f").write_text("1")
        assert tmp.parent == tmp_path and tmp.name.startswith(".up.tmp-")
    assert list(tmp_path.iterdir()) == []
    with scratch_folder(tmp_path / "up") as tmp:
        tmp.rename(tmp_path / "kept")
    assert [p.name for p in tmp_path.iterdir()] == ["kept"]


# -- the weights digest: the same values as the two hand-written hashes it replaced -------------------------
def _old_lora_fingerprint(tensors):  # engine.models.lora.base_fingerprint's loop before tensors_digest
    digest = hashlib.sha256()
    for n, t in tensors:
        t = t.detach()
        if t.is_floating_point():
            t = t.to(torch.bfloat16).view(torch.int16)
        digest.update(f"{n}:{list(t.shape)}:{t.dtype};".encode())
        digest.update(t.cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def _old_eval_digest(state):  # engine.align.evaluate._weights_digest before tensors_digest
    digest = hashlib.sha256()
    for name, tensor in sorted(state.items()):
        if "lora_" in name:
            continue
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name.replace('.base_layer', '')}:{t.dtype}:{list(t.shape)};".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.dtype == torch.bfloat16 else t.numpy().tobytes())
    return digest.hexdigest()


def test_tensors_digest_keeps_the_stored_fingerprints():
    from engine.align.evaluate import _weights_digest

    g = torch.Generator().manual_seed(0)
    state = {"a.base_layer.weight": torch.randn(3, 4, generator=g), "a.lora_A.weight": torch.randn(2, 4, generator=g),
             "b.bias": torch.randn(5, generator=g).to(torch.bfloat16), "c.count": torch.arange(6).reshape(2, 3),
             "d.scale": torch.tensor(0.5), "e.t": torch.randn(4, 3, generator=g).t()}  # a non-contiguous one
    module = torch.nn.Module()
    for i, (name, t) in enumerate(state.items()):
        module.register_buffer(f"t{i}", t)
    assert _weights_digest(module) == _old_eval_digest(module.state_dict())
    named = sorted((n, t) for n, t in state.items() if "lora_" not in n)
    assert tensors_digest(named, bf16=True, header="{name}:{shape}:{dtype};")[:16] == _old_lora_fingerprint(named)
    assert tensors_digest([("x", torch.ones(2))]) != tensors_digest([("x", torch.ones(2).double())])


def test_shipped_adapters_keep_their_base_fingerprint():
    from engine.generate import load_model
    from engine.models.lora import base_fingerprint, read_adapter_info

    stored = {read_adapter_info(RunFolder(run).adapter)["base_fingerprint"] for run in SHIPPED}
    assert stored == {base_fingerprint(load_model("tiny", None))}


# -- RunFolder ------------------------------------------------------------------------------------------
def test_run_folder_metrics_append_truncate_read_roundtrip(tmp_path):
    run = RunFolder(tmp_path / "run")
    assert run.metrics_rows() == [] and not run.holds_run() and run.foreign_files() == []
    run.path.mkdir()
    for step in (1, 2, 3):
        run.append_metrics({"step": step, "reward_mean": step / 10, "loss": -step})
    run.append_eval(0, "base", {"alignment": 0.5})
    run.append_eval(2, "run", {"alignment": 0.7})
    assert run.metrics_rows() == [{"step": str(s), "reward_mean": str(s / 10), "loss": str(-s)} for s in (1, 2, 3)]
    run.truncate(2)
    assert [r["step"] for r in run.metrics_rows()] == ["1", "2"] and [r["label"] for r in run.eval_rows()] == ["base", "run"]
    run.truncate(1)
    assert run.metrics_file.read_text().splitlines() == ["step,reward_mean,loss", "1,0.1,-1"]
    assert run.eval_file.read_text().splitlines() == ["step,label,alignment", "0,base,0.5"]
    assert sorted(p.name for p in run.path.iterdir()) == ["eval.csv", "metrics.csv"]  # no temporary files left
    run.append_eval(2, "run", {"alignment": 0.7}, [{"prompt": 0, "seed": 0, "alignment": 0.6}, {"prompt": 0, "seed": 1, "alignment": 0.8}])
    assert [(r["step"], r["seed"], r["alignment"]) for r in run.eval_asset_rows()] == [("2", "0", "0.6"), ("2", "1", "0.8")]
    run.truncate(1)
    assert run.eval_asset_rows() == [] and [r["step"] for r in run.eval_rows()] == ["0"]
    run.append_eval(3, "run", {"delta/alignment": 0.2, "alignment": 0.7})  # a newer version adds a column
    run.append_eval(4, "run", {"alignment": 0.8})
    assert run.eval_file.read_text().splitlines() == ["step,label,alignment,delta/alignment", "0,base,0.5,",
                                                      "3,run,0.7,0.2", "4,run,0.8,"]
    assert sorted(p.name for p in run.path.iterdir()) == ["eval.csv", "eval_assets.csv", "metrics.csv"]
    run.clear_rows()
    assert run.metrics_rows() == [] and run.eval_rows() == []
    write_csv(run.metrics_file, [])
    assert run.metrics_file.read_text() == ""
    (run.path / "notes.txt").write_text("mine")
    assert run.foreign_files() == ["notes.txt"]


def test_run_folder_config_and_layout(tmp_path):
    run = RunFolder(tmp_path / "run")
    config = RunConfig(method="refl", reward="geometry", steps=3)
    run.save_config(config)
    assert run.holds_run() and run.load_config().to_dict() == config.to_dict()
    assert run.config_dict() == json.loads(run.config_file.read_text())
    names = [p.name for p in (run.config_file, run.metrics_file, run.eval_file, run.eval_assets_file, run.adapter, run.samples,
                               run.checkpoint, run.checkpoint_old, run.status_file)]
    assert tuple(names) == RUN_FILES
    assert run.sample_file(7) == run.path / "samples" / "step_0007.png" and run.status_file.name == "status.json"


def test_run_folder_checkpoint_swap(tmp_path):
    run = RunFolder(tmp_path)
    assert run.checkpoint_to_load() is None
    for step in (1, 2):
        with run.writing_checkpoint() as new:
            assert new == run.checkpoint_new
            (new / "trainer.json").write_text(json.dumps({"step": step}))
    assert run.checkpoint_to_load() == run.checkpoint and json.loads((run.checkpoint / "trainer.json").read_text())["step"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]
    with pytest.raises(Boom):
        with run.writing_checkpoint() as new:
            (new / "trainer.json").write_text(json.dumps({"step": 3}))
            raise Boom
    assert json.loads((run.checkpoint / "trainer.json").read_text())["step"] == 2
    run.checkpoint.rename(run.checkpoint_old)  # a crash between the swap's two renames
    assert run.checkpoint_to_load() == run.checkpoint_old
    with run.writing_checkpoint() as new:
        (new / "trainer.json").write_text(json.dumps({"step": 4}))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]


@pytest.mark.parametrize("folder", SHIPPED, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_shipped_runs_read_through_run_folder(folder):
    from engine.align.evaluate import check_run

    run = RunFolder(folder)
    raw = json.loads((folder / "config.json").read_text())
    assert run.config_dict() == raw
    config = run.load_config()
    assert config.method == raw["method"] and config.reward == raw["reward"] and config.steps == raw["steps"]
    with (folder / "metrics.csv").open(newline="") as f:
        assert run.metrics_rows() == list(csv.DictReader(f))
    with (folder / "eval.csv").open(newline="") as f:
        assert run.eval_rows() == list(csv.DictReader(f))
    assert run.status_file.is_file() and run.checkpoint_to_load() is None
    checked, info = check_run(folder)
    assert checked.to_dict() == config.to_dict() and info["method"] == raw["method"]
