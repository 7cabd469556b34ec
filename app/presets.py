"""Named presets of the Finetune tab: each fills the whole form (method, reward, prompts, held-out set, steps, lr,
batch, sampler steps, the method's knobs). Their numbers were measured on this build; app/finetune.py's DEFAULTS
comment and the README's Finetune section give the measurements and the command that made them.
"""

from __future__ import annotations

from engine.prompts import EVAL_PROMPTS, read_prompts

# Categories the base gets wrong (held-out base scores, 2 seeds, 10 sampler steps: its evaluator calls
# "a blue flower" and "a purple dumbbell" another category on both seeds, "a black chair" and "a gray candle" on
# one; their alignment 0.51-0.57 against 0.63-0.72 for the other 20 held-out prompts). The demo trains on other
# colours of these four categories and is judged on these four prompts, which it never trains on.
HARD_HELD_OUT = ("a blue flower", "a purple dumbbell", "a black chair", "a gray candle")
HARD_TRAIN = ("a green chair", "a red chair", "a gray dumbbell", "a yellow dumbbell", "an orange flower",
              "a white flower", "a red candle", "a blue candle")
# a small slice of the engine's held-out prompts (none is a training prompt) for rewards of any prompt
EASY_HELD_OUT = tuple(read_prompts(None, EVAL_PROMPTS)[:4])

RUN_SETTINGS = {"seed": 0, "batch_size": 2, "sampler_steps": 10, "render_resolution": 64, "sample_every": 5,
                "eval_every": 5, "eval_seeds": 2}

PRESETS: dict[str, dict] = {
    "Demo: Nabla-R2D3 on alignment (10 steps)": {
        **RUN_SETTINGS, "method": "nabla-r2d3", "reward": "alignment", "steps": 10, "lr": 1e-3,
        "prompt_source": "my own list", "prompts": "\n".join(HARD_TRAIN), "heldout_prompts": "\n".join(HARD_HELD_OUT),
        "nabla_beta": 5e7},
    "ReFL on colorfulness (fast, hackable reward)": {
        **RUN_SETTINGS, "method": "refl", "reward": "colorfulness", "steps": 10, "lr": 1e-3,
        "prompt_source": "built-in training set", "prompts": "", "heldout_prompts": "\n".join(EASY_HELD_OUT)},
}
DEMO = next(iter(PRESETS))
