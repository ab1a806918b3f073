"""The viewer's Generate panel (issue 17): model discovery, the button's callback with real sampling of the
shipped model (the shown Gaussians take the prompt's colour), one-line errors in the panel, saving the sample
as a scene directory, and in headless Chromium: the panel is on the page only when a model is, and its
button puts a generated object into the 3D view."""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from recon4d.errors import InputError
from recon4d.gen import model_io
from recon4d.io.scene import load_scene

pytestmark = pytest.mark.usefixtures("one_thread")


def _viser_server():
    import viser

    with contextlib.redirect_stdout(sys.stderr):  # viser prints a banner
        return viser.ViserServer(host="127.0.0.1", port=0, verbose=False)


@pytest.fixture(scope="module")
def viewer(tmp_path_factory):
    """A viewer of a small moving-patch scene with the shipped generator's panel."""
    from view_scenes import moving_patch_scene
    from viewer.app import SceneViewer

    app = SceneViewer(moving_patch_scene(), tmp_path_factory.mktemp("gen_view"), _viser_server(),
                      generator_model=model_io.SHIPPED_DIR)
    yield app
    app.close()


def _press(panel, prompt: str, steps, solver: str = "auto", seed=0):  # noqa: ANN001, ANN202
    panel.prompt_box.value, panel.steps_box.value, panel.solver_box.value, panel.seed_box.value = prompt, steps, solver, seed
    return panel.on_generate()


def test_model_discovery(tmp_path, monkeypatch):
    from viewer.generate import find_generator_model

    assert find_generator_model(None) == model_io.SHIPPED_DIR  # the shipped model by default
    assert find_generator_model(None, enabled=False) is None  # --no-generate
    assert find_generator_model(model_io.SHIPPED_DIR) == model_io.SHIPPED_DIR
    with pytest.raises(InputError, match="no model in"):  # asked for explicitly: an error, not a silent no-panel
        find_generator_model(tmp_path)
    monkeypatch.setattr(model_io, "SHIPPED_DIR", tmp_path / "not_installed")
    assert find_generator_model(None) is None  # an install without the model: no panel


def test_no_model_no_panel(tmp_path):
    from view_scenes import moving_patch_scene
    from viewer.app import SceneViewer

    app = SceneViewer(moving_patch_scene(), tmp_path, _viser_server())
    try:
        assert app.generate_panel is None
    finally:
        app.close()


def test_bad_input_is_a_line_in_the_panel(viewer):
    """Rejected before anything is loaded or sampled; the panel stays usable."""
    panel = viewer.generate_panel
    assert _press(panel, "   ", 4) is None
    assert panel.status.content == '**failed:** the prompt is empty (e.g. recon4d gen sample "a red mug" -o out/mug)'
    assert _press(panel, "a red ball", 0) is None and "--steps must be between 1 and 1000, got 0" in panel.status.content
    with pytest.raises(InputError, match="whole numbers"):  # the steps box only holds whole numbers; a caller
        panel.generate("a red ball", 2.5, "euler", 0)
    assert not panel.generate_button.disabled


@pytest.mark.slow
def test_generate_shows_the_prompts_colour(viewer):
    """Real sampling with the shipped model: the node holds G Gaussians, in front of the input camera, coloured
    as asked (measured opacity-weighted mean RGB at 4 steps: red ball (0.50, 0.08, 0.13), blue cube
    (0.12, 0.22, 0.51), green cube (0.19, 0.40, 0.27))."""
    panel = viewer.generate_panel
    for prompt, channel in (("a red ball", 0), ("a blue cube", 2), ("a green cube", 1)):
        generated = _press(panel, prompt, 4, "euler", 0)
        assert generated is not None, panel.status.content
        node = panel.node
        assert node.centers.shape == (1024, 3) and panel.status.content == f"generated *{prompt}*: 1024 Gaussians"
        weight = node.opacities.astype(np.float32)
        mean_rgb = (node.rgbs.astype(np.float32) * weight).sum(0) / weight.sum()
        others = [c for c in range(3) if c != channel]
        assert mean_rgb[channel] > 1.3 * mean_rgb[others].max(), f"{prompt}: mean colour {mean_rgb}"
    # Upright in front of the input camera of the current time: canonical x -> camera right, canonical up (+z)
    # -> camera up (-y), the unit ball -> a quarter of the scene depth, at that depth along the view.
    from recon4d.gen.latents import to_gaussians

    pose = viewer.camera_pose_at(viewer.time)
    centre, radius = pose[:3, 3] + viewer.depth_scale * pose[:3, 2], 0.25 * viewer.depth_scale
    canonical = to_gaussians(generated.latent).means.numpy()
    axes = np.stack([pose[:3, 0], pose[:3, 2], -pose[:3, 1]], 1)
    np.testing.assert_allclose(generated.means, centre + radius * canonical @ axes.T, atol=1e-4)
    assert np.linalg.norm(generated.means.mean(0) - centre) < 0.3 * radius
    # A step count the BOSS solver has no schedule for is a line in the panel; the shown sample stays.
    assert _press(panel, "a red ball", 3, "boss") is None
    assert "no BOSS schedule for 3 steps" in panel.status.content and panel.generated is generated
    # Save: a scene directory `recon4d view/render/export` open, holding the sample in its canonical frame.
    path = panel.on_save()
    assert path == viewer.out_dir / "generated" / "a_green_cube_000" / "scene.r4d"
    saved = load_scene(path.parent)
    assert len(saved.gaussians) == 1024 and float(saved.gaussians.means.norm(dim=1).max()) < 1.5
    assert (path.parent / "preview.mp4").is_file() and panel.on_save().parent.name == "a_green_cube_001"


def test_view_command_rejects_a_model_dir_without_a_model(tmp_path, capsys, monkeypatch):
    from view_scenes import moving_patch_scene

    from recon4d.cli import main
    from recon4d.io.scene import save_scene

    monkeypatch.setenv("RECON4D_NO_PROGRESS", "1")
    save_scene(moving_patch_scene(), tmp_path / "out" / "scene.r4d")
    assert main(["view", str(tmp_path / "out"), "--gen-model", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no model in" in err


# ---------------------------------------------------------------------------------------------------------
# The real page in headless Chromium (the DevTools helpers of test_viewer).


def _start_view(out: Path, log: Path, *flags: str) -> subprocess.Popen:
    env = {**os.environ, "RECON4D_NO_PROGRESS": "1"}
    return subprocess.Popen([sys.executable, "-m", "recon4d", "view", str(out), "--port", "0", *flags],
                            stdout=subprocess.PIPE, stderr=log.open("w"), text=True, env=env, start_new_session=True)


def _red_fraction(pixels: np.ndarray) -> float:
    """Share of dark-red pixels (the generated mug; no object of the test scene has this colour)."""
    r, g, b = (pixels[..., i].astype(np.int32) for i in range(3))
    return float(((r > 70) & (r > 2 * g) & (r > 2 * b) & (b < 90)).mean())


@pytest.mark.skipif(not Path("/usr/bin/chromium").exists(), reason="needs /usr/bin/chromium")
@pytest.mark.slow
def test_panel_in_headless_chromium(tmp_path):
    from test_viewer import build_scene, open_chromium_page, read_url, stop_process, wait_for

    out = tmp_path / "out"
    build_scene(out)
    with_model = _start_view(out, tmp_path / "with.log")  # the shipped model
    without = _start_view(out, tmp_path / "without.log", "--no-generate")
    processes, devtools = [with_model, without], None
    try:
        urls = [read_url(p, timeout=120) for p in processes]
        profile = Path(tempfile.mkdtemp(prefix="chromium-profile-", dir=tmp_path))
        browser, devtools = open_chromium_page(profile)
        processes.append(browser)

        def page_text_with(marker: str):  # noqa: ANN202
            text = devtools.evaluate("document.body ? document.body.innerText : ''") or ""
            return text if marker in text else None

        # Without a model: the viewer's own panels, no Generate panel.
        devtools.call("Page.navigate", url=urls[1])
        text = wait_for(lambda: page_text_with("Time (frame)"), 120, 0.25, "the viewer's GUI")
        assert "Prompt" not in text and "Generate" not in text

        # With the shipped model: the panel, and its button puts a dark-red mug into the view.
        devtools.call("Page.navigate", url=urls[0])
        text = wait_for(lambda: page_text_with("Prompt"), 120, 0.25, "the Generate panel")
        assert "Generate" in text and "Seed" in text and "Solver" in text
        time.sleep(2)  # splats fade in
        before = devtools.canvas()[..., :3]
        clicked = devtools.evaluate("""(() => {
            const button = [...document.querySelectorAll('button')].find(b => b.innerText.trim() === 'Generate');
            if (!button) return false; button.click(); return true; })()""")
        assert clicked, "no Generate button in the page"
        wait_for(lambda: page_text_with("1024 Gaussians"), 180, 0.5, "the generated sample")
        def reddened():  # noqa: ANN202 - the canvas once the mug is drawn (splats fade in)
            pixels = devtools.canvas()[..., :3]
            return pixels if _red_fraction(pixels) > _red_fraction(before) + 0.003 else None

        # Measured: 0.005 of the canvas is dark red before (antialiased edges), 0.062 after.
        after = wait_for(reddened, 60, 0.5, "the generated object in the 3D view")
        print(f"red fraction of the canvas: {_red_fraction(before):.4f} -> {_red_fraction(after):.4f}")
    finally:
        if devtools is not None:
            devtools.close()
        for process in reversed(processes):
            stop_process(process)
    assert with_model.returncode == 0 and without.returncode == 0
