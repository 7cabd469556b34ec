"""The studio page through gradio_client, as a browser user would drive it."""

import contextlib
import socket

import pytest
import torch

pytest.importorskip("gradio")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _serve():
    """The studio on a free local port, and a gradio_client for it."""
    from gradio_client import Client

    from app.ui import build_demo

    demo = build_demo().queue()
    port = _free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        yield Client(f"http://127.0.0.1:{port}/", verbose=False)
    finally:
        demo.close()


@pytest.fixture(scope="module")
def client():
    with _serve() as c:
        yield c


def test_render_example_returns_previews_and_downloads(client):
    import imageio.v3 as iio

    from engine.export import load_ply

    model, views, normals, video, files, info = client.predict(None, 10, 64, 12, api_name="/render")
    assert iio.imread(views).shape == (64, 256, 3)
    assert iio.imread(normals).shape == (64, 256, 3)
    assert iio.imread(video).shape[0] == 12
    assert load_ply(model).num_gaussians == 16384
    assert sorted(f.rsplit(".", 1)[-1] for f in files) == ["ply", "splat"]
    assert "16,384 Gaussians" in info
    # the splat viewer gets its own copy, turned upright for gradio's viewer; the download keeps our convention
    ply = next(f for f in files if f.endswith(".ply"))
    shown, saved = load_ply(model), load_ply(ply)
    assert model.endswith(".viewer.ply") and not ply.endswith(".viewer.ply")
    assert torch.allclose(shown.means, saved.means * torch.tensor([1.0, -1.0, -1.0]))
    red = (saved.colors[0, :, 0] > 0.6) & (saved.colors[0, :, 1] < 0.3)  # the cap
    assert saved.means[0, red, 1].mean() > saved.means[0, ~red, 1].mean() + 0.1  # the cap is up (+y) in the download


def test_viewer_copy_is_a_half_turn_about_x_not_a_mirror():
    from app.viewer import upright_for_viewer
    from engine.core.gaussians import quat_to_rotmat
    from engine.examples import mushroom

    g = mushroom()
    turned = upright_for_viewer(g)
    half_turn = torch.diag(torch.tensor([1.0, -1.0, -1.0]))  # det +1: a rotation, nothing swaps left-right
    assert torch.allclose(turned.means, g.means @ half_turn.T)
    assert torch.allclose(quat_to_rotmat(turned.quats), half_turn @ quat_to_rotmat(g.quats), atol=1e-6)
    assert torch.equal(turned.scales, g.scales) and torch.equal(turned.colors, g.colors)


def test_uploaded_splat_is_rendered(client, tmp_path):
    from gradio_client import handle_file

    from engine.export import save_splat_file
    from tests.conftest import random_gaussians

    path = save_splat_file(random_gaussians(500, dtype=torch.float32), tmp_path / "mine.ply")
    *_, info = client.predict(handle_file(str(path)), 20, 64, 12, api_name="/render")
    assert "mine.ply" in info and "500 Gaussians" in info


def test_bad_upload_gets_a_clear_message(client, tmp_path):
    from gradio_client import handle_file

    bad = tmp_path / "broken.ply"
    bad.write_bytes(b"ply\nformat binary_little_endian 1.0\nelement vertex 10\nproperty float x\nend_header\n" + b"\0" * 40)
    with pytest.raises(Exception, match="not a 3D Gaussian splat PLY"):
        client.predict(handle_file(str(bad)), 10, 64, 12, api_name="/render")


def test_generate_tab_makes_an_asset(client):
    import imageio.v3 as iio

    from engine.export import load_ply

    model, video, views, normals, ply, info = client.predict("a red chair", 0, 6, 4.5, 12, api_name="/generate")
    assert load_ply(model).num_gaussians > 1000
    assert model.endswith(".viewer.ply")  # the splat viewer's upright copy of the PLY
    assert torch.allclose(load_ply(model).means, load_ply(ply).means * torch.tensor([1.0, -1.0, -1.0]))
    assert iio.imread(views).shape == (256, 1024, 3) and iio.imread(normals).shape == (256, 1024, 3)
    assert iio.imread(video).shape[0] == 12
    assert ply.endswith(".ply") and "a red chair" in info and "6 steps" in info


@pytest.mark.parametrize("prompt,message", [("", "empty"), ("   ", "empty"), ("x" * 400, "limit"), ("123 !!", "no words")])
def test_generate_tab_rejects_bad_prompts(client, prompt, message):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match=message):
        client.predict(prompt, 0, 4, 4.5, 12, api_name="/generate")


def test_generate_tab_warns_outside_the_world(client):
    *_, info = client.predict("a teapot", 0, 4, 4.5, 12, api_name="/generate")
    assert "knows 24 object kinds" in info


def test_a_refused_prompt_clears_the_page_and_says_why():
    """After a refused prompt the page keeps no earlier asset beside the error (issue #30): the failure step
    clears every Generate output, the mesh ones too, and the info line says why in words."""
    from app.generate import explain_failure
    from app.ui import build_demo

    demo = build_demo()
    failure = [d for d in demo.fns.values() if getattr(d.fn, "__name__", "") == "explain_failure"]
    assert len(failure) == 2  # after a click and after Enter
    for d in failure:
        assert {getattr(o, "label", None) for o in d.outputs} >= {"Splat viewer", "Turntable: RGB | normals", "Download PLY",
                                                                  "Download GLB (mesh)", "Mesh preview (GLB)"}
        assert len(d.outputs) == 9
    *cleared, info, mesh, glb, mesh_info = explain_failure("123 !!", 0, 4, 4.5, 12)
    assert cleared == [None] * 5 and (mesh, glb, mesh_info) == (None, None, "")
    assert info.startswith("**Nothing was generated.** The prompt was refused: The prompt has no words")
    assert "The run was refused: No model or LoRA named 'run: nope'" in explain_failure("a chair", 0, 4, 4.5, 12, "tiny", "run: nope")[5]


def test_download_only_files_invite_no_upload():
    """Empty download boxes read "Drop File Here - or - Click to Upload" unless they are not interactive."""
    import gradio as gr

    from app.ui import INTRO, build_demo

    files = [b for b in build_demo().blocks.values() if isinstance(b, gr.File) and b.visible]
    downloads = [f for f in files if f.label in ("Download PLY", "Download GLB (mesh)", "LoRA zip",
                                                  "Downloads (PLY, .splat)", "Splats (PLY)")]
    assert len(downloads) == 6 and all(f.interactive is False for f in downloads), [(f.label, f.interactive) for f in downloads]
    uploads = [f for f in files if f.file_types]  # the upload boxes stay
    assert len(uploads) >= 2 and all(f.interactive is not False for f in uploads)  # (LoRA files, splat file, …)
    assert all(f"**{tab}**" in INTRO for tab in ("Generate", "Viewer", "Finetune", "Compare", "Theory"))  # the header


def test_mesh_step_turns_the_shown_splat_into_a_glb(client, tmp_path):
    import trimesh
    from gradio_client import handle_file

    from engine.export import save_splat_file
    from tests.test_mesh import surfel_sphere

    path = save_splat_file(surfel_sphere(1000), tmp_path / "ball.ply")
    preview, download, info = client.predict(handle_file(str(path)), api_name="/mesh")
    mesh = trimesh.load(download, force="mesh")
    assert preview.endswith("ball.glb") and len(mesh.faces) > 1000 and mesh.visual.kind == "vertex"
    assert f"{len(mesh.faces):,} faces" in info and "watertight" in info


def test_mesh_step_explains_a_splat_without_a_surface(client, tmp_path):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    from engine.core.gaussians import Gaussians
    from engine.export import save_splat_file
    from tests.test_mesh import surfel_sphere

    g = surfel_sphere(300)
    faint = save_splat_file(Gaussians(**(g.fields() | {"opacities": g.opacities * 0.02})), tmp_path / "faint.ply")
    with pytest.raises(AppError, match="No mesh: .*too transparent"):
        client.predict(handle_file(str(faint)), api_name="/mesh")


@pytest.fixture(scope="module")
def diffsplat_client(tmp_path_factory):
    """The studio started with a (tiny, random) DiffSplat download folder, as `python app.py --diffsplat DIR`."""
    from app import generate
    from tests.diffsplat_fixtures import make_pas_release, make_text_encoder

    root = tmp_path_factory.mktemp("diffsplat")
    make_pas_release(root)
    make_text_encoder(root / "t5", "t5")
    generate.configure(generate.ModelSources(root, {"diffsplat-pas": str(root / "t5")}, device="cpu"))
    try:
        with _serve() as c:
            yield c
    finally:
        generate.configure(generate.ModelSources())


def test_generate_tab_offers_found_diffsplat_models(diffsplat_client):
    from app import generate

    found = generate.available_models()
    assert found["tiny"] == "shipped" and found["diffsplat-pas"] == "ready"
    assert "gsdiff_gobj83k_sd15__render" in found["diffsplat-sd15"]  # says what is missing
    assert generate.model_choices() == ["tiny", "diffsplat-pas"]
    assert generate.default_guidance("diffsplat-pas") == 4.5 and generate.on_model_change("diffsplat-pas")[0]["value"] == 4.5
    model, video, views, normals, ply, info = diffsplat_client.predict("a red chair", 0, 4, 4.5, 12, "diffsplat-pas", api_name="/generate")
    assert "diffsplat-pas" in info and ply.endswith(".ply")
    with pytest.raises(Exception, match="not in the list of choices"):
        diffsplat_client.predict("a red chair", 0, 4, 4.5, 12, "diffsplat-sd15", api_name="/generate")
    with pytest.raises(Exception, match="not available here.*gsdiff_gobj83k_sd15"):
        generate.run_generate("a red chair", 0, 4, 4.5, 12, "diffsplat-sd15")
