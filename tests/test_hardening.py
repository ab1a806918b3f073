"""Hostile and careless input: every case ends with one line on stderr and exit 2, writes nothing, replaces
nothing; loading never executes code; output sets are replaced whole; a damaged checkpoint does not block.

The CLI runs in-process (`recon4d.cli.main`), with stdout/stderr captured at the file-descriptor level so
that anything a C library prints is seen too.
"""
from __future__ import annotations

import errno
import json
import os
import pickle
import shutil
import stat
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from recon4d.cli import main
from recon4d.errors import InputError
from recon4d.fit.checkpoint import CHECKPOINT_NAME
from recon4d.fit.config import load_config
from recon4d.io.atomic import DiskFullError, atomic_path
from recon4d.io.outputs import OutputLock, OutputSet, locked_output_dir, recover_outputs
from recon4d.io.scene import load_scene, save_scene
from test_scene import make_scene

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "cup.mp4"
TINY = {"short_side": 24, "num_gaussians": 300, "frame0_iters": 20, "camera_iters": 8, "gaussian_iters": 8,
        "max_new_per_frame": 50, "holdout_refine_iters": 2, "max_frames": 4}


# ------------------------------------------------------------------------------------------------------
# Fixtures: a scene folder, files that are not what they claim to be


@pytest.fixture()
def world(tmp_path):
    scene_dir = tmp_path / "scene"
    save_scene(make_scene(num_frames=3, n=20), scene_dir / "scene.r4d")
    (tmp_path / "afile").write_text("not a folder")
    (tmp_path / "notes.mp4").write_text("hello")
    (tmp_path / "empty.mp4").write_bytes(b"")
    presets = {
        "list.yaml": "- 1\n- 2\n",
        "wrongtype.yaml": "num_gaussians: many\n",
        "floatint.yaml": "num_gaussians: 2.5\n",
        "unknown.yaml": "no_such_field: 3\n",
        "syntax.yaml": "num_gaussians: [1, 2\n",
        "negative.yaml": "lambda_depth: -1\n",
        "nan.yaml": "lr_means: .nan\n",
        "long-input.yaml": "keyframes:\n  long_clip:\n    input.short_side: 90\n",
        "long-bad-value.yaml": "keyframes:\n  long_clip:\n    sequential.camera_iters: -3\n",
        "long-unknown.yaml": "keyframes:\n  long_clip:\n    sequential.no_such_field: 1\n",
        "intkey.yaml": "1: 2\n",
        "binary.yaml": None,
    }
    for name, text in presets.items():
        if text is None:
            (tmp_path / name).write_bytes(b"\xff\xfe\x00garbage")
        else:
            (tmp_path / name).write_text(text)
    huge = tmp_path / "huge"
    huge.mkdir()
    for i in range(2):
        (huge / f"{i:03d}.png").write_bytes(_png_header(100_000, 100_000))
    tiny = tmp_path / "tiny"
    tiny.mkdir()
    import cv2

    for i in range(3):
        cv2.imwrite(str(tiny / f"{i:03d}.png"), np.full((1, 1, 3), 40 * i, np.uint8))
    return tmp_path


def _png_header(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


def _manifest_variant(world: Path, name: str, edit) -> Path:  # noqa: ANN001
    """A copy of the world's scene file whose JSON manifest went through `edit`."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    source = world / "scene" / "scene.r4d"
    with safe_open(str(source), framework="pt") as reader:
        metadata = dict(reader.metadata())
        tensors = {key: reader.get_tensor(key) for key in reader.keys()}
    metadata["manifest"] = json.dumps(edit(json.loads(metadata["manifest"])))
    target = world / name / "scene.r4d"
    target.parent.mkdir()
    save_file(tensors, str(target), metadata=metadata)
    return target.parent


def _with(manifest: dict, **changes) -> dict:
    return {**manifest, **changes}


# ------------------------------------------------------------------------------------------------------
# The fuzz table: (id, argv with {w} = the world folder, fragment of the one-line error)

S = "{w}/scene"
CASES = [
    # fit: inputs
    ("missing-video", ["fit", "{w}/missing.mp4", "-o", "{w}/o"], "missing.mp4"),
    ("text-as-video", ["fit", "{w}/notes.mp4", "-o", "{w}/o"], "notes.mp4"),
    ("empty-video", ["fit", "{w}/empty.mp4", "-o", "{w}/o"], "empty"),
    ("huge-image-header", ["fit", "{w}/huge", "-o", "{w}/o"], "000.png"),
    ("one-pixel-images", ["fit", "{w}/tiny", "-o", "{w}/o"], "1x1 pixels"),
    # fit: numbers
    ("gaussians-0", ["fit", str(SAMPLE), "-o", "{w}/o", "--gaussians", "0"], "--gaussians"),
    ("gaussians-negative", ["fit", str(SAMPLE), "-o", "{w}/o", "--gaussians", "-5"], "--gaussians"),
    ("gaussians-text", ["fit", str(SAMPLE), "-o", "{w}/o", "--gaussians", "lots"], "--gaussians"),
    ("fov-0", ["fit", str(SAMPLE), "-o", "{w}/o", "--fov", "0"], "--fov"),
    ("fov-200", ["fit", str(SAMPLE), "-o", "{w}/o", "--fov", "200"], "--fov"),
    ("fov-nan", ["fit", str(SAMPLE), "-o", "{w}/o", "--fov", "nan"], "--fov"),
    ("short-side-0", ["fit", str(SAMPLE), "-o", "{w}/o", "--short-side", "0"], "--short-side"),
    ("short-side-huge", ["fit", str(SAMPLE), "-o", "{w}/o", "--short-side", "100000"], "--short-side"),
    ("max-frames-1", ["fit", str(SAMPLE), "-o", "{w}/o", "--max-frames", "1"], "--max-frames"),
    ("stride-0", ["fit", str(SAMPLE), "-o", "{w}/o", "--stride", "0"], "--stride"),
    ("refine-iters-negative", ["fit", str(SAMPLE), "-o", "{w}/o", "--refine-iters", "-1"], "--refine-iters"),
    ("holdout-negative", ["fit", str(SAMPLE), "-o", "{w}/o", "--holdout-every", "-1"], "--holdout-every"),
    ("seed-negative", ["fit", str(SAMPLE), "-o", "{w}/o", "--seed", "-1"], "--seed"),
    ("intrinsics-three", ["fit", str(SAMPLE), "-o", "{w}/o", "--intrinsics", "1,2,3"], "--intrinsics"),
    ("intrinsics-zero-focal", ["fit", str(SAMPLE), "-o", "{w}/o", "--intrinsics", "0,0,1,1"], "--intrinsics"),
    ("intrinsics-nan", ["fit", str(SAMPLE), "-o", "{w}/o", "--intrinsics", "nan,1,1,1"], "--intrinsics"),
    ("flow-model-missing", ["fit", str(SAMPLE), "-o", "{w}/o", "--flow", "torchscript", "--flow-model", "{w}/no.pt"],
     "--flow-model"),
    ("depth-path-missing", ["fit", str(SAMPLE), "-o", "{w}/o", "--depth", "file", "--depth-path", "{w}/nodepth"],
     "--depth-path"),
    # fit: presets
    ("preset-unknown", ["fit", str(SAMPLE), "-o", "{w}/o", "--preset", "turbo"], "unknown preset"),
    ("preset-missing-file", ["fit", str(SAMPLE), "-o", "{w}/o", "--preset", "{w}/none.yaml"], "not found"),
    ("preset-list", ["fit", str(SAMPLE), "-o", "{w}/o", "--preset", "{w}/list.yaml"], "mapping"),
    ("preset-wrong-type", ["fit", str(SAMPLE), "-o", "{w}/o", "--preset", "{w}/wrongtype.yaml"], "num_gaussians"),
    ("preset-float-for-int", ["fit", str(SAMPLE), "-o", "{w}/o", "--preset", "{w}/floatint.yaml"], "num_gaussians"),
    ("preset-unknown-field", ["fit", str(SAMPLE), "-o", "{w}/o", "--preset", "{w}/unknown.yaml"], "no_such_field"),
    ("preset-syntax", ["fit", str(SAMPLE), "-o", "{w}/o", "--preset", "{w}/syntax.yaml"], "cannot parse"),
    ("preset-negative-weight", ["fit", str(SAMPLE), "-o", "{w}/o", "--preset", "{w}/negative.yaml"], "lambda_depth"),
    ("preset-nan", ["fit", str(SAMPLE), "-o", "{w}/o", "--preset", "{w}/nan.yaml"], "lr_means"),
    ("preset-long-clip-input", ["fit", str(SAMPLE), "-o", "{w}/o", "--preset", "{w}/long-input.yaml"], "keyframes.long_clip"),
    ("preset-long-clip-value", ["fit", str(SAMPLE), "-o", "{w}/o", "--preset", "{w}/long-bad-value.yaml"], "camera_iters"),
    ("preset-long-clip-unknown", ["fit", str(SAMPLE), "-o", "{w}/o", "--preset", "{w}/long-unknown.yaml"], "no_such_field"),
    ("preset-int-key", ["fit", str(SAMPLE), "-o", "{w}/o", "--preset", "{w}/intkey.yaml"], "unknown config field"),
    ("preset-binary", ["fit", str(SAMPLE), "-o", "{w}/o", "--preset", "{w}/binary.yaml"], "cannot parse"),
    # fit: output location
    ("out-under-file", ["fit", str(SAMPLE), "-o", "{w}/afile/sub"], "afile"),
    ("out-is-file", ["fit", str(SAMPLE), "-o", "{w}/afile"], "afile"),
    # refine
    ("refine-missing", ["refine", "{w}/nothing"], "no scene file"),
    ("refine-iters-negative", ["refine", S, "--refine-iters", "-1"], "--refine-iters"),
    ("refine-no-source", ["refine", S], "source video"),
    # render
    ("render-huge-width", ["render", S, "--width", "1000000"], "too large"),
    ("render-huge-scale", ["render", S, "--scale", "1000"], "too large"),
    ("render-fps-0", ["render", S, "--fps", "0"], "--fps"),
    ("render-fps-negative", ["render", S, "--fps", "-3"], "--fps"),
    ("render-scale-0", ["render", S, "--scale", "0"], "--scale"),
    ("render-frames-0", ["render", S, "--frames", "0"], "--frames"),
    ("render-slowmo-half", ["render", S, "--slowmo", "0.5"], "--slowmo"),
    ("render-zoom-0", ["render", S, "--path", "zoom", "--zoom", "0"], "--zoom"),
    ("render-unknown-path", ["render", S, "--path", "loop-the-loop"], "camera path"),
    ("render-out-under-file", ["render", S, "-o", "{w}/afile/sub"], "afile"),
    ("render-dest-under-file", ["render", S, "--dest", "{w}/afile/sub"], "afile"),
    # track
    ("track-grid-huge", ["track", S, "--grid", "100000"], "--grid"),
    ("track-grid-0", ["track", S, "--grid", "0"], "--grid"),
    ("track-point-four-numbers", ["track", S, "--points", "1,2,3,4"], "--points"),
    ("track-query-frame-outside", ["track", S, "--grid", "2", "--query-frame", "99"], "99"),
    ("track-fps-0", ["track", S, "--grid", "2", "--fps", "0"], "--fps"),
    ("track-out-under-file", ["track", S, "--grid", "2", "-o", "{w}/afile/sub"], "afile"),
    # export
    ("export-frame-negative", ["export", S, "--format", "ply", "--frame=-1"], "--frame"),
    ("export-frame-outside", ["export", S, "--format", "ply", "--frame", "99"], "--frame"),
    ("export-frame-text", ["export", S, "--format", "ply", "--frame", "first"], "--frame"),
    ("export-unknown-format", ["export", S, "--format", "usdz"], "--format"),
    ("export-out-under-file", ["export", S, "--format", "ply", "-o", "{w}/afile/sub"], "afile"),
    ("export-dest-under-file", ["export", S, "--format", "cameras", "--dest", "{w}/afile/sub"], "afile"),
    # scene files
    ("scene-garbage", ["info", "{w}/notes.mp4"], "truncated or not"),
    ("scene-empty", ["info", "{w}/empty.mp4"], "truncated or not"),
    ("device-unknown", ["--device", "gpu", "info", S], "invalid choice"),
]

MANIFEST_CASES = [
    ("manifest-list", lambda m: [m], "JSON object"),
    ("manifest-width-text", lambda m: _with(m, width="abc"), "width"),
    ("manifest-width-negative", lambda m: _with(m, width=-5), "width"),
    ("manifest-width-huge", lambda m: _with(m, height=10**9), "height"),
    ("manifest-width-bool", lambda m: _with(m, width=True), "width"),
    ("manifest-names-not-list", lambda m: _with(m, frame_names="abc"), "frame_names"),
    ("manifest-config-list", lambda m: _with(m, config=[1, 2]), "config"),
    ("manifest-motion-text", lambda m: _with(m, motion="yes"), "motion"),
]


def _snapshot(root: Path) -> dict[str, bytes]:
    """Every file under root (but lock files, which hold no result) with its bytes."""
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file() and p.name != ".lock"}


def _run(argv: list[str], capfd) -> tuple[int, str, str]:  # noqa: ANN001
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse's usage errors
        code = exit_.code
    captured = capfd.readouterr()
    return code, captured.out, captured.err


def _assert_one_line_exit_2(code: int, err: str, fragment: str) -> None:
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1, err
    assert lines[0].startswith("recon4d: error:") and fragment in lines[0], err
    assert "internal error" not in err and "Traceback" not in err


@pytest.mark.parametrize("argv, fragment", [pytest.param(a, f, id=i) for i, a, f in CASES])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(world, capfd, argv, fragment, monkeypatch):
    monkeypatch.setenv("RECON4D_NO_PROGRESS", "1")
    monkeypatch.chdir(world)
    before = _snapshot(world)
    code, _, err = _run([a.format(w=world) for a in argv], capfd)
    _assert_one_line_exit_2(code, err, fragment)
    assert _snapshot(world) == before, "a failed command changed files"


@pytest.mark.parametrize("edit, fragment", [pytest.param(e, f, id=i) for i, e, f in MANIFEST_CASES])
def test_malformed_manifest_is_one_line_exit_2(world, capfd, edit, fragment):
    folder = _manifest_variant(world, "variant", edit)
    for command in (["info", str(folder)], ["export", str(folder), "--format", "ply", "--frame", "0"]):
        code, _, err = _run(command, capfd)
        _assert_one_line_exit_2(code, err, fragment)
    assert not (folder / "export").exists()


def test_closed_pipe_is_quiet(world):
    """`recon4d info ... | head -c 5`: no traceback, no 'internal error'."""
    shell = f"{sys.executable} -m recon4d info {world / 'scene'} | head -c 5"
    result = subprocess.run(["bash", "-c", shell], capture_output=True, text=True, timeout=120)
    assert result.stdout and len(result.stdout) <= 5
    assert "Traceback" not in result.stderr and "Error" not in result.stderr, result.stderr


# ------------------------------------------------------------------------------------------------------
# Class 1: loading never executes code


class _Planted:
    """Unpickling this object writes a marker file: proof that a load executed code."""

    marker: str = ""

    def __reduce__(self):
        return (Path(self.marker).write_text, ("pwned",))


def _tiny_fit(source: Path, out: Path, prior_settings=None, **kwargs):
    from recon4d.fit.pipeline import fit_video

    config = load_config("fast").replace(**TINY, refine=False, **({"priors": prior_settings} if prior_settings else {}))
    return fit_video(source, out, config, torch.device("cpu"), log=lambda *_: None, **kwargs)


def test_planted_pickle_checkpoint_is_never_loaded(tmp_path):
    out = tmp_path / "out"
    marker = tmp_path / "marker.txt"
    planted = _Planted()
    planted.marker = str(marker)
    (out / ".checkpoint").mkdir(parents=True)
    (out / ".checkpoint" / "state.pt").write_bytes(pickle.dumps({"key": planted}))
    result = _tiny_fit(SAMPLE, out)
    assert not marker.exists(), "the planted checkpoint ran code"
    assert not (out / ".checkpoint" / "state.pt").exists()
    assert result.scene.num_frames == 4 and (out / ".checkpoint" / CHECKPOINT_NAME).is_file()


def test_package_never_unpickles():
    """Audit: no pickle-based load anywhere in the package."""
    root = Path(__file__).resolve().parents[1]
    offenders = []
    for path in [*root.joinpath("recon4d").rglob("*.py"), *root.joinpath("viewer").rglob("*.py")]:
        text = path.read_text()
        for needle in ("pickle.load", "weights_only=False", "allow_pickle=True", "yaml.load(", "yaml.unsafe_load",
                       "yaml.Loader", "yaml.FullLoader"):
            if needle in text:
                offenders.append(f"{path.relative_to(root)}: {needle}")
        for line in text.splitlines():
            if "torch.load(" in line and "weights_only=True" not in line:
                offenders.append(f"{path.relative_to(root)}: {line.strip()}")
    assert not offenders, offenders


# ------------------------------------------------------------------------------------------------------
# Classes 2-4: output sets, replacement, locking, damaged checkpoints (one tiny fit shared)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = tmp_path_factory.mktemp("finished") / "out"
    _tiny_fit(SAMPLE, out)
    return out


OUTPUTS = ("scene.r4d", "cameras.json", "metrics.json", "comparison.mp4")


def _assert_same_scene(a: Path, b: Path) -> None:
    """Bit-identical tensors (the manifest differs only by timings)."""
    from safetensors.torch import load_file

    left, right = load_file(str(a / "scene.r4d")), load_file(str(b / "scene.r4d"))
    assert left.keys() == right.keys()
    for key in left:
        assert torch.equal(left[key], right[key]), key


def _outputs(folder: Path) -> dict[str, bytes]:
    return {name: (folder / name).read_bytes() for name in OUTPUTS}


@pytest.mark.parametrize("victim", OUTPUTS)
def test_kill_during_any_output_write_keeps_the_old_set(finished, tmp_path, monkeypatch, victim):
    import recon4d.fit.outputs as pipeline

    out = tmp_path / "out"
    shutil.copytree(finished, out)
    before = _outputs(out)
    writers = {"scene.r4d": "save_scene", "cameras.json": "write_bytes_atomic", "metrics.json": "write_bytes_atomic",
               "comparison.mp4": "write_video"}
    original = getattr(pipeline, writers[victim])

    def dying_writer(*args, **kwargs):
        target = next(Path(a) for a in args if isinstance(a, (str, Path)))
        if target.name == victim:
            target.write_bytes(b"half")  # the kill lands mid-write
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(pipeline, writers[victim], dying_writer)
    with pytest.raises(KeyboardInterrupt):
        _tiny_fit(SAMPLE, out)
    assert _outputs(out) == before, "an interrupted run changed the finished set"
    assert not (out / ".staging").exists() and not list(out.glob(".*.tmp"))
    monkeypatch.setattr(pipeline, writers[victim], original)
    _tiny_fit(SAMPLE, out)  # the same command again: resumes and rewrites an identical set
    assert (out / "cameras.json").read_bytes() == before["cameras.json"]
    _assert_same_scene(out, finished)


def test_kill_during_the_switch_rolls_forward(tmp_path, monkeypatch):
    import recon4d.io.outputs as outputs_module

    out = tmp_path / "out"
    out.mkdir()
    for name in OUTPUTS:
        (out / name).write_text(f"old {name}")
    staged = OutputSet(out)
    for name in OUTPUTS:
        staged.path(name).write_text(f"new {name}")
    real_replace, calls = os.replace, []

    def dying_replace(src, dst):
        calls.append(dst)
        if len(calls) == 3 and Path(dst).parent == out:  # two files switched, then the process dies
            raise KeyboardInterrupt
        return real_replace(src, dst)

    monkeypatch.setattr(outputs_module.os, "replace", dying_replace)
    with pytest.raises(KeyboardInterrupt):
        staged.commit()
    monkeypatch.setattr(outputs_module.os, "replace", real_replace)
    assert recover_outputs(out) == "rolled-forward"
    assert {name: (out / name).read_text() for name in OUTPUTS} == {name: f"new {name}" for name in OUTPUTS}
    assert not (out / ".staging").exists()


def test_uncommitted_staging_is_discarded_and_stale_temp_files_swept(tmp_path):
    out = tmp_path / "out"
    (out / ".staging").mkdir(parents=True)
    (out / ".staging" / "scene.r4d").write_text("partial")
    (out / ".scene.r4d.abc123.tmp").write_text("partial")
    (out / "scene.r4d").write_text("old")
    with locked_output_dir(out):
        pass
    assert (out / "scene.r4d").read_text() == "old"
    assert not (out / ".staging").exists() and not list(out.glob(".*.tmp"))


def test_different_finished_scene_is_not_replaced_silently(finished, tmp_path, capfd):
    out = tmp_path / "out"
    shutil.copytree(finished, out)
    before = _outputs(out)
    argv = ["fit", str(SAMPLE), "-o", str(out), "--preset", "fast", "--max-frames", "3", "--short-side", "20"]
    code, _, err = _run(argv, capfd)
    _assert_one_line_exit_2(code, err, "--overwrite")
    assert _outputs(out) == before


def test_second_writer_gets_a_clear_lock_error(finished, tmp_path, capfd):
    out = tmp_path / "out"
    shutil.copytree(finished, out)
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from recon4d.io.outputs import OutputLock\n"
        f"lock = OutputLock({str(out)!r}).acquire(); print('locked', flush=True); time.sleep(60)")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        code, _, err = _run(["refine", str(out)], capfd)
        _assert_one_line_exit_2(code, err, f"PID {holder.pid}")
    finally:
        holder.kill()
        holder.wait()
    with OutputLock(out):  # released when its holder died (kill -9 included)
        pass


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty", "foreign"])
def test_damaged_checkpoint_starts_over(finished, tmp_path, damage, capsys):
    out = tmp_path / "out"
    shutil.copytree(finished, out)
    checkpoint = out / ".checkpoint" / CHECKPOINT_NAME
    data = checkpoint.read_bytes()
    replacement = {"truncated": data[: len(data) // 2], "garbage": os.urandom(2000), "empty": b"",
                   "foreign": (out / "scene.r4d").read_bytes()}[damage]
    checkpoint.write_bytes(replacement)
    from recon4d.fit.pipeline import fit_video

    config = load_config("fast").replace(**TINY, refine=False)
    lines = []
    result = fit_video(SAMPLE, out, config, torch.device("cpu"), log=lines.append)
    assert any("damaged" in line and "starting over" in line for line in lines), lines
    assert result.scene.num_frames == 4
    _assert_same_scene(out, finished)  # a restart reproduces the fit


# ------------------------------------------------------------------------------------------------------
# Class 7: files written like any other file of the user's; a full disk said in one line


def test_outputs_respect_the_umask(tmp_path):
    previous = os.umask(0o022)
    try:
        with atomic_path(tmp_path / "a.json") as tmp:
            tmp.write_text("{}")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o644


def test_disk_full_is_one_line_naming_the_file(tmp_path):
    with pytest.raises(DiskFullError, match=r"disk full while writing .*scene\.r4d"):
        with atomic_path(tmp_path / "scene.r4d"):
            raise OSError(errno.ENOSPC, "No space left on device")
    assert not list(tmp_path.iterdir())


def test_config_values_are_checked_when_loaded():
    with pytest.raises(InputError, match="num_gaussians"):
        load_config("default", {"num_gaussians": 0})
    with pytest.raises(InputError, match="fov_x_deg"):
        load_config("default", {"fov_x_deg": 0.0})
    assert load_config("default", {"num_gaussians": 5}).num_gaussians == 5


def test_scene_loads_after_an_interrupted_switch(tmp_path):
    """A reader (`load_scene` of a folder) finishes an interrupted commit before reading."""
    out = tmp_path / "out"
    save_scene(make_scene(num_frames=3, n=20), out / "scene.r4d")
    staged = OutputSet(out)
    save_scene(make_scene(num_frames=4, n=20), staged.path("scene.r4d"))
    (out / ".staging" / "COMMIT").write_text(json.dumps({"files": ["scene.r4d"]}))
    assert load_scene(out).num_frames == 4


# ------------------------------------------------------------------------------------------------------
# The prior backends belong to the run (#15 defects): another backend is another run; refine reuses them


def test_other_prior_backend_is_another_run(finished, tmp_path, monkeypatch):
    from recon4d.fit.pipeline import refine_output
    from recon4d.priors import pipeline as prior_pipeline
    from recon4d.priors.pipeline import PriorSettings

    out = tmp_path / "out"
    shutil.copytree(finished, out)
    with pytest.raises(InputError, match="another input or settings"):
        _tiny_fit(SAMPLE, out, prior_settings=PriorSettings(flow="farneback"))
    lines: list[str] = []
    from recon4d.fit.pipeline import fit_video

    config = load_config("fast").replace(**TINY, refine=False, priors=PriorSettings(flow="farneback"))
    result = fit_video(SAMPLE, out, config, torch.device("cpu"), overwrite=True, log=lines.append)
    assert any("another input or config: starting over" in line for line in lines), lines
    assert result.scene.config["priors"]["flow"] == "farneback"

    used = []
    real = prior_pipeline.compute_priors

    def spy(frames, intrinsics, settings, **kwargs):
        used.append(settings.flow)
        return real(frames, intrinsics, settings, **kwargs)

    monkeypatch.setattr("recon4d.priors.pipeline.compute_priors", spy)
    refined = refine_output(out, torch.device("cpu"), {"refine_iters": 2}, log=lambda *_: None)
    assert used == ["farneback"] and refined.scene.config["priors"]["flow"] == "farneback"
