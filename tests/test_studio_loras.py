"""Saved LoRAs in the studio: the Generate tab's LoRA choice, uploads (and each bad one), downloads, and the
per-session folders, through gradio_client against a served studio."""

import json
import types
import zipfile

import pytest
import torch

pytest.importorskip("gradio")


def _save_random_adapter(folder, *, scale=0.05, base_noise=0.0, seed=0, rank=8):
    """A LoRA with visible random weights on the shipped tiny base (or on a perturbed copy of it)."""
    from engine.generate import load_model
    from engine.models import lora

    torch.manual_seed(seed)
    model = load_model("tiny")
    if base_noise:
        with torch.no_grad():
            next(model.transformer.parameters()).add_(base_noise)
    lora.add_lora(model, rank=rank)
    with torch.no_grad():
        for p in lora.lora_parameters(model):
            p.add_(torch.randn_like(p) * scale)
    return lora.save_adapter(model, folder, meta={"method": "refl", "reward": "geometry", "step": 3})


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    from app import catalogue
    from tests.test_app import _serve

    root = tmp_path_factory.mktemp("studio")
    _save_random_adapter(root / "runs" / "r1" / "adapter")
    catalogue.set_runs_dir(root / "runs")
    with _serve() as client:
        yield types.SimpleNamespace(client=client, root=root)
    catalogue.set_runs_dir(root / "unused")


def _zip(path, files: dict):
    with zipfile.ZipFile(path, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
    return path


def test_generate_with_a_lora_differs_from_the_base_and_says_so(studio):
    from engine.export import load_ply

    base, *_, info_base = studio.client.predict("a red chair", 0, 4, 4.5, 12, "tiny", "base", api_name="/generate")
    tuned, *_, info = studio.client.predict("a red chair", 0, 4, 4.5, 12, "tiny", "run: r1", api_name="/generate")
    assert "run: r1" in info and "run: r1" not in info_base
    a, b = load_ply(base), load_ply(tuned)
    # the adapter changed the asset (the PLY keeps the visible Gaussians, so even their count differs)
    assert a.num_gaussians != b.num_gaussians or (a.means - b.means).abs().max() > 1e-3


def test_unknown_lora_is_refused_clearly(studio):
    with pytest.raises(Exception, match="No model or LoRA named 'run: nope'"):
        studio.client.predict("a red chair", 0, 4, 4.5, 12, "tiny", "run: nope", api_name="/generate")


def test_download_then_upload_round_trips_and_the_upload_generates(studio, tmp_path):
    from gradio_client import handle_file

    from app.catalogue import catalogue

    zipped = studio.client.predict("run: r1", api_name="/download_lora")
    with zipfile.ZipFile(zipped) as z:
        assert sorted(z.namelist()) == ["adapter_config.json", "adapter_model.safetensors", "r2d3_adapter.json"]
    msg, update = studio.client.predict([handle_file(zipped)], "my lora", "tiny", api_name="/upload_lora")
    choice = update["value"]  # the LoRA list, updated and set to the new adapter
    assert choice == "upload: my-lora" and "rank 8" in msg and "refl" in msg
    assert "upload: my-lora" in catalogue().choices()
    *_, info = studio.client.predict("a red chair", 0, 4, 4.5, 12, "tiny", "upload: my-lora", api_name="/generate")
    assert "upload: my-lora" in info
    # the same name again does not overwrite the first upload
    _, again = studio.client.predict([handle_file(zipped)], "my lora", "tiny", api_name="/upload_lora")
    assert again["value"] == "upload: my-lora-2"


def test_upload_of_the_two_loose_files_works(studio, tmp_path):
    from gradio_client import handle_file

    folder = _save_random_adapter(tmp_path / "loose", seed=1)
    files = [handle_file(str(folder / n)) for n in ("adapter_config.json", "adapter_model.safetensors")]
    msg, update = studio.client.predict(files, "", "tiny", api_name="/upload_lora")
    assert update["value"].startswith("upload: ") and "base is unknown" in msg  # no r2d3_adapter.json: a plain peft adapter


def _bad_cases(tmp_path):
    good = _save_random_adapter(tmp_path / "good", seed=2)
    cfg, weights, info = ((good / n).read_bytes() for n in ("adapter_config.json", "adapter_model.safetensors", "r2d3_adapter.json"))
    other_base = _save_random_adapter(tmp_path / "other", seed=3, base_noise=0.01)
    rank4 = _save_random_adapter(tmp_path / "rank4", seed=4, rank=4)
    (tmp_path / "notzip.zip").write_bytes(b"this is not a zip")
    return {
        "a pickle": (_zip(tmp_path / "pickle.zip", {"adapter_config.json": cfg, "adapter_model.bin": b"\x80\x04K\x01."}),
                     "pickle file"),
        "a foreign file": (_zip(tmp_path / "evil.zip", {"adapter_config.json": cfg, "adapter_model.safetensors": weights,
                                                        "run_me.py": b"import os"}), "not part of a peft adapter"),
        "another base": (_zip(tmp_path / "base.zip", {n: (other_base / n).read_bytes() for n in
                                                      ("adapter_config.json", "adapter_model.safetensors", "r2d3_adapter.json")}),
                         "fingerprint"),
        "mixed shapes": (_zip(tmp_path / "mixed.zip", {"adapter_config.json": cfg, "adapter_model.safetensors":
                                                       (rank4 / "adapter_model.safetensors").read_bytes()}), "shape"),
        "no weights": (_zip(tmp_path / "noweights.zip", {"adapter_config.json": cfg, "r2d3_adapter.json": info}), "is missing"),
        "not a zip": (tmp_path / "notzip.zip", "not a readable .zip"),
        "broken config": (_zip(tmp_path / "json.zip", {"adapter_config.json": b"{", "adapter_model.safetensors": weights}),
                          "not valid JSON"),
        "not lora": (_zip(tmp_path / "ia3.zip", {"adapter_config.json": json.dumps({"peft_type": "IA3"}),
                                                "adapter_model.safetensors": weights}), "not a LoRA adapter config"),
    }


def test_each_bad_upload_gets_a_clear_message_and_adds_nothing(studio, tmp_path):
    from gradio_client import handle_file

    from app.catalogue import catalogue

    before = catalogue().choices()
    for what, (path, message) in _bad_cases(tmp_path).items():
        with pytest.raises(Exception, match=message):
            studio.client.predict([handle_file(str(path))], what, "tiny", api_name="/upload_lora")
    assert catalogue().choices() == before
    leftovers = [p.name for p in catalogue().uploads_dir.iterdir()] if catalogue().uploads_dir.exists() else []
    assert not [n for n in leftovers if n.startswith(".")], leftovers  # no half-written folders


def test_upload_messages_name_the_users_file_in_plain_words(studio, tmp_path):
    """No scratch-folder paths and no library error names; a 0-byte file is called empty."""
    from gradio_client import handle_file

    good = _save_random_adapter(tmp_path / "good", seed=6)
    cfg = (good / "adapter_config.json").read_bytes()
    (tmp_path / "loose").mkdir()
    (tmp_path / "loose" / "adapter_config.json").write_bytes(cfg)
    (tmp_path / "loose" / "adapter_model.safetensors").write_bytes(b"\x01\x00")  # a header too small to read
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "adapter_config.json").write_bytes(cfg)
    (tmp_path / "empty" / "adapter_model.safetensors").write_bytes(b"")
    (tmp_path / "nothing.zip").write_bytes(b"")
    cases = {
        "damaged weights": ([tmp_path / "loose" / n for n in ("adapter_config.json", "adapter_model.safetensors")],
                            "adapter_model.safetensors is not a readable safetensors file"),
        "damaged, zipped": ([_zip(tmp_path / "mine.zip", {"adapter_config.json": cfg, "adapter_model.safetensors": b"\x01\x00"})],
                            r"adapter_model.safetensors \(in mine.zip\) is not a readable"),
        "empty weights": ([tmp_path / "empty" / n for n in ("adapter_config.json", "adapter_model.safetensors")],
                          r"adapter_model.safetensors is empty \(0 bytes\)"),
        "empty zip": ([tmp_path / "nothing.zip"], r"nothing.zip is empty \(0 bytes\)"),
    }
    for what, (paths, message) in cases.items():
        with pytest.raises(Exception, match=message) as err:
            studio.client.predict([handle_file(str(p)) for p in paths], what, "tiny", api_name="/upload_lora")
        text = str(err.value)
        assert "tmp-" not in text and "uploads" not in text and "Error:" not in text and "/" not in text, (what, text)


def test_lora_list_puts_runs_made_here_first_with_readable_names(studio, tmp_path):
    from app import catalogue as cat
    from app.generate import lora_options

    shipped = tmp_path / "shipped"
    _save_random_adapter(shipped / "geometry" / "nabla-r2d3" / "adapter", seed=7)
    here = cat.catalogue()
    options = cat.Catalogue(here.runs_dir, here.uploads_dir, shipped).options()
    kinds = [label.split(":")[0] for _, label in options]
    assert kinds[0] == "base" and kinds.index("run") < kinds.index("shipped") < len(kinds)
    assert [k for k in kinds if k != "base"] == sorted((k for k in kinds if k != "base"), key=["run", "shipped", "upload"].index)
    shown = dict((label, name) for name, label in options)
    assert shown["run: r1"].startswith("Yours · ReFL on geometry, step 3 · ")  # method, reward, step and when
    assert shown["shipped: geometry/nabla-r2d3"] == "Shipped · ReFL on geometry"  # (this test's adapter says refl)
    assert [label for _, label in lora_options()][0] == "base"


def test_oversized_upload_is_refused_before_loading(studio, tmp_path, monkeypatch):
    from gradio_client import handle_file

    from app import catalogue as cat

    monkeypatch.setattr(cat, "MAX_UPLOAD_BYTES", 1000)  # the server runs in this process
    folder = _save_random_adapter(tmp_path / "big", seed=5)
    path = _zip(tmp_path / "big.zip", {n: (folder / n).read_bytes() for n in ("adapter_config.json", "adapter_model.safetensors")})
    with pytest.raises(Exception, match="over the 0 MB limit"):
        studio.client.predict([handle_file(str(path))], "big", "tiny", api_name="/upload_lora")


def test_a_session_folder_is_removed_when_the_session_ends():
    from app.sessions import end_session, session_dir

    mine, other = types.SimpleNamespace(session_hash="abc"), types.SimpleNamespace(session_hash="xyz")
    a, b = session_dir(mine, "generate"), session_dir(other, "generate")
    (a / "asset.ply").write_bytes(b"x")
    assert a.parent != b.parent and a != session_dir(mine, "generate")
    end_session(mine)
    assert not a.exists() and b.exists()
    end_session(other)
