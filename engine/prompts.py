"""Prompts: the checks every entry point applies to a prompt, and the shipped prompt files."""

from __future__ import annotations

from pathlib import Path

from .data.world import parse

ASSETS = Path(__file__).resolve().parents[1] / "assets" / "prompts"
TRAIN_PROMPTS = ASSETS / "train.txt"
EVAL_PROMPTS = ASSETS / "eval_held_out.txt"
MAX_PROMPT_CHARS = 300


def validate_prompt(prompt) -> str:
    """The cleaned prompt, or ValueError with a message a person can act on."""
    if not isinstance(prompt, str):
        raise ValueError(f"The prompt must be text, got {type(prompt).__name__}.")
    text = " ".join(prompt.split())
    if not text:
        raise ValueError("The prompt is empty: describe an object, e.g. \"a red chair\".")
    if len(text) > MAX_PROMPT_CHARS:
        raise ValueError(f"The prompt is {len(text)} characters long; the limit is {MAX_PROMPT_CHARS}.")
    if not any(ch.isalpha() for ch in text):
        raise ValueError("The prompt has no words in it: describe an object, e.g. \"a red chair\".")
    return text


def prompt_notice(prompt: str) -> str | None:
    """A hint when a prompt falls outside what the embedded model was trained on (it still runs)."""
    if parse(prompt) is None:
        return ("The embedded model knows 24 object kinds in 12 colours (e.g. \"a blue car\", \"a red mushroom with "
                "a white stem\"); this prompt names no known object and colour, so expect a guess.")
    return None


def read_prompts(path: str | Path | None, default: Path = TRAIN_PROMPTS) -> list[str]:
    """Prompts from a file, one per line (blank lines and # comments skipped), each validated."""
    path = Path(path) if path else default
    if not path.is_file():
        raise FileNotFoundError(f"Prompt file {path} does not exist; give a text file with one prompt per line.")
    lines = [ln.strip() for ln in path.read_text(encoding="utf-8", errors="replace").splitlines()]
    prompts = [ln for ln in lines if ln and not ln.startswith("#")]
    if not prompts:
        raise ValueError(f"Prompt file {path} has no prompts; write one prompt per line.")
    try:
        return [validate_prompt(p) for p in prompts]
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None
