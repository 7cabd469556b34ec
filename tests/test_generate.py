"""The shipped base model through the generate API and command."""

import json

import pytest
import torch

from engine.generate import generate, load_model, main
from engine.prompts import prompt_notice, validate_prompt


@pytest.fixture(scope="module")
def model():
    return load_model("tiny")


@pytest.mark.parametrize("bad,message", [
    ("", "empty"), ("  \n ", "empty"), ("a" * 301, "limit"), ("?? 42", "no words"), (None, "must be text"), (3, "must be text"),
])
def test_bad_prompts_get_clear_errors(bad, message):
    with pytest.raises(ValueError, match=message):
        validate_prompt(bad)


def test_prompts_are_cleaned_and_checked_against_the_world():
    assert validate_prompt("  a   red\nchair ") == "a red chair"
    assert prompt_notice("a red chair") is None
    assert "24 object kinds" in prompt_notice("a teapot")


def test_generation_is_reproducible_per_seed(model):
    a = generate(model, ["a blue car"], [3], steps=4)
    b = generate(model, ["a blue car", "a green tree"], [3, 4], steps=4)
    assert a.maps.shape == (1, 4, 12, 64, 64) and a.gaussians.num_gaussians == 4 * 64 * 64
    torch.testing.assert_close(a.maps[0], b.maps[0], atol=2e-3, rtol=0)
    c = generate(model, ["a blue car"], [4], steps=4)
    assert not torch.allclose(a.maps, c.maps)


def test_generated_asset_is_an_object_in_front_of_the_cameras(model):
    g = generate(model, ["a red mushroom with a white stem"], [0], steps=10).gaussians
    visible = g.opacities[0] > 0.5
    assert 0.05 < float(visible.float().mean()) < 0.9
    assert float(g.means[0][visible].abs().max()) < 0.7  # inside the views' frustum around the origin


def test_generate_command_writes_the_asset_folder(tmp_path, capsys):
    import imageio.v3 as iio

    from engine.export import load_ply

    main(["--prompt", "a red chair", "--seed", "0", "--steps", "4", "--frames", "6", "--resolution", "64", "--out", str(tmp_path)])
    for name in ("asset.ply", "turntable.mp4", "views.png", "normals.png", "generation.json"):
        assert (tmp_path / name).exists(), name
    assert load_ply(tmp_path / "asset.ply").num_gaussians > 500
    assert iio.imread(tmp_path / "views.png").shape == (64, 256, 3)
    settings = json.loads((tmp_path / "generation.json").read_text())
    assert settings["prompt"] == "a red chair" and settings["steps"] == 4 and settings["seed"] == 0
    assert "asset.ply" in capsys.readouterr().out


def test_generate_command_rejects_an_empty_prompt(tmp_path):
    with pytest.raises(SystemExit):
        main(["--prompt", " ", "--out", str(tmp_path)])
    assert not any(tmp_path.iterdir())


def test_missing_checkpoint_is_explained(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a tiny-base checkpoint"):
        load_model("tiny", tmp_path)
