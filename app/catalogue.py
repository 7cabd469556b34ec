"""The models the studio can run: the base and every LoRA adapter it knows.

Four sources, scanned on every call (cheap: a few small JSON files), so a run saved a moment ago shows up at
once in every list:

    base                        the embedded tiny model, no adapter
    shipped: <reward>/<method>  checkpoints/runs/<reward>/<method>/  (the comparison's runs; its other seeds'
                                adapters, where shipped, as shipped: <reward>/<method>/seed<k>)
    run: <name>                 <runs dir>/<name>/adapter            (runs made on this server, or by the CLI)
    upload: <name>              <uploads dir>/<name>/                (adapters people uploaded)

A label is what the dropdowns show and what the endpoints take. ``Pool`` holds the one loaded base model of
generation and comparison, with adapters loaded into it once and switched per request under a lock (not one
model per adapter).
"""

from __future__ import annotations

import functools
import hashlib
import re
import shutil
import threading
import time
import uuid
import warnings
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from engine.align import shipped
from engine.core.io import scratch_folder
from engine.generate import load_model
from engine.models import lora

ROOT = Path(__file__).resolve().parents[1]
SHIPPED_RUNS = ROOT / "checkpoints" / "runs"
BASE = "base"
MAX_UPLOAD_BYTES = lora.MAX_ADAPTER_BYTES
MAX_ZIP_MEMBERS = 16


@dataclass(frozen=True)
class Entry:
    """One choice: ``adapter`` is None for the base; ``run`` is the run folder (metrics.csv, eval.csv,
    config.json) when the adapter came from one."""

    label: str
    kind: str  # base | shipped | run | upload
    adapter: Path | None = None
    run: Path | None = None
    info: dict = field(default_factory=dict, compare=False)


def _adapter_entry(label: str, kind: str, adapter: Path, run: Path | None) -> Entry | None:
    try:
        info = lora.read_adapter_info(adapter)
    except (OSError, ValueError):
        return None  # half-written or foreign folders are not offered
    return Entry(label, kind, adapter, run, info)


class Catalogue:
    def __init__(self, runs_dir: str | Path, uploads_dir: str | Path | None = None, shipped_dir: str | Path = SHIPPED_RUNS):
        self.runs_dir = Path(runs_dir)
        self.uploads_dir = Path(uploads_dir) if uploads_dir else self.runs_dir.parent / "uploads"
        self.shipped_dir = Path(shipped_dir)

    def entries(self) -> dict[str, Entry]:
        out = {BASE: Entry(BASE, "base")}
        if self.shipped_dir.is_dir():
            for adapter in sorted(self.shipped_dir.glob("*/*/adapter")):
                run = adapter.parent
                if e := _adapter_entry(f"shipped: {run.parent.name}/{run.name}", "shipped", adapter, run):
                    out[e.label] = e
                for seed in shipped.other_seeds(run):  # a study shipped with every seed's adapter
                    if e := _adapter_entry(f"shipped: {run.parent.name}/{run.name}/{seed.name}", "shipped", seed / "adapter", seed):
                        out[e.label] = e
        if self.runs_dir.is_dir():
            for adapter in sorted(self.runs_dir.glob("*/adapter")):
                if e := _adapter_entry(f"run: {adapter.parent.name}", "run", adapter, adapter.parent):
                    out[e.label] = e
        if self.uploads_dir.is_dir():
            for folder in sorted(p for p in self.uploads_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
                if e := _adapter_entry(f"upload: {folder.name}", "upload", folder, None):
                    out[e.label] = e
        return out

    def choices(self, kinds: tuple[str, ...] = ("base", "shipped", "run", "upload")) -> list[str]:
        """Labels in the lists' order (see ``ordered``)."""
        return [e.label for e in ordered(self.entries().values()) if e.kind in kinds]

    def options(self, kinds: tuple[str, ...] = ("base", "shipped", "run", "upload")) -> list[tuple[str, str]]:
        """(what the list shows, label) in the lists' order: a dropdown's choices."""
        return [(display_name(e), e.label) for e in ordered(self.entries().values()) if e.kind in kinds]

    def get(self, label: str | None) -> Entry:
        label = label or BASE
        entries = self.entries()
        if label not in entries:
            raise ValueError(f"No model or LoRA named {label!r} here; choose one of: {', '.join(entries)}.")
        return entries[label]

    def runs(self) -> list[Entry]:
        """Entries with a run folder (curves and evaluation), shipped first."""
        return [e for e in self.entries().values() if e.run is not None]

    # -- uploads ------------------------------------------------------------------------------------
    def add_upload(self, files: list[str | Path], name: str | None, pool: "Pool") -> Entry:
        """Files of one adapter (adapter_config.json + adapter_model.safetensors, optionally
        r2d3_adapter.json, or one .zip of them) -> a checked adapter under uploads/. It is loaded into the
        pool's base first (fingerprint, keys, shapes, size, safetensors only) and kept only if that works."""
        files = [Path(f) for f in files or []]
        if not files:
            raise ValueError("No files: upload adapter_config.json and adapter_model.safetensors, or a .zip of them.")
        zipped = files[0] if len(files) == 1 and files[0].suffix.lower() == ".zip" else None
        name = _upload_name(name or (zipped.stem if zipped else "adapter"))
        with scratch_folder(self.uploads_dir / name) as tmp:
            if zipped:
                _unzip_adapter(zipped, tmp)
            else:
                _copy_adapter_files(files, tmp)
            try:
                pool.check(tmp)
            except (OSError, ValueError) as err:
                raise ValueError(_plain_words(err, tmp, zipped)) from err
            target = self.uploads_dir / name
            n = 2
            while target.exists():  # never overwrite an earlier upload
                target, n = self.uploads_dir / f"{name}-{n}", n + 1
            tmp.rename(target)
        return self.get(f"upload: {target.name}")


# ------------------------------------------------------------------------------------ the lists' order

GROUPS = {"base": "", "run": "Yours", "shipped": "Shipped", "upload": "Upload"}  # the lists' order, and what each is


def ordered(entries) -> list[Entry]:
    """The base, then the runs made on this server (newest first), the shipped runs, the uploads."""
    entries = list(entries)
    runs = sorted((e for e in entries if e.kind == "run"), key=lambda e: _run_time(e) or 0.0, reverse=True)
    return ([e for e in entries if e.kind == "base"] + runs + [e for e in entries if e.kind == "shipped"]
            + [e for e in entries if e.kind == "upload"])


def _run_time(entry: Entry) -> float | None:
    """When a run's adapter was last saved (its weights' time), for order and label."""
    try:
        return (entry.adapter / lora.WEIGHTS_FILE).stat().st_mtime
    except (OSError, TypeError):
        return None


def _method_title(method: str) -> str:
    try:
        from engine.align.methods import METHODS

        return getattr(METHODS.get(method), "title", None) or method
    except Exception:  # noqa: BLE001 - a title is a nicety; the name will do
        return method


def display_name(entry: Entry) -> str:
    """What a list shows for ``entry``: its group, then what it is (method on reward, step, when) in words;
    e.g. "Yours · ReFL on colorfulness, step 12 · Dec 07 14:30", "Shipped · Nabla-R2D3 on geometry"."""
    if entry.adapter is None:
        return "base (no LoRA)"
    info, name = entry.info, entry.label.split(": ", 1)[-1]
    what = ""
    if info.get("method"):
        what = _method_title(str(info["method"])) + (f" on {info['reward']}" if info.get("reward") else "")
        if entry.kind != "shipped" and info.get("step") is not None:
            what += f", step {info['step']}"
    if entry.kind == "run":
        stamp = _run_time(entry)
        when = time.strftime("%b %d %H:%M", time.localtime(stamp)) if stamp else name
        return f"{GROUPS['run']} · {what or name} · {when}"
    if entry.kind == "upload":
        return f"{GROUPS['upload']} · {name}" + (f" ({what})" if what else "")
    seed = re.fullmatch(r".+/seed(\d+)", name) if entry.kind == "shipped" else None
    return f"{GROUPS[entry.kind]} · {what or name}" + (f", seed {seed.group(1)}" if seed else "")


ALLOWED_FILES = (lora.CONFIG_FILE, lora.WEIGHTS_FILE, lora.INFO_FILE)


def _upload_name(name: str) -> str:
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(str(name)).stem).strip("-.")[:48]
    return name or "adapter"


def _plain_words(err: Exception, folder: Path, zipped: Path | None) -> str:
    """A check's message for the person who uploaded: the files by their own names (the scratch folder's path
    left out; "in <their .zip>" for a zip's), and no library error names or internal details."""
    text = str(err)
    for file in ALLOWED_FILES:
        where = f"{file} (in {zipped.name})" if zipped else file
        text = text.replace(f"{folder / file}", where)
    text = text.replace(str(folder), "the adapter")
    text = re.sub(r" \((?:[A-Za-z]+Error|[A-Za-z]+Exception)\b[^()]*(?:\([^()]*\)[^()]*)*\)", "", text)  # (SafetensorError: …)
    if "safetensors file" in text and "not a readable" in text:
        text = text.rstrip(".") + ": it is damaged or not an adapter's weights; upload the adapter_model.safetensors that was saved with it."
    return "The" + text[3:] if text.startswith("the adapter") else text


def _check_member(name: str, size: int, total: int) -> None:
    base = Path(name).name
    if base.endswith(lora.PICKLE_SUFFIXES):
        raise ValueError(f"{base} is a pickle file, which can run code when loaded, so it is refused; "
                         f"upload the adapter as safetensors ({lora.WEIGHTS_FILE}).")
    if base not in ALLOWED_FILES:
        raise ValueError(f"{base} is not part of a peft adapter; upload {lora.CONFIG_FILE} and {lora.WEIGHTS_FILE} "
                         f"(and optionally {lora.INFO_FILE}), or a .zip holding just them.")
    if size == 0:
        raise ValueError(f"{base} is empty (0 bytes): upload the adapter's saved file again.")
    if size > MAX_UPLOAD_BYTES or total > MAX_UPLOAD_BYTES + 2**20:
        raise ValueError(f"{base} is {size / 2**20:.0f} MB, over the {MAX_UPLOAD_BYTES / 2**20:.0f} MB limit for an adapter.")


def _copy_adapter_files(files: list[Path], out: Path) -> None:
    total = 0
    for f in files:
        size = f.stat().st_size
        total += size
        _check_member(f.name, size, total)
        shutil.copyfile(f, out / f.name)


def _unzip_adapter(path: Path, out: Path) -> None:
    """Only the adapter's files are taken, by base name (no paths from the archive are used), with sizes
    checked from the directory before anything is extracted."""
    if path.stat().st_size == 0:
        raise ValueError(f"{path.name} is empty (0 bytes): upload the .zip again.")
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as err:
        raise ValueError(f"{path.name} is not a readable .zip ({err}).") from err
    with archive:
        members = [m for m in archive.infolist() if not m.is_dir() and not Path(m.filename).name.startswith(".")
                   and "__MACOSX" not in m.filename]
        if len(members) > MAX_ZIP_MEMBERS:
            raise ValueError(f"{path.name} holds {len(members)} files; an adapter zip holds at most {len(ALLOWED_FILES)}.")
        total, seen = 0, set()
        for m in members:
            total += m.file_size
            _check_member(m.filename, m.file_size, total)
            if Path(m.filename).name in seen:
                raise ValueError(f"{path.name} holds two {Path(m.filename).name}: zip one adapter at a time.")
            seen.add(Path(m.filename).name)
        for m in members:
            with archive.open(m) as src, (out / Path(m.filename).name).open("wb") as dst:
                shutil.copyfileobj(src, dst, 2**20)


def zip_adapter(entry: Entry, out_dir: Path) -> Path:
    """The entry's adapter folder as a .zip (for download), flat, as add_upload takes it back."""
    if entry.adapter is None:
        raise ValueError("The base model has no adapter to download.")
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{_upload_name(entry.label.split(': ', 1)[-1].replace('/', '-'))}-lora.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name in ALLOWED_FILES:
            if (entry.adapter / name).is_file():
                z.write(entry.adapter / name, name)
    return path


# ------------------------------------------------------------------------------------------ the pool

class Pool:
    """One loaded base model for generation and comparison; adapters are loaded into it once each (keyed by
    folder and file time, so a run that saved newer weights is reloaded) and switched under a lock."""

    def __init__(self, device: str | None = None, loader=None):
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")  # the studio uses a GPU when there is one
        self._loader = loader or functools.partial(load_model, "tiny", device=self.device)
        self._model = None
        self._loaded: dict[Path, tuple[str, float]] = {}
        self.lock = threading.RLock()

    @property
    def model(self):
        with self.lock:
            if self._model is None:
                self._model = self._loader().eval().requires_grad_(False)
            return self._model

    def check(self, folder: Path) -> None:
        """Loads ``folder`` under a throw-away name and removes it: every check of lora.load_adapter."""
        with self.lock:
            model = self.model
            previous = lora.active_adapter(model)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                name = lora.load_adapter(model, folder, f"check_{uuid.uuid4().hex[:8]}", activate=False)
            lora.remove_adapter(model, name)
            lora.use_adapter(model, previous)

    @contextmanager
    def using(self, entry: Entry):
        """The base model with ``entry``'s adapter active (or none) for the block, holding the lock."""
        with self.lock:
            model = self.model
            if entry.adapter is None:
                lora.use_adapter(model, None)
            else:
                lora.use_adapter(model, self._load(entry.adapter))
            try:
                yield model
            finally:
                lora.use_adapter(model, None)

    def _load(self, folder: Path) -> str:
        stamp = (folder / lora.WEIGHTS_FILE).stat().st_mtime
        known = self._loaded.get(folder)
        if known and known[1] == stamp:
            return known[0]
        if known:
            lora.remove_adapter(self.model, known[0])
        name = "a" + hashlib.sha1(f"{folder}:{stamp}".encode()).hexdigest()[:12]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # plain peft adapters warn that their base is unknown
            lora.load_adapter(self.model, folder, name, activate=False)
        self._loaded[folder] = (name, stamp)
        return name


# ------------------------------------------------------------------------------- the server's instances

_catalogue = Catalogue(Path("outputs") / "runs")
_pool = Pool()


def set_runs_dir(runs_dir: str | Path, uploads_dir: str | Path | None = None) -> Catalogue:
    """Where this server keeps its runs (``--runs-dir``) and uploads (default: beside the runs)."""
    global _catalogue
    _catalogue = Catalogue(runs_dir, uploads_dir)
    return _catalogue


def set_device(device: str | None) -> Pool:
    """The device of the studio's tiny model (``--device``; default: cuda when available). Drops the loaded one."""
    global _pool
    _pool = Pool(device)
    return _pool


def catalogue() -> Catalogue:
    return _catalogue


def pool() -> Pool:
    return _pool
