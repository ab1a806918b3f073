"""`recon4d fit-batch` end to end on real local Ray (2 workers) with tiny real fits of clips cut from the
bundled sample: a corrupt input is isolated, a re-run skips finished fits, a killed worker is retried and its
fit resumes from the checkpoint; bad arguments end with one line and exit 2 before any work."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from recon4d import load_scene
from recon4d.batch.inputs import expand_inputs

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "cup.mp4"
# A fit of a few seconds at 24 px: these tests check the batch machinery, not reconstruction quality.
TINY = """short_side: 24
num_gaussians: 200
frame0_iters: 15
camera_iters: 5
gaussian_iters: 5
max_new_per_frame: 40
holdout_refine_iters: 2
"""
# The same fit with a refinement of some seconds after the sequential pass: an interrupt sent when the first
# checkpoint appears lands inside it (the tiny fit alone can finish first on a fast machine).
TINY_REFINED = TINY + """refine: true
refine_iters: 600
"""
FIT_FILES = {"scene.r4d", "metrics.json", "cameras.json", "comparison.mp4"}


def batch(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "RECON4D_NO_PROGRESS": "1"}
    return subprocess.run([sys.executable, "-m", "recon4d", "fit-batch", *args], check=False, capture_output=True,
                          text=True, env=env, timeout=timeout)


def manifest(out: Path) -> dict[str, dict]:
    return {entry["name"]: entry for entry in json.loads((out / "batch.json").read_text())["inputs"]}


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    """inputs/: a.mp4 and b.mp4 (8 frames of 48x36 each, different parts of the sample), c.mp4 (corrupt)."""
    from recon4d.io.video import read_clip
    from recon4d.io.video_writer import write_video

    root = tmp_path_factory.mktemp("batch")
    (root / "tiny.yaml").write_text(TINY)
    (root / "tiny_refined.yaml").write_text(TINY_REFINED)
    inputs = root / "inputs"
    inputs.mkdir()
    frames = read_clip(SAMPLE, max_frames=16, short_side=36).frames
    write_video(inputs / "a.mp4", frames[:8], 10)
    write_video(inputs / "b.mp4", frames[8:], 10)
    (inputs / "c.mp4").write_bytes(b"this is no video " * 64)
    return root


@pytest.mark.slow
def test_corrupt_input_is_isolated_and_rerun_skips_finished(clips):
    out = clips / "out"
    flags = ["--preset", str(clips / "tiny.yaml"), "--max-frames", "4", "--workers", "2"]
    first = batch(str(clips / "inputs"), "-o", str(out), *flags)
    assert first.returncode == 1, first.stderr  # some inputs failed
    entries = manifest(out)
    assert sorted(entries) == ["a", "b", "c"]
    for name in ("a", "b"):
        entry = entries[name]
        assert entry["status"] == "ok" and entry["error"] is None
        assert FIT_FILES <= {p.name for p in (out / name).iterdir()}  # what `recon4d fit` writes
        metrics = json.loads((out / name / "metrics.json").read_text())
        assert entry["psnr"] == metrics["fitted"]["psnr"] > 15  # a real fit of the frames
        assert entry["frames"] == load_scene(out / name).num_frames == 4
        assert entry["output"] == str(out / name) and entry["seconds"] > 0
    bad = entries["c"]
    assert bad["status"] == "failed" and "c.mp4" in bad["error"] and "\n" not in bad["error"]
    assert not (out / "c" / "scene.r4d").exists()
    assert "failed" in first.stdout and "c.mp4" in (out / "batch_logs" / "c.log").read_text()

    stamps = {name: (out / name / "scene.r4d").stat().st_mtime_ns for name in ("a", "b")}
    second = batch(str(clips / "inputs"), "-o", str(out), *flags)
    assert second.returncode == 1, second.stderr
    assert "2 of 3 inputs already fitted" in second.stdout
    entries = manifest(out)
    assert [entries[n]["status"] for n in ("a", "b", "c")] == ["skipped", "skipped", "failed"]
    assert {name: (out / name / "scene.r4d").stat().st_mtime_ns for name in ("a", "b")} == stamps
    assert entries["a"]["psnr"] == json.loads((out / "a" / "metrics.json").read_text())["fitted"]["psnr"]


def _busy_fit_workers() -> list[int]:
    """PIDs of Ray workers running a fit-batch task (Ray titles them after the task: /proc/PID/cmdline)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # not a process, or it just ended
            continue
        if entry.name.isdigit() and cmdline.startswith("ray::recon4d fit-batch"):
            found.append(int(entry.name))
    return found


@pytest.mark.slow
def test_killed_worker_is_retried_and_fit_resumes(clips):
    out = clips / "killed"
    env = {**os.environ, "RECON4D_NO_PROGRESS": "1"}
    command = [sys.executable, "-m", "recon4d", "fit-batch", str(clips / "inputs" / "a.mp4"),
               str(clips / "inputs" / "b.mp4"), "-o", str(out), "--preset", str(clips / "tiny.yaml"),
               "--max-frames", "8", "--workers", "2"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 600
        # Mid-fit: a per-frame checkpoint of one input exists but its fit has not finished.
        while not (started := sorted(p.parent.parent.name for p in out.glob("*/.checkpoint/*.safetensors"))):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.1)
        victim = started[0]
        assert not (out / victim / "scene.r4d").exists()
        pid = int(re.findall(r" pid (\d+): ", (out / "batch_logs" / f"{victim}.log").read_text())[-1])
        assert pid in _busy_fit_workers()  # the Ray worker running that fit (the job logs its pid)
        os.kill(pid, signal.SIGKILL)
        _, stderr = proc.communicate(timeout=900)
    finally:
        proc.kill()
    assert proc.returncode == 0, stderr
    entries = manifest(out)
    assert [entries[n]["status"] for n in ("a", "b")] == ["ok", "ok"]
    for name in ("a", "b"):
        assert load_scene(out / name).num_frames == 8
    attempts = {name: re.split(r"^== ", (out / "batch_logs" / f"{name}.log").read_text(), flags=re.MULTILINE)[1:]
                for name in ("a", "b")}  # one "== <time> host <host> pid <pid>: <command>" header per attempt
    assert {name: len(runs) for name, runs in attempts.items()} == {"a": 1, "b": 1, victim: 2}
    assert f" pid {pid}: " not in attempts[victim][1]  # the retry ran in another worker process
    assert "resuming from frame" in attempts[victim][1]  # and continued from the checkpoint


@pytest.mark.slow
def test_ctrl_c_cancels_cleanly_and_rerun_resumes(clips):
    inputs = [str(clips / "inputs" / "a.mp4"), str(clips / "inputs" / "b.mp4")]
    env = {**os.environ, "RECON4D_NO_PROGRESS": "1"}
    # The interrupt is sent when the first checkpoint appears. Both tiny fits can still finish before it lands
    # (seen in full-suite runs: exit 0); then Ctrl-C was not exercised, and the attempt is repeated.
    for attempt in range(3):
        out = clips / f"interrupted{attempt}"
        flags = ["-o", str(out), "--preset", str(clips / "tiny_refined.yaml"), "--max-frames", "8", "--workers", "2"]
        # A user's Ctrl-C reaches a process whose SIGINT has its default action; a child of this test process
        # would inherit an ignored SIGINT if something earlier in the session left it ignored.
        proc = subprocess.Popen([sys.executable, "-m", "recon4d", "fit-batch", *inputs, *flags], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=env,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        try:
            deadline = time.monotonic() + 600
            while not list(out.glob("*/.checkpoint/*.safetensors")):
                assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
                time.sleep(0.1)
            proc.send_signal(signal.SIGINT)
            _, stderr = proc.communicate(timeout=120)
        finally:
            proc.kill()
        if proc.returncode != 0:
            break
    assert proc.returncode == 130 and "interrupted" in stderr.strip().splitlines()[-1]
    assert "Traceback" not in stderr
    statuses = {name: entry["status"] for name, entry in manifest(out).items()}
    assert "interrupted" in statuses.values() and set(statuses.values()) <= {"interrupted", "ok"}
    # only a fit that finished its files before the interrupt reached it has a scene, and it is recorded "ok"
    assert sorted(p.parent.name for p in out.glob("*/scene.r4d")) == sorted(n for n, s in statuses.items() if s == "ok")
    time.sleep(1)
    assert not _busy_fit_workers()  # the running fits were cancelled with their workers

    again = batch(*inputs, *flags)
    assert again.returncode == 0, again.stderr
    assert [manifest(out)[n]["status"] for n in ("a", "b")] == ["ok", "ok"]
    resumed = [n for n in ("a", "b") if "resuming from frame" in (out / "batch_logs" / f"{n}.log").read_text()]
    assert resumed  # at least the fit that had a checkpoint continued from it
    assert all(load_scene(out / n).num_frames == 8 for n in ("a", "b"))


def run_inline(capsys, *args: str) -> tuple[int, str]:
    from recon4d.cli import main

    code = main(["fit-batch", *args])
    return code, capsys.readouterr().err


@pytest.mark.parametrize("extra, message", [
    (["--address", "no such address"], "is not a Ray address"),
    (["--address", "127.0.0.1:1"], "cannot reach the Ray head at 127.0.0.1:1"),
    (["--cpus-per-fit", "0"], "--cpus-per-fit must be positive"),
    (["--gpus-per-fit", "-1"], "--gpus-per-fit must be zero or positive"),
    (["--preset", "no-such-preset"], "unknown preset"),
])
def test_bad_arguments_exit_2_before_work(clips, tmp_path, capsys, extra, message):
    out = tmp_path / "out"
    code, err = run_inline(capsys, str(clips / "inputs" / "a.mp4"), "-o", str(out), *extra)
    assert code == 2 and message in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not (out / "a").exists() and not (out / "batch.json").exists()


def test_unwritable_out_root_and_missing_input_exit_2(clips, tmp_path, capsys):
    blocker = tmp_path / "file.txt"
    blocker.write_text("a file, not a folder")
    code, err = run_inline(capsys, str(clips / "inputs" / "a.mp4"), "-o", str(blocker / "out"))
    assert code == 2 and "cannot write to OUT_ROOT" in err and err.count("\n") == 1
    code, err = run_inline(capsys, str(tmp_path / "missing.mp4"), "-o", str(tmp_path / "out"))
    assert code == 2 and "input not found" in err and not (tmp_path / "out").exists()


def test_one_batch_per_out_root(clips, tmp_path, capsys):
    from recon4d.io.outputs import OutputLock

    out = tmp_path / "out"
    with OutputLock(out):  # another fit-batch is writing there
        code, err = run_inline(capsys, str(clips / "inputs" / "a.mp4"), "-o", str(out))
    assert code == 2 and "in use by another recon4d process" in err and not (out / "batch.json").exists()


def test_inputs_from_folders_and_lists(tmp_path):
    import cv2
    import numpy as np

    (tmp_path / "videos").mkdir()
    for name in ("clip10.mp4", "clip2.mp4", "notes.md"):
        (tmp_path / "videos" / name).write_bytes(b"x")
    frames = tmp_path / "videos" / "shot"
    frames.mkdir()
    cv2.imwrite(str(frames / "0.png"), np.zeros((4, 4, 3), np.uint8))
    listing = tmp_path / "list.txt"
    listing.write_text("# two inputs\nvideos/clip2.mp4\nelsewhere/missing.mov  # reported by its fit\n")
    table = tmp_path / "list.csv"
    table.write_text("caption,path\na cup,videos/shot\n")
    found = expand_inputs([tmp_path / "videos", listing, table])
    assert [(i.name, i.path.relative_to(tmp_path).as_posix()) for i in found] == [
        ("clip2", "videos/clip2.mp4"), ("clip10", "videos/clip10.mp4"), ("shot", "videos/shot"),
        ("missing", "elsewhere/missing.mov")]  # natural order, repeats dropped, listed paths kept
    assert [i.name for i in expand_inputs([frames])] == ["shot"]  # a folder of images is one input
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "clip2.avi").write_bytes(b"x")
    from recon4d.errors import InputError

    with pytest.raises(InputError, match="would both be written to clip2/"):
        expand_inputs([tmp_path / "videos", tmp_path / "other"])


def test_fit_flags_pass_through_unchanged(tmp_path):
    from recon4d.batch.cli import fit_flags
    from recon4d.cli import build_parser

    parser = build_parser()
    preset = tmp_path / "p.yaml"
    preset.write_text(TINY)
    args = parser.parse_args(["fit-batch", "x.mp4", "-o", "out", "--preset", str(preset), "--max-frames", "6",
                              "--fov", "55.5", "--no-refine", "--restart", "--workers", "3"])
    flags = fit_flags(args, args.fit_batch_actions)
    assert "--workers" not in flags
    fit_args = parser.parse_args(["fit", "x.mp4", *flags])
    for name in ("preset", "max_frames", "fov_x_deg", "refine", "restart", "stride", "seed"):
        assert getattr(fit_args, name) == getattr(args, name), name
    assert fit_args.refine is False and fit_args.max_frames == 6


def test_finished_fit_is_recognised_only_for_the_same_input_and_flags(tmp_path):
    from recon4d.batch.inputs import BatchInput
    from recon4d.batch.manifest import (
        fingerprint,
        is_finished,
        new_entry,
        read_manifest,
        write_manifest,
    )

    video = tmp_path / "clip.mp4"
    video.write_bytes(b"frames")
    item, out = BatchInput("clip", video), tmp_path / "out" / "clip"
    key = fingerprint(item, ["--preset", "fast"], "cpu")
    entry = {**new_entry(item, out, tmp_path / "clip.log", key), "status": "ok"}
    assert not is_finished(entry, key, out)  # no outputs yet
    out.mkdir(parents=True)
    (out / "scene.r4d").write_bytes(b"scene")
    (out / "metrics.json").write_text(json.dumps({"fitted": {"psnr": 31.5}, "held_out": {"psnr": None},
                                                  "frames": 8, "gaussians": 100, "seconds_total": 3.0}))
    write_manifest(tmp_path / "out", [entry], ["--preset", "fast"])
    entry = read_manifest(tmp_path / "out")["clip"]
    assert is_finished(entry, key, out)
    assert not is_finished({**entry, "status": "failed"}, key, out)
    assert not is_finished(entry, fingerprint(item, ["--preset", "default"], "cpu"), out)  # other flags
    os.utime(video, ns=(1, 1))
    assert not is_finished(entry, fingerprint(item, ["--preset", "fast"], "cpu"), out)  # the input changed
    (tmp_path / "out" / "batch.json").write_text('{"format": "something else"}')
    from recon4d.errors import InputError

    with pytest.raises(InputError, match="is not a recon4d.batch/1 manifest"):
        read_manifest(tmp_path / "out")
