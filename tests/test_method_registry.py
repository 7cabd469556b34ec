"""A method is one module + one registry line: a method module written at test time, registered, is found by
the command line, the config, the trainer, the studio (method list, knobs, API) and the study's sweep."""

import importlib.util
import sys
import textwrap

import pytest
import torch

from engine.align import RunConfig, Trainer
from engine.align.__main__ import parser
from engine.align.methods import METHODS, MODULES, register, unregister
from engine.models.splatter_ae import SplatterAutoencoder
from engine.models.tiny import TinySplatModel, tiny_transformer

MODULE = '''
"""Throwaway: ReFL with a gain on its loss, to prove a method needs one module and one registration."""

from dataclasses import dataclass

from engine.align.knobs import knob
from engine.align.methods.refl import ReFL


@dataclass
class ToyConfig:
    """Toy: ReFL's loss times a gain."""

    gain: float = knob(1.0, "multiplies the loss", title="gain (g)", low=0, open_low=True, sweep=(0.5, 1.0, 2.0),
                       strength=1)
    first_fraction: float = knob(0.5, "ReFL's late-step range", low=0, high=1)
    kl: float = knob(0.0, "ε-space pull to the base", low=0)


class Toy(ReFL):
    name = "toy-method"
    title = "Toy method"
    config = ToyConfig
    config_field = "toy"
    summary = "ReFL with a gain (a test's throwaway)"

    def losses(self, rollout, step):
        for loss, metrics in super().losses(rollout, step):
            yield self.cfg.gain * loss, metrics
'''


@pytest.fixture
def toy(tmp_path):
    path = tmp_path / "toy_method.py"
    path.write_text(textwrap.dedent(MODULE))
    spec = importlib.util.spec_from_file_location("toy_method", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["toy_method"] = module
    spec.loader.exec_module(module)
    from engine.align.methods import method_of

    cls = register(method_of(module))
    yield cls
    unregister(cls.name)
    sys.modules.pop("toy_method", None)


def test_the_registry_is_one_line_per_shipped_method():
    assert len(MODULES) == len(METHODS) - sum(1 for m in METHODS.values() if not m.__module__.startswith("engine."))
    assert [m.__module__.rpartition(".")[2] for m in METHODS.values()][: len(MODULES)] == list(MODULES)


def test_a_registered_method_is_in_the_command_line_and_the_config(toy):
    help_text = parser().format_help()
    assert "toy-method (Toy method): ReFL with a gain" in help_text and "toy.gain = 1.0  multiplies the loss" in help_text
    assert parser().parse_args(["--method", "toy-method", "--out", "x"]).method == "toy-method"
    cfg = RunConfig().apply_overrides(["method=toy-method", "toy.gain=2"]).validate()
    assert cfg.toy.gain == 2.0 and cfg.method_config() is cfg.toy
    assert RunConfig.from_dict(cfg.to_dict()) == cfg  # config.json round trip, with the new group in it
    with pytest.raises(ValueError, match=r"toy.gain = 0.0: must be > 0; the default is 1.0; multiplies the loss"):
        RunConfig().apply_overrides(["method=toy-method", "toy.gain=0"]).validate()


def test_a_registered_method_trains_through_the_shared_trainer(toy, tmp_path):
    torch.manual_seed(0)
    model = TinySplatModel(tiny_transformer(num_layers=1, heads=2, head_dim=8), SplatterAutoencoder(width=16)).eval()
    cfg = RunConfig().apply_overrides(["method=toy-method", "reward=colorfulness", "steps=1", "sampler_steps=4",
                                       "render_resolution=24", "batch_size=2", "sample_every=0", "checkpoint_every=0"])
    trainer = Trainer(cfg, tmp_path / "run", model=model)
    assert type(trainer.method) is toy
    rows = list(trainer.run())
    assert len(rows) == 1 and rows[0]["loss"] == rows[0]["loss"]


def test_a_registered_method_is_in_the_studio_with_its_knobs(toy):
    pytest.importorskip("gradio")
    import inspect

    from app import finetune
    from app.ui import build_demo

    knobs = finetune.method_knobs()["toy-method"]
    assert [(k.name, k.title) for k in knobs][0] == ("gain", "gain (g)")
    demo = build_demo()
    config = demo.get_config_file()
    methods = next(c for c in config["components"] if c.get("props", {}).get("label") == "Method"
                   and c["type"] == "dropdown")
    assert ["Toy method", "toy-method"] in [list(x) for x in methods["props"]["choices"]]
    labels = {c.get("props", {}).get("label") for c in config["components"]}
    assert "gain (g)" in labels and "Toy method settings" in labels
    assert "toy_gain" in inspect.signature(finetune.start_finetune).parameters  # the API takes its knobs


def test_a_registered_method_is_in_the_study_sweep(toy):
    from engine.align.knobs import strength_knob
    from engine.study import sweep_plan
    from engine.study.plan import parse_methods

    assert "toy-method" in parse_methods("all")
    assert sweep_plan("toy-method", "colorfulness") == (("toy.gain",), (0.5, 1.0, 2.0))
    assert strength_knob(toy.config, toy.config_field).name == "gain"
