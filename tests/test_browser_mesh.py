"""The mesh in a real browser: headless Chromium opens the studio, and the Viewer tab's mesh preview
shows the GLB made from the built-in example (the page renders it on load, then meshes it)."""

import io
import os

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run",
    # WebGL through SwiftShader (software), as there is no GPU: the 3D viewer needs it.
    "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
]

if not os.path.exists(CHROMIUM):
    pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is missing (pip install playwright)")


def _red_fraction(png: bytes) -> float:
    import imageio.v3 as iio

    rgb = iio.imread(io.BytesIO(png))[..., :3].astype(int)
    return float(((rgb[..., 0] > 120) & (rgb[..., 0] > rgb[..., 1] + 60)).mean())  # the mushroom's red cap


def test_viewer_tab_shows_the_mesh_glb_in_chromium():
    from tests.test_app import _serve

    with _serve() as client, sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            glb_loaded = []
            page.on("response", lambda r: glb_loaded.append(r.url) if r.url.endswith(".glb") and r.ok else None)
            page.goto(client.src)
            page.get_by_role("tab", name="Viewer").click()
            canvas = page.locator("#viewer-mesh canvas")
            canvas.wait_for(state="visible", timeout=180_000)  # the example renders on load, then is meshed
            red = 0.0
            for _ in range(30):  # software WebGL: the first frames take a while
                red = _red_fraction(canvas.screenshot())
                if red > 0.01:
                    break
                page.wait_for_timeout(2000)
        finally:
            browser.close()
    assert any(url.endswith("asset.glb") for url in glb_loaded), glb_loaded
    assert red > 0.01, f"no mesh drawn: {red:.4f} of the mesh viewer is red"
