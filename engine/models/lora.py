"""LoRA adapters on a model's denoiser, through peft: add, switch, disable, save, load, check.

Adapters are injected in place (``peft.functional.inject_adapter_in_model``), so ``model.transformer`` /
``model.denoiser`` stay the same objects, the model's own ``network_output`` runs unchanged, and the
multi-view attention processors keep working (peft wraps ``to_q`` etc., the processor still calls them).
Several adapters can live in one model; one is active at a time, or none (the frozen base).

A saved adapter is peft's format, so plain peft loads it onto the base denoiser::

    adapter_config.json          peft's LoraConfig
    adapter_model.safetensors    keys "base_model.model.<module>.lora_A.weight", as PeftModel.save_pretrained writes
    r2d3_adapter.json            {"base_model", "base_fingerprint", "rank", "alpha", "targets", + the trainer's meta}

Target names (research/nabla-r2d3.md §1.1, the reference's list; peft matches a name against the end of
each module path). What they hit:
- PixArt transformer (tiny, diffsplat-pas): every attention projection (``to_q/k/v``, ``to_out.0``,
  self and cross), both feed-forward linears (``ff.net.0.proj``, ``ff.net.2``), the patch embedding
  ``pos_embed.proj`` (Conv2d, via ``proj``), ``adaln_single.linear``, the timestep embedder's and the
  caption projection's ``linear_1/linear_2``, and the final ``proj_out``. ``proj_in`` matches nothing.
- SD1.5 UNet (diffsplat-sd15): the attention projections and feed-forward linears of every transformer
  block, their ``proj_in/proj_out`` (1x1 Conv2d), ``time_embedding.linear_1/linear_2``. ``linear``
  matches nothing; ResNet convolutions, ``time_emb_proj``, ``conv_in/out`` and the samplers stay base.
"""

from __future__ import annotations

import copy
import json
import math
import warnings
from contextlib import contextmanager
from pathlib import Path

import torch
from peft import LoraConfig
from peft.functional import (
    cast_adapter_dtype,
    delete_adapter,
    get_peft_model_state_dict,
    inject_adapter_in_model,
    set_adapter,
)
from peft.tuners.tuners_utils import BaseTunerLayer, check_target_module_exists
from safetensors.torch import load_file, save_file
from torch import Tensor

from ..core.io import building_folder, tensors_digest
from .diffsplat import check_tensors, safetensors_header

DEFAULT_TARGETS: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2",
                                    "proj", "linear", "linear_1", "linear_2")
INITS = {"gaussian": "gaussian", "default": True, "random": False}  # our name -> peft's init_lora_weights
CONFIG_FILE, WEIGHTS_FILE, INFO_FILE = "adapter_config.json", "adapter_model.safetensors", "r2d3_adapter.json"
PEFT_PREFIX = "base_model.model."  # what PeftModel.save_pretrained puts before module paths
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
MAX_ADAPTER_BYTES = 200 * 2**20
RESERVED_INFO = ("base_model", "base_fingerprint", "rank", "alpha", "targets")


# ------------------------------------------------------------------------------------------ the model

def denoiser_of(model) -> torch.nn.Module:
    """The network LoRA goes on: ``model.denoiser`` (DiffSplat) or ``model.transformer`` (tiny)."""
    for attr in ("denoiser", "transformer"):
        if isinstance(getattr(model, attr, None), torch.nn.Module):
            return getattr(model, attr)
    raise ValueError(f"{type(model).__name__} has no denoiser (neither .denoiser nor .transformer); LoRA needs one.")


def _tuner_layers(denoiser) -> list[BaseTunerLayer]:
    return [m for m in denoiser.modules() if isinstance(m, BaseTunerLayer)]


def _base_modules(module: torch.nn.Module, prefix: str = ""):
    """(path, module) of the base network: a LoRA-wrapped layer appears as its base layer, under its own path."""
    for name, child in module.named_children():
        path = prefix + name
        if isinstance(child, BaseTunerLayer):
            yield path, child.get_base_layer()
        else:
            yield path, child
            yield from _base_modules(child, path + ".")


def _adapter_params(denoiser, name: str) -> dict[str, torch.nn.Parameter]:
    """Adapter ``name``'s parameters under peft's saved key names (the adapter name removed)."""
    params = {}
    for path, layer in denoiser.named_modules():
        if not isinstance(layer, BaseTunerLayer):
            continue
        for attr in layer.adapter_layer_names:
            holder = getattr(layer, attr, None)
            if holder is None or name not in holder:
                continue
            item = holder[name]
            if isinstance(item, torch.nn.Parameter):
                params[f"{path}.{attr}"] = item
            else:
                params.update({f"{path}.{attr}.{p}": v for p, v in item.named_parameters()})
    return params


def adapter_names(model) -> list[str]:
    return list(getattr(denoiser_of(model), "peft_config", {}))


def active_adapter(model) -> str | None:
    """The adapter the denoiser runs with now, or None (base weights)."""
    layers = _tuner_layers(denoiser_of(model))
    if not layers or layers[0].disable_adapters or not layers[0].active_adapters:  # none yet, disabled, or all removed
        return None
    return layers[0].active_adapters[0]


def _require(model, name: str) -> torch.nn.Module:
    denoiser = denoiser_of(model)
    if name not in getattr(denoiser, "peft_config", {}):
        have = adapter_names(model)
        raise ValueError(f"No adapter named {name!r} in this model (it has {have or 'none'}); add_lora or load_adapter it first.")
    return denoiser


def lora_parameters(model, name: str = "default") -> list[torch.nn.Parameter]:
    return list(_adapter_params(_require(model, name), name).values())


# ------------------------------------------------------------------------------------------- adding

def _check_name(name) -> str:
    if not isinstance(name, str) or not name or "." in name or not name.isprintable() or name != name.strip():
        raise ValueError(f"Adapter name {name!r} is not usable: give a non-empty name without dots or surrounding spaces, e.g. 'default'.")
    return name


def _inject(model, config: LoraConfig, name: str) -> None:
    """Put adapter ``name`` into the denoiser (fp32 weights), keep peft_config listing every adapter."""
    denoiser = denoiser_of(model)
    _check_name(name)
    if name in getattr(denoiser, "peft_config", {}):
        raise ValueError(f"The model already has an adapter named {name!r}; pick another name or remove_adapter() it first.")
    base_fingerprint(model)  # cached before the base layers get wrapped, so later calls are cheap
    configs = dict(getattr(denoiser, "peft_config", {}))
    with warnings.catch_warnings():  # peft warns that a second adapter is "advanced use"; that is the point here
        warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute")
        try:
            inject_adapter_in_model(config, denoiser, adapter_name=name)
        except ValueError as err:
            denoiser.peft_config = configs  # peft registered the name before it found no target
            raise ValueError(f"LoRA targets {sorted(config.target_modules)} do not fit this {type(denoiser).__name__}: {err}") from err
    denoiser.peft_config = configs | {name: config}
    cast_adapter_dtype(denoiser, name)  # fp32 LoRA weights even on a bf16/fp16 base


def add_lora(model, *, rank: int = 8, alpha: float | None = None, targets=DEFAULT_TARGETS, name: str = "default",
             init: str = "gaussian", dropout: float = 0.0) -> list[torch.nn.Parameter]:
    """Add a trainable adapter ``name`` to the denoiser in place, make it the active one, freeze every other
    weight of the model, and return the adapter's parameters (fp32).

    ``alpha`` None means ``rank`` (scaling 1, as the reference). ``init``: "gaussian" (the reference: A ~
    N(0, 1/rank), B = 0), "default" (peft's: A Kaiming-uniform, B = 0), both leave the output unchanged at
    first; "random" (B random too: the adapter changes the output from the start, for tests). The
    initial values depend only on torch's global (CPU) RNG state: seed it for a reproducible adapter.
    """
    if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
        raise ValueError(f"LoRA rank must be a positive integer, got {rank!r}; the reference uses 8.")
    if alpha is not None and not alpha > 0:
        raise ValueError(f"LoRA alpha must be positive (or None for alpha = rank), got {alpha!r}.")
    if init not in INITS:
        raise ValueError(f"Unknown LoRA init {init!r}; choose one of {', '.join(INITS)}.")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"LoRA dropout must be in [0, 1), got {dropout!r}.")
    targets = [targets] if isinstance(targets, str) else list(targets)
    if not targets:
        raise ValueError("No LoRA targets given; use DEFAULT_TARGETS or name some modules (e.g. ['to_q', 'to_v']).")
    config = LoraConfig(r=rank, lora_alpha=rank if alpha is None else alpha, target_modules=targets, lora_dropout=dropout,
                        init_lora_weights=INITS[init])
    _inject(model, config, name)
    use_adapter(model, name)
    params = lora_parameters(model, name)
    keep = {id(p) for p in params}
    for p in model.parameters():
        p.requires_grad_(id(p) in keep)
    return params


def remove_adapter(model, name: str) -> None:
    """Delete adapter ``name`` (frees its weights). If it was active, the model runs the base afterwards."""
    denoiser = _require(model, name)
    was_active = active_adapter(model) == name
    with warnings.catch_warnings():  # peft announces it activates another adapter; we run the base instead (below)
        warnings.filterwarnings("ignore", message=".*was active which is now deleted")
        delete_adapter(denoiser, name, prefix="lora_")
    denoiser.peft_config.pop(name)
    if was_active:
        use_adapter(model, None)


# ------------------------------------------------------------------------------------------ switching

def use_adapter(model, name: str | None) -> None:
    """Run the denoiser with adapter ``name`` (it becomes trainable, the others not), or None: the base."""
    denoiser = denoiser_of(model)
    layers = _tuner_layers(denoiser)
    if name is None:
        for layer in layers:
            layer.enable_adapters(False)
        return
    _require(model, name)
    for layer in layers:
        layer.enable_adapters(True)
    set_adapter(denoiser, name)


def set_adapter_scale(model, name: str, alpha: float) -> None:
    """Scale adapter ``name``'s update by ``alpha`` (0: the base's output, 1: the adapter as trained; values in
    between walk the path from one to the other): every layer's scaling becomes alpha * lora_alpha / r (peft's
    ``set_scale``). It stays through switching until set again (1 restores it); saved weights are not
    changed. The lean PixArt forward
    (pixart_fast) keys its folded weights on the scales too, so the next call folds anew."""
    denoiser = _require(model, name)
    alpha = float(alpha)
    if not math.isfinite(alpha):
        raise ValueError(f"LoRA scale {alpha!r} is not a finite number; give e.g. 0 (base) to 1 (the adapter as trained).")
    for layer in _tuner_layers(denoiser):
        if name in getattr(layer, "scaling", {}):
            layer.set_scale(name, alpha)


def adapter_scale(model, name: str) -> float:
    """The factor set_adapter_scale gave adapter ``name`` (1.0 as loaded or trained)."""
    denoiser = _require(model, name)
    for layer in _tuner_layers(denoiser):
        if name in getattr(layer, "scaling", {}):
            rank = layer.r[name]
            unit = layer.lora_alpha[name] / (math.sqrt(rank) if layer.use_rslora.get(name, False) else rank)
            return float(layer.scaling[name] / unit)
    return 1.0


@contextmanager
def adapters_disabled(model):
    """The frozen base inside the block (the reference model); the previous adapter state afterwards."""
    denoiser = denoiser_of(model)
    layers = _tuner_layers(denoiser)
    previous = active_adapter(model)
    grads = [(p, p.requires_grad) for layer in layers for attr in layer.adapter_layer_names
             for p in getattr(layer, attr, torch.nn.ModuleDict()).parameters()]
    use_adapter(model, None)
    try:
        yield model
    finally:
        if previous is not None:
            use_adapter(model, previous)
        for p, flag in grads:
            p.requires_grad_(flag)


# ----------------------------------------------------------------------------------------- state

def adapter_state(model, name: str = "default") -> dict[str, Tensor]:
    """Cloned tensors of adapter ``name`` under peft's key names (for checkpoints)."""
    return {k: p.detach().clone() for k, p in _adapter_params(_require(model, name), name).items()}


def load_adapter_state(model, state: dict[str, Tensor], name: str = "default") -> None:
    """Copy ``state`` into adapter ``name``. Strict: the same keys and shapes, float tensors, or ValueError."""
    params = _adapter_params(_require(model, name), name)
    # described like a safetensors header (shape, dtype tag) so one checker serves files and dicts
    found = {k: (tuple(v.shape), "F32" if v.is_floating_point() else str(v.dtype)) if torch.is_tensor(v) else ((), type(v).__name__)
             for k, v in state.items()}
    check_tensors({k: tuple(p.shape) for k, p in params.items()}, found, f"Adapter state for {name!r}")
    with torch.no_grad():
        for k, p in params.items():
            p.copy_(state[k])


def base_fingerprint(model) -> str:
    """A hash of the denoiser's base weights (names, shapes, values; LoRA weights excluded).

    Float values are hashed rounded to bf16, so the same checkpoint loaded in fp32, fp16 or bf16 has one
    fingerprint (an adapter trained on a bf16 copy loads onto the fp32 one). Cached on the denoiser and
    recomputed when any base tensor is replaced or modified in place."""
    denoiser = denoiser_of(model)
    tensors = []
    for path, module in [("", denoiser), *_base_modules(denoiser)]:
        prefix = path + "." if path else ""
        tensors += [(prefix + n, p) for n, p in module.named_parameters(recurse=False)]
        tensors += [(prefix + n, b) for n, b in module.named_buffers(recurse=False)
                    if n not in module._non_persistent_buffers_set]
    tensors.sort(key=lambda item: item[0])
    key = tuple((n, t.data_ptr(), t._version, t.dtype, tuple(t.shape)) for n, t in tensors)
    cached = getattr(denoiser, "_r2d3_fingerprint", None)
    if cached is not None and cached[0] == key:
        return cached[1]
    fingerprint = tensors_digest(tensors, bf16=True, header="{name}:{shape}:{dtype};")[:16]
    denoiser._r2d3_fingerprint = (key, fingerprint)
    return fingerprint


# ----------------------------------------------------------------------------------------- saving

def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def save_adapter(model, folder, *, name: str = "default", meta: dict | None = None) -> Path:
    """Write adapter ``name`` in peft's format plus ``r2d3_adapter.json`` into ``folder``, atomically (a
    temporary folder renamed into place). An existing adapter folder is replaced; any other non-empty
    folder is refused."""
    denoiser = _require(model, name)
    folder = Path(folder)
    meta = dict(meta or {})
    clash = sorted(set(meta) & set(RESERVED_INFO))
    if clash:
        raise ValueError(f"meta may not set {clash}: save_adapter writes those itself.")
    if folder.exists() and (not folder.is_dir() or (any(folder.iterdir()) and not (folder / CONFIG_FILE).is_file())):
        raise FileExistsError(f"{folder} exists and is not an adapter folder; choose another folder (nothing was written).")
    config = copy.deepcopy(denoiser.peft_config[name])
    config.inference_mode, config.base_model_name_or_path = True, None  # as PeftModel.save_pretrained writes it
    info = {"base_model": getattr(model, "name", type(model).__name__), "base_fingerprint": base_fingerprint(model),
            "rank": config.r, "alpha": config.lora_alpha, "targets": sorted(config.target_modules), **meta}
    try:
        json.dumps(info)
    except TypeError as err:
        raise ValueError(f"meta must be JSON data (numbers, strings, lists, dicts): {err}") from err
    with building_folder(folder) as tmp:
        config.save_pretrained(str(tmp))
        save_file({PEFT_PREFIX + k: v.cpu().contiguous() for k, v in adapter_state(model, name).items()}, str(tmp / WEIGHTS_FILE),
                  metadata={"format": "pt"})
        _write_json(tmp / INFO_FILE, info)
    return folder


# ----------------------------------------------------------------------------------------- loading

def _read(folder) -> tuple[dict, LoraConfig, Path]:
    """(info, peft config, weights file) of an adapter folder, validated, no weights read."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"No adapter folder at {folder}: give the folder save_adapter (or peft's save_pretrained) wrote.")
    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
        if pickles:
            raise ValueError(f"{folder / pickles[0]} is a pickle file, which can run code when loaded, so it is refused. "
                             f"Re-save the adapter as safetensors (peft: model.save_pretrained(DIR, safe_serialization=True)).")
        raise FileNotFoundError(f"{weights} is missing: an adapter folder needs {CONFIG_FILE} and {WEIGHTS_FILE}.")
    config_path = folder / CONFIG_FILE
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path} is missing: an adapter folder needs {CONFIG_FILE} and {WEIGHTS_FILE}.")
    try:
        raw = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{config_path} is not valid JSON ({err}); re-save the adapter.") from err
    if not isinstance(raw, dict) or raw.get("peft_type") != "LORA":
        kind = raw.get("peft_type") if isinstance(raw, dict) else type(raw).__name__
        raise ValueError(f"{config_path} is not a LoRA adapter config (peft_type {kind!r}); only LoRA adapters load here.")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # unknown keys from other peft versions are dropped
            config = LoraConfig.from_pretrained(str(folder))
    except Exception as err:
        raise ValueError(f"{config_path} is not a config peft {_peft_version()} can read ({type(err).__name__}: {err}).") from err
    info = {"base_model": None, "base_fingerprint": None}
    info_path = folder / INFO_FILE
    if info_path.is_file():
        try:
            extra = json.loads(info_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{info_path} is not valid JSON ({err}); re-save the adapter.") from err
        if not isinstance(extra, dict) or not all(isinstance(extra.get(k), str) for k in ("base_model", "base_fingerprint")):
            raise ValueError(f"{info_path} must be a JSON object with the strings base_model and base_fingerprint.")
        if extra.get("rank", config.r) != config.r:
            raise ValueError(f"{info_path} says rank {extra['rank']} but {CONFIG_FILE} says {config.r}: the folder mixes two adapters.")
        info |= extra
    info |= {"rank": config.r, "alpha": config.lora_alpha, "targets": sorted(config.target_modules) if not isinstance(
        config.target_modules, str) else config.target_modules, "folder": str(folder), "bytes": weights.stat().st_size}
    return info, config, weights


def _peft_version() -> str:
    import peft

    return peft.__version__


def read_adapter_info(folder) -> dict:
    """What an adapter folder says about itself: base_model and base_fingerprint (None for a plain peft
    adapter), rank, alpha, targets, the trainer's meta (method, reward, step, run), folder, bytes."""
    return _read(folder)[0]


def _expected_shapes(denoiser, config: LoraConfig) -> dict[str, tuple[int, ...]]:
    """The keys and shapes peft would give this config on this denoiser, from a weightless (meta) copy of
    the targeted layers, so nothing in the model changes."""
    skeleton = torch.nn.Module()
    for path, module in _base_modules(denoiser):
        if next(module.children(), None) is None and check_target_module_exists(config, path):
            memo = {id(t): torch.nn.Parameter(torch.empty_like(t, device="meta"), requires_grad=False)
                    for t in module.parameters(recurse=False)}
            parent = skeleton
            for part in path.split(".")[:-1]:
                if not hasattr(parent, part):
                    parent.add_module(part, torch.nn.Module())
                parent = getattr(parent, part)
            parent.add_module(path.split(".")[-1], copy.deepcopy(module, memo))
    config = copy.deepcopy(config)
    config.inference_mode = False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            inject_adapter_in_model(config, skeleton, adapter_name="probe", low_cpu_mem_usage=True)
    except ValueError as err:
        raise ValueError(f"The adapter's targets {config.target_modules} do not fit this {type(denoiser).__name__}: {err}") from err
    return {k: tuple(v.shape) for k, v in get_peft_model_state_dict(skeleton, adapter_name="probe").items()}


def load_adapter(model, folder, name: str | None = None, *, activate: bool = True, max_bytes: int = MAX_ADAPTER_BYTES) -> str:
    """Load an adapter folder into the model as adapter ``name`` (None: "default") and return the name.

    Checked before anything loads: safetensors only (a pickle is refused), the size (``max_bytes``), the
    base it was made for (fingerprint; a plain peft adapter without r2d3_adapter.json loads with a
    warning), and the keys and shapes against what its config makes on this denoiser. ``activate``
    False keeps the current adapter (or base) active.
    """
    info, config, weights = _read(folder)
    name = _check_name("default" if name is None else name)
    denoiser = denoiser_of(model)
    if name in getattr(denoiser, "peft_config", {}):
        raise ValueError(f"The model already has an adapter named {name!r}; load this one under another name "
                         f"(load_adapter(model, folder, name=...)) or remove_adapter() the old one first.")
    if info["bytes"] > max_bytes:
        raise ValueError(f"{weights} is {info['bytes'] / 2**20:.0f} MB, over the {max_bytes / 2**20:.0f} MB limit for an adapter; "
                         f"pass max_bytes= if you trust this file.")
    ours = base_fingerprint(model)
    model_name = getattr(model, "name", type(model).__name__)
    if info["base_fingerprint"] is None:
        warnings.warn(f"{folder} has no {INFO_FILE} (a plain peft adapter): which base it was trained on is unknown; "
                      f"loading it because its keys and shapes fit this {model_name} denoiser.", stacklevel=2)
    elif info["base_fingerprint"] != ours:
        raise ValueError(f"{folder} was made for the base model {info['base_model']!r} with fingerprint {info['base_fingerprint']}, "
                         f"but this {model_name!r} denoiser has fingerprint {ours}: load it onto the base it was trained from "
                         f"(the same checkpoint, e.g. --weights).")
    found = {k.removeprefix(PEFT_PREFIX): v for k, v in safetensors_header(weights).items()}
    try:
        check_tensors(_expected_shapes(denoiser, config), found, str(weights))
    except ValueError as err:
        raise ValueError(f"{err} The adapter was made for another architecture or with other settings than its "
                         f"{CONFIG_FILE} says; it cannot load onto this {model_name} denoiser.") from err
    try:
        state = {k.removeprefix(PEFT_PREFIX): v for k, v in load_file(str(weights)).items()}
    except Exception as err:
        raise ValueError(f"{weights} could not be read ({type(err).__name__}: {str(err)[:200]}); re-save the adapter.") from err
    previous = active_adapter(model)
    config = copy.deepcopy(config)
    config.inference_mode = False
    _inject(model, config, name)
    try:
        load_adapter_state(model, state, name)
    except Exception:
        remove_adapter(model, name)
        use_adapter(model, previous)
        raise
    use_adapter(model, name if activate else previous)  # also leaves only the active adapter trainable
    return name
