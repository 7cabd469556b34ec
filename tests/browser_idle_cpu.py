"""Chromium's CPU while the studio sits idle on another tab, after the 3D viewers were shown (issue #30).

    PYTHONPATH=. python tests/browser_idle_cpu.py [--seconds 10] [--tab Theory]

Opens the studio in headless Chromium (the tests' flags: software WebGL), waits for the Viewer tab's example
and its mesh to be drawn, generates an asset on the Generate tab and waits for its mesh, then opens another
tab and, after a short settle, reads the CPU time (utime + stime in /proc/<pid>/stat) of every Chromium
process of this browser over ``--seconds``; prints it in cores, with the animation frames the page ran
(requestAnimationFrame callbacks, counted by an init script) and the canvases left in the page.
"""

from __future__ import annotations

import argparse
import os
import re
import time

import psutil

COUNT_FRAMES = """
(() => {
  window.__raf_calls = 0;
  const raf = window.requestAnimationFrame.bind(window);
  window.requestAnimationFrame = (cb) => raf((t) => { window.__raf_calls++; return cb(t); });
})();
"""


VIEWERS = """() => Object.fromEntries(["generate-splat", "generate-mesh", "viewer-splat", "viewer-mesh"].map(
  id => [id, document.querySelectorAll(`#${id} canvas`).length]))"""


def chromium_cpu_seconds(root_pid: int) -> float:
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for proc in [psutil.Process(root_pid), *psutil.Process(root_pid).children(recursive=True)]:
        try:
            with open(f"/proc/{proc.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime (fields 14, 15)
        except (OSError, psutil.Error):
            pass
    return total


def idle_sample(page, root_pid: int, seconds: float) -> dict:
    frames0 = page.evaluate("window.__raf_calls")
    cpu0, t0 = chromium_cpu_seconds(root_pid), time.monotonic()
    page.wait_for_timeout(seconds * 1000)
    cpu1, t1 = chromium_cpu_seconds(root_pid), time.monotonic()
    frames1 = page.evaluate("window.__raf_calls")
    return {"cores": round((cpu1 - cpu0) / (t1 - t0), 3), "frames_per_s": round((frames1 - frames0) / (t1 - t0), 1),
            "canvases": page.evaluate("document.querySelectorAll('canvas').length"), "3d canvases": page.evaluate(VIEWERS)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--tab", default="Theory")
    args = parser.parse_args()

    from playwright.sync_api import sync_playwright

    from tests.test_app import _serve
    from tests.test_browser_mesh import CHROMIUM, CHROMIUM_ARGS
    from tests.test_browser_studio import LONG, _open, _set_number, _wait_for_red

    with _serve() as client, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        me = psutil.Process()
        root = next(c.pid for c in me.children(recursive=True) if "chrom" in c.name().lower()
                    and not any("chrom" in a.name().lower() for a in c.parents()))
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.add_init_script(COUNT_FRAMES)
            page.set_default_timeout(60_000)
            page.goto(client.src)
            panel = _open(page, "Viewer")
            panel.get_by_text(re.compile(r"Mesh: [\d,]+ faces")).wait_for(timeout=LONG)
            print("viewers:", page.evaluate(VIEWERS), flush=True)
            _wait_for_red(page.locator("#viewer-mesh canvas"))
            page.wait_for_timeout(3000)
            print("on Viewer:", idle_sample(page, root, args.seconds), flush=True)
            panel = _open(page, "Generate")
            panel.get_by_role("textbox", name="Prompt").fill("a red mushroom with a white stem")
            _set_number(panel, "number input for Denoising steps", 6)
            _set_number(panel, "number input for Turntable frames", 12)
            panel.get_by_role("button", name="Generate", exact=True).click()
            panel.get_by_text(re.compile(r"Mesh: [\d,]+ faces")).wait_for(timeout=LONG)
            _wait_for_red(page.locator("#generate-mesh canvas"))
            page.wait_for_timeout(3000)
            print("on Generate:", idle_sample(page, root, args.seconds), flush=True)
            _open(page, args.tab)
            page.wait_for_timeout(5000)
            print(f"on {args.tab} (viewers hidden):", idle_sample(page, root, args.seconds), flush=True)
        finally:
            browser.close()


if __name__ == "__main__":
    main()
