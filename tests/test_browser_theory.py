"""The Theory tab in a real browser: opening it shows the world's p_ref / p* contours; headless Chromium starts
Nabla-R2D3 on the Gaussian world, sees its sample cloud drawn over the contours, the distance curve gaining points
while it trains, and Stop ending it.

`.ci/run` installs Debian's chromium when it is missing; without it (or playwright) the module skips with the reason.
With ``R2D3_SCREENSHOTS=assets/screenshots`` set, the tab is also saved there as theory.png.
"""

import os
import re
import time

import pytest

from tests.test_browser_mesh import CHROMIUM

if not os.path.exists(CHROMIUM):
    pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is missing (pip install playwright)")
pytest.importorskip("gradio")

from tests.test_browser_studio import (  # after the skips
    LONG,
    _open,
    _set_number,
    _shot,
    studio_page,
)

# one method: its cloud panel is plotly's subplot xy (the distance curve below is x2y2)
CLOUD_POINTS = "#theory-plot .js-plotly-plot .subplot.xy .scatterlayer .trace .points path"
CONTOURS = "#theory-plot .js-plotly-plot .subplot.xy .scatterlayer .trace .js-line"
# the distance curve's points so far (a line: its rendered path merges points, plotly's own data does not)
CURVE_POINTS = """() => {
  const gd = document.querySelector('#theory-plot .js-plotly-plot');
  const curve = gd && (gd._fullData || []).find(t => t.xaxis === 'x2' && t.name === 'Nabla-R2D3');
  return curve ? curve.x.length : 0;
}"""


@pytest.fixture(scope="module")
def page():
    with studio_page() as page:
        yield page


def test_theory_tab_streams_the_cloud_and_the_distance_curve_then_stops(page):
    panel = _open(page, "Theory")
    # opening the tab shows the world: p_ref's and p*'s contours, no samples yet
    page.wait_for_function(f"() => document.querySelectorAll({CONTOURS!r}).length >= 2", timeout=LONG)
    assert page.locator(CLOUD_POINTS).count() == 0
    panel.get_by_text("Choose the methods and press Start.").wait_for()
    _set_number(panel, "number input for Optimiser steps per method", 1000)  # stopped long before
    t0 = time.perf_counter()
    panel.get_by_role("button", name="Start", exact=True).click()
    page.wait_for_function(f"() => document.querySelectorAll({CLOUD_POINTS!r}).length > 100", timeout=LONG)
    first = time.perf_counter() - t0
    assert page.locator(CONTOURS).count() >= 2  # p_ref's and p*'s contours
    seen, stamps = [], []
    for _ in range(LONG // 250):  # the curve gains a point per update, while we watch
        seen.append(page.evaluate(CURVE_POINTS))
        stamps.append(time.perf_counter())
        if seen[-1] >= seen[0] + 15:
            break
        page.wait_for_timeout(250)
    assert seen[0] >= 1 and seen[-1] >= seen[0] + 15 and sorted(seen) == seen, f"curve points over time: {seen}"
    rate = (seen[-1] - seen[0]) / (stamps[-1] - stamps[0])
    print(f"first picture in the browser {first:.1f} s after Start; the curve gained {rate:.1f} points per second")
    row = panel.get_by_role("row").filter(has_text="Nabla-R2D3").first  # the status table, rendered
    row.get_by_role("cell", name="training", exact=True).wait_for(timeout=LONG)
    _shot(page, "theory", full_page=False)

    panel.get_by_role("button", name="Stop", exact=True).click()
    panel.get_by_text("Stopping…").wait_for()
    panel.get_by_text(re.compile(r"stopped at step \d+ after")).wait_for(timeout=LONG)
    cells = row.get_by_role("cell").all_inner_texts()
    step = int(re.match(r"(\d+)/1000", cells[1].strip())[1])
    assert 0 < step < 1000 and cells[-1].strip() == "stopped", cells
    points = page.evaluate(CURVE_POINTS)
    page.wait_for_timeout(1500)
    assert page.evaluate(CURVE_POINTS) == points  # no more updates after the stop
