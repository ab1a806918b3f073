"""Tests for recon4d.io.video: the bundled sample, options, folders, gif, orientation, and every error."""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from recon4d.errors import InputError, VideoError
from recon4d.io.video import Clip, natural_sort_key, probe_video, read_clip

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "cup.mp4"
SAMPLE_FPS = 26.777 / 2  # source rate of OpenCV's cup.mp4, every 2nd frame kept


# ----------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------


def _cell_pattern(height: int = 32, width: int = 64, cell: int = 16) -> np.ndarray:
    """``[H, W, 3]`` uint8 grid of flat cells with distinct grey levels, so every rotation/mirror of it is
    told apart; flat 16-pixel cells survive lossy coding."""
    rows, cols = height // cell, width // cell
    levels = np.linspace(20, 235, rows * cols).round().astype(np.uint8).reshape(rows, cols)
    grey = np.kron(levels, np.ones((cell, cell), dtype=np.uint8))
    return np.repeat(grey[:, :, None], 3, axis=2)


def _write_video(
    path: Path,
    frames: list[np.ndarray],
    *,
    codec: str = "libx264",
    pix_fmt: str = "yuv420p",
    rate: int = 10,
    rotation: int | None = None,
    hflip: bool = False,
    vflip: bool = False,
    keyframe_interval: int | None = None,
) -> Path:
    """Encode ``[H, W, 3]`` uint8 RGB frames with PyAV; ``rotation`` (degrees counter-clockwise) and the
    flips go into the display matrix."""
    height, width = frames[0].shape[:2]
    options = {"crf": "10"} if codec == "libx264" else {}
    if keyframe_interval is not None:
        options["g"] = str(keyframe_interval)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=rate, options=options)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        if rotation is not None or hflip or vflip:
            stream.set_display_rotation(rotation or 0, hflip=hflip, vflip=vflip)
        for rgb in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def _ramp_frames(count: int, height: int = 48, width: int = 64) -> list[np.ndarray]:
    """Flat frames whose grey level rises with the index, so decoded order can be checked."""
    return [np.full((height, width, 3), 10 + 20 * i, dtype=np.uint8) for i in range(count)]


def _expect_video_error(match: str, path: Path | str, **options: object) -> VideoError:
    with pytest.raises(VideoError, match=match) as info:
        read_clip(path, **options)
    error = info.value
    assert isinstance(error, InputError) and error.exit_code == 2
    assert "\n" not in str(error) and "\n" not in error.one_line()
    assert error.hint, "every VideoError carries a hint"
    return error


# ----------------------------------------------------------------------------------------------------
# the bundled sample
# ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sample() -> Clip:
    return read_clip(SAMPLE)


def test_sample_decodes_to_30_rgb_frames(sample: Clip) -> None:
    assert sample.frames.shape == (30, 240, 320, 3)
    assert sample.frames.dtype == np.uint8 and sample.frames.flags["C_CONTIGUOUS"]
    assert sample.fps == pytest.approx(SAMPLE_FPS, rel=1e-6)
    assert sample.timestamps.dtype == np.float64 and sample.source_indices.dtype == np.int64
    assert sample.timestamps[0] == 0.0 and np.all(np.diff(sample.timestamps) > 0)
    np.testing.assert_allclose(sample.timestamps, np.arange(30) / SAMPLE_FPS, atol=1e-3)
    np.testing.assert_array_equal(sample.source_indices, np.arange(30))
    assert sample.names[0] == "frame_000000" and sample.names[29] == "frame_000029"
    assert sample.source == str(SAMPLE.resolve())
    assert len(sample.source_hash) == 64 and int(sample.source_hash, 16) >= 0
    # Real content: a bright wall, a dark cup; the cup moves between the first and the last frame.
    assert 120 < sample.frames.mean() < 220
    assert np.abs(sample.frames[0].astype(int) - sample.frames[-1]).mean() > 5


def test_probe_sample() -> None:
    info = probe_video(SAMPLE)
    assert (info.frames, info.frames_exact, info.width, info.height) == (30, True, 320, 240)
    assert info.fps == pytest.approx(SAMPLE_FPS, rel=1e-6)
    assert info.duration == pytest.approx(30 / SAMPLE_FPS, rel=1e-3)
    assert (info.rotation, info.mirrored, info.codec) == (0, False, "h264")


def test_stride_and_max_frames(sample: Clip) -> None:
    clip = read_clip(SAMPLE, stride=3, max_frames=4)
    np.testing.assert_array_equal(clip.source_indices, [0, 3, 6, 9])
    np.testing.assert_array_equal(clip.frames, sample.frames[[0, 3, 6, 9]])
    np.testing.assert_allclose(clip.timestamps, sample.timestamps[[0, 3, 6, 9]])
    assert clip.fps == pytest.approx(SAMPLE_FPS / 3, rel=1e-6)
    assert clip.names == ["frame_000000", "frame_000003", "frame_000006", "frame_000009"]


def test_time_range_seeks_to_the_same_frames(sample: Clip) -> None:
    clip = read_clip(SAMPLE, start_s=1.0, end_s=1.6, stride=2)
    in_range = np.flatnonzero((sample.timestamps >= 1.0) & (sample.timestamps < 1.6))[::2]
    assert in_range.size == 4  # frames 14, 16, 18, 20 at 13.39 fps
    np.testing.assert_array_equal(clip.source_indices, in_range)
    np.testing.assert_array_equal(clip.frames, sample.frames[in_range])
    assert clip.timestamps[0] >= 1.0 and clip.timestamps[-1] < 1.6


def test_seek_lands_on_the_right_frames(tmp_path: Path) -> None:
    # A key frame every 4 frames, so start_s really seeks (the sample has a single key frame).
    path = _write_video(tmp_path / "gop.mp4", _ramp_frames(12), rate=10, keyframe_interval=4)
    with av.open(str(path)) as container:
        keyframes = [i for i, p in enumerate(container.demux(video=0)) if p.is_keyframe]
    assert len(keyframes) >= 3
    full = read_clip(path)
    clip = read_clip(path, start_s=0.65, end_s=1.05, stride=2)
    np.testing.assert_array_equal(clip.source_indices, [7, 9])
    np.testing.assert_array_equal(clip.frames, full.frames[[7, 9]])
    np.testing.assert_allclose(clip.timestamps, [0.7, 0.9], atol=1e-6)
    assert clip.names == ["frame_000007", "frame_000009"]


def test_seek_that_overshoots_falls_back_to_decoding_from_the_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import recon4d.io.video as video

    path = _write_video(tmp_path / "gop.mp4", _ramp_frames(12), rate=10, keyframe_interval=4)
    expected = read_clip(path, start_s=0.65)
    real_seek = video._seek_before
    calls: list[float] = []

    def seek_too_far(container, stream, time_s):  # noqa: ANN001 - stands in for the private helper
        calls.append(time_s)
        return real_seek(container, stream, time_s + 0.4)  # lands on the key frame at 0.8 s

    monkeypatch.setattr(video, "_seek_before", seek_too_far)
    clip = read_clip(path, start_s=0.65)
    assert calls == [pytest.approx(0.65)]
    np.testing.assert_array_equal(clip.source_indices, np.arange(7, 12))
    np.testing.assert_array_equal(clip.frames, expected.frames)


def test_short_side_matches_inter_area_of_full_frames(sample: Clip) -> None:
    clip = read_clip(SAMPLE, short_side=120, max_frames=3)
    assert clip.frames.shape == (3, 120, 160, 3)
    expected = np.stack([cv2.resize(f, (160, 120), interpolation=cv2.INTER_AREA) for f in sample.frames[:3]])
    np.testing.assert_array_equal(clip.frames, expected)
    # Non-integer scale: the long side rounds to the nearest pixel (320 * 100 / 240 = 133.3).
    assert read_clip(SAMPLE, short_side=100, max_frames=2).frames.shape == (2, 100, 133, 3)


def test_hash_depends_on_options_and_bytes(sample: Clip, tmp_path: Path) -> None:
    assert read_clip(SAMPLE).source_hash == sample.source_hash  # deterministic
    assert read_clip(SAMPLE, max_frames=29).source_hash != sample.source_hash
    # Equal options hash alike whatever their Python type.
    assert read_clip(SAMPLE, start_s=1, stride=np.int64(2)).source_hash == read_clip(
        SAMPLE, start_s=1.0, stride=2
    ).source_hash
    copy = tmp_path / "cup.mp4"
    data = bytearray(SAMPLE.read_bytes())
    copy.write_bytes(bytes(data))
    assert read_clip(copy).source_hash == sample.source_hash  # bytes, not the path, identify the source
    data[-1] ^= 0xFF  # last byte of the last packet: still decodes
    copy.write_bytes(bytes(data))
    assert read_clip(copy).source_hash != sample.source_hash


# ----------------------------------------------------------------------------------------------------
# other containers
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "codec", "pix_fmt"),
    [
        ("clip.webm", "libvpx-vp9", "yuv420p"),
        ("clip.mkv", "ffv1", "yuv420p"),
        ("clip.avi", "mpeg4", "yuv420p"),
        ("clip.mov", "libx264", "yuv420p"),
    ],
)
def test_containers(tmp_path: Path, name: str, codec: str, pix_fmt: str) -> None:
    path = _write_video(tmp_path / name, _ramp_frames(6), codec=codec, pix_fmt=pix_fmt)
    clip = read_clip(path)
    assert clip.frames.shape == (6, 48, 64, 3)
    assert clip.fps == pytest.approx(10.0)
    np.testing.assert_allclose(clip.timestamps, np.arange(6) / 10, atol=1e-3)
    levels = clip.frames.reshape(6, -1).mean(axis=1)
    np.testing.assert_allclose(levels, 10 + 20 * np.arange(6), atol=4)
    info = probe_video(path)
    assert info.frames == 6 and (info.width, info.height) == (64, 48)
    assert info.frames_exact == (name.endswith((".avi", ".mov")))  # matroska stores no frame count


def test_gif(tmp_path: Path) -> None:
    # Colours with 0/255 channels survive the gif encoder's 3-3-2 palette (255 comes back as 252 in the
    # 3-bit red and green channels).
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255)]
    frames = [np.broadcast_to(np.array(c, np.uint8), (40, 56, 3)).copy() for c in colours]
    path = _write_video(tmp_path / "anim.gif", frames, codec="gif", pix_fmt="rgb8", rate=10)
    clip = read_clip(path)
    assert clip.frames.shape == (5, 40, 56, 3)
    np.testing.assert_allclose(clip.frames[:, 20, 28], np.array(colours, np.uint8), atol=3)
    np.testing.assert_allclose(clip.timestamps, [0.0, 0.1, 0.2, 0.3, 0.4], atol=1e-9)
    assert clip.fps == pytest.approx(10.0)
    assert read_clip(path, start_s=0.2).names == ["frame_000002", "frame_000003", "frame_000004"]


# ----------------------------------------------------------------------------------------------------
# orientation metadata
# ----------------------------------------------------------------------------------------------------


def _dihedral(image: np.ndarray) -> list[np.ndarray]:
    return [np.rot90(image, k)[:, ::-1] if mirror else np.rot90(image, k) for k in range(4) for mirror in (False, True)]


@pytest.mark.parametrize(
    ("rotation", "hflip", "vflip"),
    [(90, False, False), (-90, False, False), (180, False, False), (0, True, False), (0, False, True),
     (90, True, False), (-90, True, False), (0, False, False)],
)
def test_display_matrix_is_applied(tmp_path: Path, rotation: int, hflip: bool, vflip: bool) -> None:
    coded = _cell_pattern()  # 64 wide, 32 high
    path = _write_video(tmp_path / "rotated.mp4", [coded, coded], rotation=rotation, hflip=hflip, vflip=vflip)
    # PyAV documents set_display_rotation as: turn counter-clockwise, then mirror.
    expected = np.rot90(coded, rotation // 90)
    expected = expected[:, ::-1] if hflip else expected
    expected = expected[::-1] if vflip else expected

    clip = read_clip(path)
    assert clip.frames.shape[1:] == expected.shape
    error = np.abs(clip.frames[0].astype(int) - expected).mean()
    assert error < 3.0
    wrong = [np.abs(clip.frames[0].astype(int) - other).mean()
             for other in _dihedral(coded) if other.shape == expected.shape and not np.array_equal(other, expected)]
    assert min(wrong) > 10 * max(error, 1.0)

    info = probe_video(path)
    assert (info.width, info.height) == (expected.shape[1], expected.shape[0])

    # Resizing uses the displayed short side.
    small = read_clip(path, short_side=16)
    assert small.frames.shape[1:3] == tuple(s // 2 for s in expected.shape[:2])


def test_probe_reports_rotation(tmp_path: Path) -> None:
    coded = _cell_pattern()
    info = probe_video(_write_video(tmp_path / "r.mp4", [coded, coded], rotation=-90))
    assert (info.rotation, info.mirrored, info.width, info.height) == (270, False, 32, 64)
    info = probe_video(_write_video(tmp_path / "m.mp4", [coded, coded], hflip=True))
    assert (info.rotation, info.mirrored, info.width, info.height) == (0, True, 64, 32)


# ----------------------------------------------------------------------------------------------------
# image folders
# ----------------------------------------------------------------------------------------------------


def _write_png(path: Path, level: int, size: tuple[int, int] = (40, 30)) -> None:
    width, height = size
    rgb = np.zeros((height, width, 3), np.uint8)
    rgb[..., 0] = level  # red channel carries the level: checks RGB (not BGR) order too
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


def test_image_folder_natural_order(tmp_path: Path) -> None:
    names = ["frame10.png", "frame2.png", "frame1.png", "Frame3.PNG", "frame20.jpg"]
    for i, name in enumerate(names):
        if name.endswith(".jpg"):
            rgb = np.zeros((30, 40, 3), np.uint8)
            rgb[..., 0] = 200
            cv2.imwrite(str(tmp_path / name), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 100])
        else:
            _write_png(tmp_path / name, 10 * (i + 1))
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / ".hidden.png").write_bytes(b"")  # hidden files are skipped, even broken ones
    (tmp_path / "sub").mkdir()

    clip = read_clip(tmp_path)
    assert clip.names == ["frame1.png", "frame2.png", "Frame3.PNG", "frame10.png", "frame20.jpg"]
    np.testing.assert_array_equal(clip.frames[:4, 0, 0, 0], [30, 20, 40, 10])
    assert abs(int(clip.frames[4, 0, 0, 0]) - 200) <= 2 and clip.frames[:, :, :, 1:].max() <= 2
    assert clip.frames.shape == (5, 30, 40, 3)
    assert clip.fps == 1.0
    np.testing.assert_array_equal(clip.timestamps, [0, 1, 2, 3, 4])
    np.testing.assert_array_equal(clip.source_indices, [0, 1, 2, 3, 4])
    assert clip.source == str(tmp_path.resolve())

    part = read_clip(tmp_path, stride=2, start_s=1, short_side=15)
    assert part.names == ["frame2.png", "frame10.png"] and part.fps == 0.5
    assert part.frames.shape == (2, 15, 20, 3)
    np.testing.assert_array_equal(part.source_indices, [1, 3])
    assert read_clip(tmp_path, end_s=2).names == ["frame1.png", "frame2.png"]
    assert read_clip(tmp_path, max_frames=3).names == ["frame1.png", "frame2.png", "Frame3.PNG"]

    info = probe_video(tmp_path)
    assert (info.frames, info.width, info.height, info.codec) == (5, 40, 30, "images")

    before = clip.source_hash
    _write_png(tmp_path / "frame10.png", 11)
    assert read_clip(tmp_path).source_hash != before


def test_natural_sort_key() -> None:
    names = ["img10.png", "img2.png", "img1.png", "img01.png", "a.png"]
    assert sorted(names, key=natural_sort_key) == ["a.png", "img01.png", "img1.png", "img2.png", "img10.png"]


# ----------------------------------------------------------------------------------------------------
# errors
# ----------------------------------------------------------------------------------------------------


def test_error_missing_path(tmp_path: Path) -> None:
    _expect_video_error("input not found", tmp_path / "nope.mp4")
    with pytest.raises(VideoError, match="input not found"):
        probe_video(tmp_path / "nope.mp4")


def test_error_empty_file(tmp_path: Path) -> None:
    (tmp_path / "empty.mp4").write_bytes(b"")
    _expect_video_error("empty file", tmp_path / "empty.mp4")


def test_error_not_a_video(tmp_path: Path) -> None:
    (tmp_path / "junk.mp4").write_bytes(b"this is not a video file\n" * 40)
    _expect_video_error("not a readable video", tmp_path / "junk.mp4")
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(SAMPLE.read_bytes()[:4000])  # header index (moov) is at the end: cut off
    _expect_video_error("not a readable video", truncated)


def test_error_no_video_stream(tmp_path: Path) -> None:
    path = tmp_path / "sound.wav"
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
        frame.sample_rate = 8000
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    _expect_video_error("no video stream", path)


def test_error_zero_decodable_frames(tmp_path: Path) -> None:
    # A valid Matroska file whose H.264 packets are random bytes: the decoder yields nothing.
    path = tmp_path / "garbage.mkv"
    rng = np.random.default_rng(0)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(5):
            packet = av.Packet(rng.integers(0, 256, 200, dtype=np.uint8).tobytes())
            packet.stream, packet.time_base, packet.pts, packet.dts = stream, Fraction(1, 10), i, i
            container.mux(packet)
    _expect_video_error("no decodable frames", path)


def test_error_single_frame(tmp_path: Path) -> None:
    _expect_video_error("only 1 frame", _write_video(tmp_path / "one.mp4", _ramp_frames(1)))
    _expect_video_error("only 1 frame", SAMPLE, start_s=2.1)  # the last 2 frames are at 2.091 and 2.166 s
    png = tmp_path / "single.png"
    _write_png(png, 50)
    _expect_video_error("only 1 frame", png)  # FFmpeg opens a lone image as a 1-frame video


def test_error_time_range_past_the_end() -> None:
    _expect_video_error("no frames of cup.mp4 between", SAMPLE, start_s=10.0)


def test_error_folder_without_images(tmp_path: Path) -> None:
    (tmp_path / "readme.txt").write_text("no images here")
    _expect_video_error("no images in folder", tmp_path)


def test_error_images_of_different_sizes(tmp_path: Path) -> None:
    _write_png(tmp_path / "f1.png", 10, (40, 30))
    _write_png(tmp_path / "f2.png", 20, (40, 30))
    _write_png(tmp_path / "f3.png", 30, (42, 30))
    error = _expect_video_error("images differ in size", tmp_path)
    assert "f3.png is 42x30" in str(error)


def test_error_unreadable_image(tmp_path: Path) -> None:
    _write_png(tmp_path / "f1.png", 10)
    (tmp_path / "f2.png").write_bytes(b"\x89PNG broken")
    _expect_video_error("cannot read image f2.png", tmp_path)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"stride": 0}, "stride must be"),
        ({"stride": 1.5}, "stride must be"),
        ({"max_frames": 1}, "max_frames must be"),
        ({"start_s": 2.0, "end_s": 1.0}, "must be before end_s"),
        ({"start_s": 1.0, "end_s": 1.0}, "must be before end_s"),
        ({"start_s": -1.0}, "start_s must be"),
        ({"end_s": float("nan")}, "end_s must be"),
        ({"start_s": "1.0"}, "start_s must be"),
        ({"short_side": 0}, "short_side must be"),
    ],
)
def test_error_bad_options(options: dict[str, object], match: str) -> None:
    _expect_video_error(match, SAMPLE, **options)
