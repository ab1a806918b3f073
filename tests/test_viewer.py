"""`recon4d view`: the viewer's helpers, its state and save actions in-process, and the real page end to end
in headless Chromium driven over the DevTools protocol (CDP).

The scene is built directly (no fit): a checkered blue/orange wall and a green floor of still Gaussians, a
still patch born at frame 3, and a magenta ball of dynamic Gaussians that crosses the view from left to right
over 5 frames, seen by a sideways-moving camera. Its input frames are rendered with `recon4d.render` and
stored as an image folder that the scene names as its source (like `recon4d fit` does).
"""
from __future__ import annotations

import base64
import contextlib
import dataclasses
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

from recon4d.geometry.camera import invert_pose, look_at
from recon4d.io.scene import Cameras, Gaussians, Scene4D, load_scene, save_scene
from recon4d.render import rasterize

CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOT_COPY = Path("/tmp/recon4d_viewer_screenshot.png")
WIDTH, HEIGHT, NUM_FRAMES = 64, 36, 5
BALL_RGB = (0.9, 0.1, 0.9)  # magenta: no other object has this colour
BALL_CENTRE = (-1.5, 0.0, 3.5)
BALL_TRAVEL = 3.0  # world units to the right over the clip
PATCH_BIRTH = 3  # frame at which a still patch appears
VIEWPORT = (800, 500)  # CSS pixels of the headless page


# ---------------------------------------------------------------------------------------------------------
# The test scene.


def build_scene(out: Path) -> Scene4D:
    """Write OUT/scene.r4d and OUT/input/frame_NNN.png (the source) -> the scene."""
    g = torch.Generator().manual_seed(0)
    n_wall, n_floor, n_patch, n_ball = 6000, 3000, 300, 1500
    wall = torch.stack([torch.rand(n_wall, generator=g) * 8 - 4, torch.rand(n_wall, generator=g) * 5 - 3,
                        torch.full((n_wall,), 6.0)], -1)
    floor = torch.stack([torch.rand(n_floor, generator=g) * 8 - 4, torch.full((n_floor,), 1.2),
                         torch.rand(n_floor, generator=g) * 5 + 1.0], -1)
    patch = torch.rand(n_patch, 3, generator=g) * torch.tensor([1.0, 1.0, 0.0]) + torch.tensor([1.0, -2.0, 5.9])
    direction = torch.randn(n_ball, 3, generator=g)
    ball = 0.5 * direction / direction.norm(dim=1, keepdim=True) + torch.tensor(BALL_CENTRE)
    means = torch.cat([wall, floor, patch, ball])
    count = means.shape[0]
    quats = torch.zeros(count, 4)
    quats[:, 0] = 1
    scales = torch.full((count, 3), 0.08)
    scales[:n_wall, 2] = 0.01
    scales[-n_ball:] = 0.06
    checker = ((torch.floor(wall[:, 0]) + torch.floor(wall[:, 1])) % 2 == 0).float()[:, None]
    colors = torch.cat([
        checker * torch.tensor([0.8, 0.6, 0.4]) + (1 - checker) * torch.tensor([0.2, 0.4, 0.9]),
        torch.tensor([0.35, 0.6, 0.3]).expand(n_floor, 3),
        torch.tensor([0.1, 0.1, 0.1]).expand(n_patch, 3),
        torch.tensor(BALL_RGB).expand(n_ball, 3),
    ])
    is_dynamic = torch.zeros(count, dtype=torch.bool)
    is_dynamic[-n_ball:] = True
    birth = torch.zeros(count, dtype=torch.int32)
    birth[n_wall + n_floor:n_wall + n_floor + n_patch] = PATCH_BIRTH
    dynamic_means = torch.stack([ball + torch.tensor([BALL_TRAVEL * t / (NUM_FRAMES - 1), 0.0, 0.0])
                                 for t in range(NUM_FRAMES)])
    angle = torch.linspace(0, math.pi / 2, NUM_FRAMES)  # the ball also spins a quarter turn about y
    spin = torch.stack([torch.cos(angle / 2), torch.zeros_like(angle), torch.sin(angle / 2), torch.zeros_like(angle)], -1)
    dynamic_quats = spin[:, None, :].expand(NUM_FRAMES, n_ball, 4).clone()
    fx = 0.5 * WIDTH / math.tan(math.radians(35))
    poses = torch.stack([look_at(torch.tensor([-0.3 + 0.15 * t, -0.3, 0.0]), torch.tensor([0.0, 0.0, 6.0]),
                                 torch.tensor([0.0, -1.0, 0.0])) for t in range(NUM_FRAMES)])
    cameras = Cameras(poses, torch.tensor([[fx, fx, (WIDTH - 1) / 2, (HEIGHT - 1) / 2]]).repeat(NUM_FRAMES, 1),
                      torch.arange(NUM_FRAMES, dtype=torch.float32) / 10, WIDTH, HEIGHT,
                      [f"frame_{t:03d}.png" for t in range(NUM_FRAMES)])
    source = out / "input"
    scene = Scene4D(Gaussians(means, quats, scales, torch.full((count,), 0.9), colors), is_dynamic, birth,
                    dynamic_means, dynamic_quats, cameras, config={"source": str(source), "stride": 1})
    import cv2

    source.mkdir(parents=True, exist_ok=True)
    for t in range(NUM_FRAMES):
        current = scene.gaussians_at(t)
        image = rasterize(current.means, current.quats, current.scales, current.opacities, current.colors,
                          invert_pose(poses[t]), cameras.K(t), WIDTH, HEIGHT).color.clamp(0, 1).numpy()
        cv2.imwrite(str(source / f"frame_{t:03d}.png"), (image[:, :, ::-1] * 255).round().astype(np.uint8))
    save_scene(scene, out / "scene.r4d")
    return scene


@pytest.fixture(scope="module")
def scene_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("view") / "out"
    build_scene(out)
    return out


# ---------------------------------------------------------------------------------------------------------
# Pure helpers.


def test_splat_covariances_are_rotated_scales():
    from viewer.app import splat_covariances

    # 90 degrees about z maps x -> y: variances (1, 4, 9) on x, y, z become (4, 1, 9).
    half = math.sqrt(0.5)
    covariance = splat_covariances(np.array([[half, 0, 0, half], [2.0, 0, 0, 0]]), np.array([[1.0, 2, 3], [1, 2, 3]]))
    np.testing.assert_allclose(covariance[0], np.diag([4.0, 1, 9]), atol=1e-6)
    np.testing.assert_allclose(covariance[1], np.diag([1.0, 4, 9]), atol=1e-6)  # quats need not be unit


def test_decimate_keeps_the_most_important():
    from viewer.app import birth_groups, decimate, splat_importance

    importance = splat_importance(np.array([0.9, 0.1, 0.9, 0.5]), np.array([[1.0, 1, 1], [9, 9, 9], [2, 2, 0.1], [1, 1, 1]]))
    np.testing.assert_allclose(importance, [0.9, 8.1, 3.6, 0.5])  # opacity x area of the two largest axes
    assert decimate(importance, 2).tolist() == [1, 2]
    assert decimate(importance, 10).tolist() == [0, 1, 2, 3]
    births = np.array([0, 0, 3, 1, 3, 7])
    assert [(first, members.tolist()) for first, members in birth_groups(births, 8)] == [
        (0, [0, 1]), (1, [3]), (3, [2, 4]), (7, [5])]
    merged = birth_groups(births, 2)  # at most 2 nodes: each shows from its earliest birth frame
    assert len(merged) == 2 and merged[0][0] == 0 and sorted(np.concatenate([m for _, m in merged]).tolist()) == list(range(6))


def test_moving_state_matches_scene(viewer):
    """The streamed moving Gaussians are the scene's own time-t state (fractional t interpolates)."""
    scene = viewer.scene
    for t in (0.0, 2.0, 2.25, 4.0):
        means, quats, _ = viewer._moving_state(t)
        expected = scene.gaussians_at(t)
        alive_all = scene.birth_frame <= t
        position_in_alive = torch.cumsum(alive_all.long(), 0) - 1
        shown = torch.as_tensor(viewer.moving.index)[torch.as_tensor(viewer.moving.birth) <= t]
        alive = viewer.moving.birth <= t
        np.testing.assert_allclose(means[alive], expected.means[position_in_alive[shown]].numpy(), atol=1e-6)
        np.testing.assert_allclose(quats[alive], expected.quats[position_in_alive[shown]].numpy(), atol=1e-6)
        # What the time slider streams: the living ones alone, the same numbers.
        some = viewer._moving_state(t, alive)
        for whole, part in zip((means, quats), some[:2]):
            np.testing.assert_array_equal(part, whole[alive])


# ---------------------------------------------------------------------------------------------------------
# The viewer in-process (a real viser server, no browser).


@pytest.fixture()
def viewer(scene_dir, tmp_path):
    import viser

    from recon4d.io.scene_frames import read_scene_frames as input_frames
    from viewer.app import SceneViewer

    out = tmp_path / "out"
    shutil.copytree(scene_dir, out)
    scene = load_scene(out)
    with contextlib.redirect_stdout(sys.stderr):
        server = viser.ViserServer(host="127.0.0.1", port=0, verbose=False)
    app = SceneViewer(scene, out, server, frames=input_frames(scene))
    yield app
    app.close()


def test_viewer_streams_only_the_moving_node(viewer):
    scene = viewer.scene
    still_buffers = [handle.buffer.copy() for *_, handle in viewer.still_nodes]
    assert [first for first, *_ in viewer.still_nodes] == [0, PATCH_BIRTH]
    assert [handle.visible for *_, handle in viewer.still_nodes] == [True, False]
    viewer.set_time(3.5)
    assert [handle.visible for *_, handle in viewer.still_nodes] == [True, True]  # the patch is born at frame 3
    for before, (*_, handle) in zip(still_buffers, viewer.still_nodes):
        assert np.array_equal(before, handle.buffer)  # still nodes are never re-sent
    centres = viewer.moving_node.centers / viewer.unit
    expected = scene.gaussians_at(3.5).means[scene.is_dynamic].numpy()
    np.testing.assert_allclose(centres, expected, atol=1e-4)
    # The current-camera frustum follows the interpolated input camera.
    np.testing.assert_allclose(viewer.current_frustum.position, scene.cameras.world_from_camera_at(3.5)[:3, 3].numpy(),
                               atol=1e-5)


def test_viewer_budget_decimates_display(scene_dir, tmp_path):
    import viser

    from viewer.app import SceneViewer, ViewerConfig

    scene = load_scene(scene_dir)
    with contextlib.redirect_stdout(sys.stderr):
        server = viser.ViserServer(host="127.0.0.1", port=0, verbose=False)
    app = SceneViewer(scene, tmp_path, server, ViewerConfig(max_still_gaussians=1000, max_moving_gaussians=200))
    try:
        assert sum(handle.buffer.shape[0] for *_, handle in app.still_nodes) == 1000
        assert app.moving_node.buffer.shape[0] == 200
    finally:
        app.close()


def test_dynamic_background_follows_the_still_layer(scene_dir, tmp_path):
    """A dynamic Gaussian that is not a moving thing (background with a residual trajectory) moves with its
    trajectory in the streamed node but is shown, hidden and coloured with the still layer."""
    import viser

    from viewer.app import SceneViewer

    scene = load_scene(scene_dir)
    dynamic = scene.is_dynamic.nonzero().squeeze(1)
    scene.is_moving = scene.is_dynamic.clone()
    scene.is_moving[dynamic[::2]] = False  # half of the ball: a drifting background
    with contextlib.redirect_stdout(sys.stderr):
        server = viser.ViserServer(host="127.0.0.1", port=0, verbose=False)
    app = SceneViewer(scene, tmp_path, server)
    try:
        drifting = int((~scene.is_moving[dynamic]).sum())
        app.set_time(2.0)
        assert app.moving_node.visible and app.moving_node.buffer.shape[0] == len(dynamic)
        app.set_layer("moving", False)
        assert app.moving_node.visible and app.moving_node.buffer.shape[0] == drifting
        app.set_layer("moving", True)
        app.set_layer("still", False)
        assert app.moving_node.buffer.shape[0] == len(dynamic) - drifting
        app.set_layer("still", True)
        app.set_layer("highlight", True)
        rgbs = app.moving_node.rgbs.astype(np.float32)
        grey = np.abs(rgbs - rgbs.mean(-1, keepdims=True)).max(-1) < 2 / 255
        shown_moving = scene.is_moving[torch.as_tensor(app.moving.index)].numpy()
        assert grey[~shown_moving].all() and not grey[shown_moving].any()
    finally:
        app.close()


def test_render_view_and_export(viewer):
    import cv2

    from recon4d.export.ply import read_3dgs_ply

    viewer.config = dataclasses.replace(viewer.config, render_background=(0.0, 0.0, 0.0))  # as the input frames
    viewer.set_time(2.0)
    path = viewer.save_view()  # no browser: the input camera of the current time
    assert path.parent == viewer.out_dir / "views" and path.suffix == ".png"
    saved = cv2.imread(str(path))[:, :, ::-1].astype(np.float32) / 255
    frame = cv2.imread(str(viewer.out_dir / "input" / "frame_002.png"))[:, :, ::-1].astype(np.float32) / 255
    # All Gaussians through recon4d.render from the input camera reproduce the input frame rendered the same
    # way: measured identical pixels here; allow one 8-bit step of rounding.
    assert saved.shape == frame.shape and np.abs(saved - frame).max() <= 1 / 255 + 1e-6
    assert viewer.save_view() != path  # a second render does not overwrite the first
    written = viewer.export_frame()
    assert [p.name for p in written] == ["frame_0002.ply"]
    assert len(read_3dgs_ply(written[0])) == len(viewer.scene.gaussians_at(2))
    viewer.set_time(2.5)
    fractional = viewer.export_frame()
    assert fractional[0].name == "time_0002.50.ply" and len(read_3dgs_ply(fractional[0])) == len(viewer.scene.gaussians_at(2.5))


def test_tracks_and_mesh_layers(viewer):
    import trimesh

    viewer.set_time(1.0)
    viewer.set_layer("tracks", True)
    tracks = viewer._tracks
    assert tracks.query_frame == 1 and tracks.tracks_3d.shape[:2] == (NUM_FRAMES, 16 * 9)
    # Queries on the ball follow it: their 3D positions move by the ball's travel between frames 0 and 4.
    motion = np.linalg.norm(tracks.tracks_3d[-1] - tracks.tracks_3d[0], axis=1)
    assert (np.abs(motion - BALL_TRAVEL) < 0.05).any() and (motion < 1e-4).any()
    assert viewer._track_lines.points.shape == ((NUM_FRAMES - 1) * 16 * 9, 2, 3)
    viewer.set_time(4.0)
    np.testing.assert_allclose(viewer._track_heads.points, tracks.tracks_3d[4], atol=1e-5)

    mesh_dir = viewer.out_dir / "export" / "mesh"
    mesh_dir.mkdir(parents=True)
    trimesh.creation.box(extents=(1, 1, 1)).export(mesh_dir / "static.ply")
    trimesh.creation.icosphere().export(mesh_dir / "frame_0004.obj")
    # A split export of frames 0-1 (`recon4d export --split`): a window's still part, a frame's moving part.
    trimesh.creation.box(extents=(2, 2, 0.1)).export(mesh_dir / "still_0000.ply")
    trimesh.creation.icosphere(radius=0.2).export(mesh_dir / "moving_0001.ply")
    from viewer.app import find_meshes

    files = find_meshes(viewer.out_dir)
    assert files.static.name == "static.ply" and (set(files.whole), set(files.still), set(files.moving)) == (
        {4}, {0}, {1})
    assert [p.name for p in files.at(0.8)] == ["static.ply", "still_0000.ply", "moving_0001.ply"]
    assert [p.name for p in files.at(0.2)] == ["static.ply", "still_0000.ply"]  # frame 0: no moving surface
    # Frames 2 and 3 have no moving file either: they show the still part, not frame 1's moving part.
    assert [p.name for p in files.at(2.4)] == ["static.ply", "still_0000.ply"]
    assert [p.name for p in files.at(3.6)] == ["static.ply", "frame_0004.obj"]
    only_whole = dataclasses.replace(files, still={}, moving={})
    assert [p.name for p in only_whole.at(1.2)] == ["static.ply", "frame_0004.obj"]  # the nearest frame

    def visible():
        return {path.name: handle.visible for path, handle in viewer._mesh_handles.items()}

    viewer.set_layer("mesh", True)  # finds the files now; loads only what time 4 shows
    assert visible() == {"static.ply": True, "frame_0004.obj": True}
    viewer.config = dataclasses.replace(viewer.config, mesh_cache_files=3)
    viewer.set_time(1.0)  # frame 4's mesh is the least recently shown: it leaves the page
    assert visible() == {"static.ply": True, "still_0000.ply": True, "moving_0001.ply": True}
    viewer.set_time(0.0)
    assert visible() == {"static.ply": True, "still_0000.ply": True, "moving_0001.ply": False}
    viewer.set_layer("mesh", False)
    assert not any(visible().values())


def test_view_command_errors(tmp_path, capsys, monkeypatch):
    from recon4d.cli import main

    monkeypatch.setenv("RECON4D_NO_PROGRESS", "1")
    assert main(["view", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("recon4d: error: no scene file")
    assert main(["view", str(tmp_path), "--port", "70000"]) == 2
    assert "--port must be in 0..65535" in capsys.readouterr().err
    assert main(["view", str(tmp_path), "--host", "no-such-host.invalid"]) == 2
    assert "cannot serve on host" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------------
# End to end: `recon4d view` in a subprocess, the page in headless Chromium.


class DevTools:
    """A minimal Chrome DevTools Protocol client over one page's websocket."""

    def __init__(self, websocket_url: str) -> None:
        from websockets.sync.client import connect

        self.socket = connect(websocket_url, max_size=None, open_timeout=30)
        self.last_id = 0

    def call(self, method: str, timeout: float = 60, **params) -> dict:
        self.last_id += 1
        self.socket.send(json.dumps({"id": self.last_id, "method": method, "params": params}))
        deadline = time.monotonic() + timeout
        while True:
            message = json.loads(self.socket.recv(timeout=max(0.1, deadline - time.monotonic())))
            if message.get("id") == self.last_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]

    def evaluate(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"page script failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    def screenshot(self) -> np.ndarray:
        """The page as RGB [H, W, 3] uint8; the PNG bytes are kept in `last_png`."""
        import cv2

        self.last_png = base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"])
        return cv2.imdecode(np.frombuffer(self.last_png, np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1]

    def canvas(self) -> np.ndarray | None:
        """The 3D viewport's pixels (viser's WebGL canvas keeps its drawing buffer) as RGBA [H, W, 4] uint8."""
        import cv2

        url = self.evaluate("""(() => {
            const canvases = [...document.querySelectorAll('canvas')];
            if (!canvases.length) return null;
            const c = canvases.reduce((a, b) => a.width * a.height >= b.width * b.height ? a : b);
            return c.toDataURL('image/png'); })()""")
        if not url:
            return None
        image = cv2.imdecode(np.frombuffer(base64.b64decode(url.split(",", 1)[1]), np.uint8), cv2.IMREAD_UNCHANGED)
        return cv2.cvtColor(image, cv2.COLOR_BGRA2RGBA)

    def uncovered_viewport(self, step: int) -> np.ndarray:
        """[H/step, W/step] bool: page points where the 3D canvas is on top (not under the GUI panel,
        a notification or the logo), sampled every `step` CSS pixels."""
        rows = self.evaluate(f"""(() => {{
            const out = [];
            for (let y = {step // 2}; y < window.innerHeight; y += {step}) {{
                let row = '';
                for (let x = {step // 2}; x < window.innerWidth; x += {step}) {{
                    const e = document.elementFromPoint(x, y);
                    row += (e && e.tagName === 'CANVAS') ? '1' : '0';
                }}
                out.push(row);
            }}
            return out; }})()""")
        return np.array([[c == "1" for c in row] for row in rows])

    def close(self) -> None:
        self.socket.close()


def colour_fractions(rgb: np.ndarray) -> dict[str, np.ndarray]:
    """Masks of the test scene's colours in an RGB uint8 image [..., 3]."""
    r, g, b = (rgb[..., i].astype(np.int32) for i in range(3))
    return {
        "ball": (r > 150) & (b > 150) & (g < 110),
        "scene": ((b > r + 60) & (b > 150)) | ((r > b + 40) & (g > b) & (r > 130)) | ((g > r + 30) & (g > b + 30)),
        "blank": (r > 235) & (g > 235) & (b > 235),
    }


def stop_process(process: subprocess.Popen, grace: float = 10) -> None:
    """SIGTERM the process group led by `process` (its PID), then SIGKILL it if it is still there."""
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(grace)
    try:  # children of the group (chromium's renderer, GPU and zygote processes) must be gone too
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def read_url(viewer: subprocess.Popen, timeout: float) -> str:
    """Wait for the `serving ... at URL` line of `recon4d view` on its stdout."""
    found: list[str] = []

    def reader() -> None:
        for line in viewer.stdout:
            if line.startswith("serving "):
                found.append(line.split(" at ", 1)[1].split()[0])
                return

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    thread.join(timeout)
    if not found:
        raise AssertionError(f"recon4d view printed no URL within {timeout} s (exit code {viewer.poll()})")
    return found[0]


def wait_for(condition, timeout: float, interval: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value is not None:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def open_chromium_page(profile: Path) -> tuple[subprocess.Popen, DevTools]:
    """Headless Chromium (software WebGL) with one blank page of VIEWPORT CSS pixels, and a DevTools
    connection to that page; the browser is stopped again if the connection fails."""
    browser = subprocess.Popen(
        [str(CHROMIUM), "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--enable-unsafe-swiftshader", "--use-angle=swiftshader", "--disable-quic", "--no-first-run",
         "--disable-component-update", "--disable-sync", f"--user-data-dir={profile}",
         "--remote-debugging-port=0", f"--window-size={VIEWPORT[0]},{VIEWPORT[1]}", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        active_port = profile / "DevToolsActivePort"
        port = wait_for(lambda: int(active_port.read_text().split()[0]) if active_port.exists()
                        and active_port.read_text().strip() else None, 60, 0.05, "Chromium's DevTools port")
        targets = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=30).read())
        devtools = DevTools(next(t for t in targets if t["type"] == "page")["webSocketDebuggerUrl"])
        devtools.call("Emulation.setDeviceMetricsOverride", width=VIEWPORT[0], height=VIEWPORT[1],
                      deviceScaleFactor=1, mobile=False)
    except BaseException:
        stop_process(browser)
        raise
    return browser, devtools


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs /usr/bin/chromium (Debian package `chromium`)")
@pytest.mark.slow
def test_viewer_in_headless_chromium(scene_dir, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(scene_dir, out)
    profile = Path(tempfile.mkdtemp(prefix="chromium-profile-", dir=tmp_path))
    env = {**os.environ, "RECON4D_NO_PROGRESS": "1"}
    started = time.monotonic()
    viewer_log = (tmp_path / "viewer.log").open("w")
    viewer = subprocess.Popen([sys.executable, "-m", "recon4d", "view", str(out), "--port", "0"],
                              stdout=subprocess.PIPE, stderr=viewer_log, text=True, env=env, start_new_session=True)
    browser = None
    devtools = None
    timings = {}
    try:
        url = read_url(viewer, timeout=120)
        timings["server_ready_s"] = time.monotonic() - started
        browser, devtools = open_chromium_page(profile)
        devtools.call("Page.navigate", url=url)

        def drawn_canvas():
            pixels = devtools.canvas()
            if pixels is None or pixels.shape[0] < 10:
                return None
            return pixels if colour_fractions(pixels[..., :3])["scene"].mean() > 0.3 else None

        first_canvas = wait_for(drawn_canvas, 120, 0.25, "splats in the viewer's canvas")
        timings["first_frame_s"] = time.monotonic() - started
        uncovered = devtools.uncovered_viewport(step=10)
        assert uncovered.mean() > 0.4  # the GUI panel and notices leave most of the viewport open

        def drawn_screenshot():  # splats fade in (viser grows them from zero size): wait for full colours
            shot = devtools.screenshot()[5::10, 5::10][: uncovered.shape[0], : uncovered.shape[1]]
            visible = colour_fractions(shot)
            return shot if visible["scene"][uncovered].mean() > 0.6 and visible["ball"][uncovered].mean() > 0.01 else None

        first_shot = wait_for(drawn_screenshot, 60, 0.1, "splats in a screenshot")
        timings["first_screenshot_s"] = time.monotonic() - started
        (tmp_path / "frame0.png").write_bytes(devtools.last_png)
        shutil.copyfile(tmp_path / "frame0.png", SCREENSHOT_COPY)
        fractions = colour_fractions(first_shot)
        # Splats are drawn: measured 0.74 of the open viewport shows wall/floor colours and 0.09 is blank
        # white (beyond the wall's edge); without splats the open viewport is the white page.
        assert fractions["scene"][uncovered].mean() > 0.5 and fractions["blank"][uncovered].mean() < 0.2
        ball_before = colour_fractions(first_canvas[..., :3])["ball"]
        assert ball_before.mean() > 0.01  # the moving ball is in view at frame 0

        # Move the time slider like a user: focus its thumb and press End (jump to the last frame).
        focused = devtools.evaluate("""(() => {
            for (const thumb of document.querySelectorAll('[role=slider]')) {
                let e = thumb;
                while (e && !(e.innerText || '').includes('Time (frame)')) e = e.parentElement;
                if (e && e.querySelectorAll('[role=slider]').length === 1) { thumb.focus(); return true; }
            }
            return false; })()""")
        assert focused, "no time slider in the page"
        for kind in ("keyDown", "keyUp"):
            devtools.call("Input.dispatchKeyEvent", type=kind, key="End", code="End", windowsVirtualKeyCode=35)
        moved_at = time.monotonic()

        def ball_centre_x(pixels: np.ndarray) -> float:
            mask = colour_fractions(pixels[..., :3])["ball"]
            return float(np.nonzero(mask)[1].mean() / mask.shape[1]) if mask.sum() > 50 else -1.0

        start_x = ball_centre_x(first_canvas)

        def moved_canvas():
            pixels = devtools.canvas()
            return pixels if ball_centre_x(pixels) > start_x + 0.2 else None

        last_canvas = wait_for(moved_canvas, 60, 0.25, "the ball to move after the time slider changed")
        timings["slider_update_s"] = time.monotonic() - moved_at
        assert devtools.evaluate("""[...document.querySelectorAll('[role=slider]')][0].getAttribute('aria-valuenow')""") == "4"
        if last_canvas.shape != first_canvas.shape:  # the drawing buffer can be resized with the layout
            import cv2

            last_canvas = cv2.resize(last_canvas, first_canvas.shape[1::-1], interpolation=cv2.INTER_AREA)
        changed = np.abs(last_canvas[..., :3].astype(int) - first_canvas[..., :3].astype(int)).max(-1) > 40
        # The drawn image changes: measured 0.18 of the canvas pixels change by > 40/255 (the ball crosses the
        # view, the patch born at frame 3 appears, the current-camera frustum moves).
        assert changed.mean() > 0.08
        timings.update(scene_fraction=round(float(fractions["scene"][uncovered].mean()), 3),
                       blank_fraction=round(float(fractions["blank"][uncovered].mean()), 3),
                       changed_fraction=round(float(changed.mean()), 3))
        last_shot = devtools.screenshot()
        (tmp_path / "frame4.png").write_bytes(devtools.last_png)
        shot_change = np.abs(last_shot.astype(int) - devtools_image(tmp_path / "frame0.png").astype(int)).max(-1) > 40
        assert shot_change.mean() > 0.02
        print(f"viewer timings: {timings}; screenshots in {tmp_path}, copy at {SCREENSHOT_COPY}")
    finally:
        from websockets.exceptions import ConnectionClosed

        if devtools is not None:
            with contextlib.suppress(RuntimeError, OSError, TimeoutError, ConnectionClosed):  # stopped by PID below anyway
                devtools.call("Browser.close", timeout=10)
            devtools.close()
        if browser is not None:
            stop_process(browser)
        stop_process(viewer)
        viewer_log.close()
    assert viewer.returncode == 0  # SIGTERM ends `recon4d view` cleanly
    if browser is not None:
        assert browser.returncode is not None


def devtools_image(path: Path) -> np.ndarray:
    import cv2

    return cv2.imread(str(path), cv2.IMREAD_COLOR)[:, :, ::-1]
