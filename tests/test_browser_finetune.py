"""The Finetune tab in headless Chromium: the demo preset is the default (Nabla-R2D3 on alignment, β in readable
notation, Start on the first screen); another preset fills the form; a short run draws its held-out curve (the
paired change from the base with error bars), which gains a point per check, and the finish line states the
held-out change with its 95% interval. The legend sits clear of the axis titles.
"""

import os
import re

import pytest

from tests.test_browser_mesh import CHROMIUM

if not os.path.exists(CHROMIUM):
    pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)", allow_module_level=True)
pytest.importorskip("playwright.sync_api", reason="the playwright package is missing (pip install playwright)")
pytest.importorskip("gradio")

from tests.test_browser_studio import LONG, RUN_SHOWN, _choose, _open, _set_number, studio_in  # noqa: E402

ERROR_BARS = "#finetune-plot .errorbars .errorbar"  # plotly's error bars: the held-out curve's points


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    with studio_in(tmp_path_factory.mktemp("browser_finetune")) as page:
        yield page


def _value(panel, label: str) -> str:
    """The value of the visible field whose label starts with ``label`` (a text box's name includes its info)."""
    return panel.get_by_label(re.compile("^\\s*" + re.escape(label))).locator("visible=true").first.input_value()


def test_the_demo_preset_is_the_default_and_start_is_on_the_first_screen(page):
    from app import presets

    panel = _open(page, "Finetune")
    assert panel.get_by_role("combobox", name="Preset", exact=True).input_value() == presets.DEMO
    assert panel.get_by_role("combobox", name="Method", exact=True).input_value() == "Nabla-R2D3"
    assert panel.get_by_role("combobox", name="Reward", exact=True).input_value() == "alignment"
    start = panel.get_by_role("button", name="Start", exact=True)
    box = start.bounding_box()
    assert box and box["y"] + box["height"] <= 1000, f"Start is at {box}: below the first screen"
    panel.get_by_text("Nabla-R2D3 settings").click()  # folded; opened, β reads 5e7, not 50000000
    assert _value(panel, "β (beta)") == "5e7"


def test_a_preset_fills_the_form(page):
    panel = _open(page, "Finetune")
    _choose(panel, "Preset", "ReFL on colorfulness (fast, hackable reward)")
    method = panel.get_by_role("combobox", name="Method", exact=True)
    for _ in range(20):
        if method.input_value() == "ReFL":
            break
        page.wait_for_timeout(300)
    assert method.input_value() == "ReFL"
    assert panel.get_by_role("combobox", name="Reward", exact=True).input_value() == "colorfulness"
    assert float(_value(panel, "number input for Steps (optimiser steps)")) == 10
    assert not panel.get_by_label("Your prompts, one per line", exact=True).is_visible()  # the built-in set


def test_the_held_out_curve_appears_updates_and_the_finish_line_states_its_interval(page):
    panel = _open(page, "Finetune")  # the ReFL preset from the test above, made tiny
    _set_number(panel, "number input for Steps (optimiser steps)", 3)
    panel.get_by_text("Held-out check (prompts the run does not train on)").click()
    _set_number(panel, "number input for Held-out check every N steps (0 = off)", 1)
    _set_number(panel, "number input for Held-out seeds per prompt", 1)
    panel.get_by_label(re.compile(r"^\s*Held-out prompts, one per line")).fill("a black chair\na blue flower")
    panel.get_by_text("Run settings (cost per step)").click()
    _set_number(panel, "number input for Batch size (trajectories per step)", 1)
    _set_number(panel, "number input for Sampler steps", 4)
    _set_number(panel, "number input for Reward render resolution (px)", 32)
    _set_number(panel, "number input for Samples every N steps (0 = off)", 0)
    panel.get_by_role("button", name="Start", exact=True).click()
    page.wait_for_function(f"() => document.querySelectorAll({ERROR_BARS!r}).length >= 2", timeout=LONG)  # base, step 1
    seen = [page.locator(ERROR_BARS).count()]
    finished = panel.get_by_text(re.compile(r"Run finished\."))
    for _ in range(LONG // 2000):  # one point per check, drawn as the checks land
        if finished.count() and seen[-1] >= 4:
            break
        page.wait_for_timeout(2000)
        seen.append(page.locator(ERROR_BARS).count())
    assert seen[-1] == 4 and sorted(seen) == seen, f"held-out points over time: {seen}"  # base + steps 1, 2, 3
    text = page.locator("#finetune-status").inner_text()
    assert re.search(r"Held-out colorfulness at step 3 \(2 prompts × 1 seed not trained on\): [+-]\S+ vs the base, "
                     r"95% interval \[[+-]\S+, [+-]\S+\]: (a gain|no measurable change|a measurable drop)", text), text
    assert re.search(r"The adapter is in the Generate and Compare lists as Yours · ReFL on colorfulness, step 3", text), text
    assert panel.locator(RUN_SHOWN).input_value().endswith("-refl-colorfulness")
    # the legend (above the plot) covers no axis title
    legend = page.locator("#finetune-plot .legend").bounding_box()
    for title in page.locator("#finetune-plot .xtitle, #finetune-plot .ytitle").all():
        t = title.bounding_box()
        overlap = (min(legend["x"] + legend["width"], t["x"] + t["width"]) - max(legend["x"], t["x"]) > 0 and
                   min(legend["y"] + legend["height"], t["y"] + t["height"]) - max(legend["y"], t["y"]) > 0)
        assert not overlap, (legend, t, title.inner_text())
    # the smoothing slider redraws the training curve (the EMA line's name says its value)
    _set_number(panel, "number input for Smoothing of the training curve (EMA)", 0.9)
    page.get_by_text("smoothed (EMA 0.9)").first.wait_for(timeout=LONG)
