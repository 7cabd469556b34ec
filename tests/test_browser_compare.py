"""The Compare tab in a real browser: Evaluate fills the held-out deltas of a LoRA, and the LoRA-scale slider
changes the asset (α = 0 draws the base's views, α = 1 the adapter's).

One served studio with one run made of a random adapter (no training: cheap), the studio's held-out settings
made small (3 prompts x 1 seed, 2 steps). Skips like tests/test_browser_studio.py without chromium or playwright.
"""

import os
import re

import pytest

from tests.test_browser_mesh import CHROMIUM

if not os.path.exists(CHROMIUM):
    pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is missing (pip install playwright)")
pytest.importorskip("gradio")

from tests.test_browser_studio import LONG, _open, _set_number, studio_page
from tests.test_studio_compare import _random_adapter


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    from app import catalogue, evaluations

    root = tmp_path_factory.mktemp("browser_compare")
    _random_adapter(root / "runs" / "late" / "adapter")
    catalogue.set_runs_dir(root / "runs")
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(evaluations, "PROMPTS", ["a blue car", "a green tree", "a red chair"])
            mp.setattr(evaluations, "STEPS", 2)
            with studio_page() as page:
                yield page
    finally:
        catalogue.set_runs_dir(root / "unused")


def _choose_run(panel):
    box = panel.get_by_role("combobox", name="Models (up to 4)", exact=True)
    box.click(force=True, timeout=LONG)
    options = panel.page.locator(f"#{box.get_attribute('aria-controls')}")
    options.get_by_role("option", name=re.compile(r"^Yours · ReFL on colorfulness")).click()
    box.press("Escape")


def test_compare_evaluate_fills_the_deltas(page):
    panel = _open(page, "Compare")
    _choose_run(panel)
    table = panel.locator("#compare-evaluation")
    panel.locator("#compare-evaluate").click()
    panel.locator("#compare-eval-status").get_by_text(re.compile(r"run: late: evaluated")).wait_for(timeout=LONG)
    rows = table.get_by_role("row").all_inner_texts()
    late = next(r for r in rows if "run: late" in r)
    assert late.count("±") >= 4 and "Evaluate (3 prompts × 1 seed, 2 steps)" in late, rows
    assert "Held-out change from the base" in panel.locator("#compare-verdict").inner_text()


def test_the_lora_scale_slider_changes_the_asset(page):
    panel = _open(page, "Compare")
    panel.get_by_role("textbox", name="Prompt").fill("a red chair")
    _set_number(panel, "number input for Denoising steps", 4)
    assert panel.locator("#compare-scale-model input").input_value() == "run: late"  # follows the chosen models
    info, image = panel.locator("#compare-scale-info"), panel.locator("#compare-scale-views img")
    shown = {}
    for alpha in (0, 1):  # the slider's release (its number box takes the value on blur) renders at α
        _set_number(panel, "number input for LoRA scale α", alpha)
        for _ in range(3):  # settled: the same α and image a moment later (no earlier render still landing)
            info.get_by_text(f"α = {alpha} ").first.wait_for(timeout=LONG)
            page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=image.element_handle(), timeout=LONG)
            src, text = image.get_attribute("src"), info.inner_text()
            page.wait_for_timeout(1500)
            if image.get_attribute("src") == src and info.inner_text() == text and f"α = {alpha} " in text:
                break
        shown[alpha] = (src, page.request.get(src).body(), text)
    scores = [re.search(r"colorfulness ([\d.]+)", shown[a][2]).group(1) for a in (0, 1)]
    assert scores[0] != scores[1], scores
    box = image.bounding_box()
    assert box["height"] >= 300, box  # the 2 x 2 views are shown large


def test_the_turntables_turn_together(page):
    panel = _open(page, "Compare")
    panel.get_by_role("textbox", name="Prompt").fill("a red chair")
    _set_number(panel, "number input for Turntable frames", 12)
    panel.get_by_role("button", name="Compare", exact=True).click()
    panel.get_by_text(re.compile(r"2 model\(s\) in [\d.]+ s from one loaded base")).wait_for(timeout=LONG)
    clocks = ("() => [...document.querySelectorAll('.compare-turntable video')].filter(v => v.offsetParent !== null)"
              ".map(v => [v.currentTime, v.duration, v.paused])")
    page.wait_for_function(f"() => ({clocks})().every(([t, d, paused]) => !paused && t > 0)", timeout=LONG)
    for _ in range(3):
        (t0, d, _), (t1, _, _) = page.evaluate(clocks)
        gap = abs(t0 - t1) % d
        assert min(gap, d - gap) < 0.25, page.evaluate(clocks)  # restarted together: the same frame, give or take
        page.wait_for_timeout(500)
