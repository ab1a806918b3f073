"""A synthetic clip on disk: video.mp4, frames/*.png, gt.npz (every array) and gt.json (cameras), and back."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from recon4d.errors import InputError
from recon4d.eval.synthetic.clip import SyntheticClip
from recon4d.eval.synthetic.config import SyntheticConfig
from recon4d.io.video_writer import write_video

GT_FORMAT = "recon4d-synthetic"
GT_VERSION = 1
PIXEL_CONVENTION = "centre of pixel (row i, column j) is at (u=j, v=i)"

_ARRAY_FIELDS = (
    "frames", "intrinsics", "world_from_camera", "depth", "flow_forward", "occluded_forward", "moving_mask",
    "tracks_3d", "tracks_2d", "track_visible",
)


def write_synthetic(clip: SyntheticClip, out_dir: str | Path, config: SyntheticConfig | None = None) -> None:
    """Write ``out_dir/``: video.mp4 (H.264), frames/000000.png.., gt.npz (all arrays), gt.json (cameras).

    gt.json holds format/version, variant, T, W, H, fps, intrinsics [fx, fy, cx, cy], world_from_camera
    (T nested 4x4 lists, OpenCV) and the pixel convention. ``config`` supplies fps and video settings.
    """
    import cv2

    config = config or SyntheticConfig()
    out = Path(out_dir)
    frames_dir = out / "frames"
    frames_dir.mkdir(parents=True, exist_ok=True)
    num_frames, height, width = clip.frames.shape[:3]
    for t, frame in enumerate(clip.frames):
        if not cv2.imwrite(str(frames_dir / f"{t:06d}.png"), frame[:, :, ::-1]):
            raise InputError(f"cannot write {frames_dir / f'{t:06d}.png'}", hint="check the output folder")
    pix_fmt = config.video_pix_fmt
    if pix_fmt == "yuv420p" and (width % 2 or height % 2):
        pix_fmt = "yuv444p"  # 4:2:0 needs even sizes; the video must keep the ground truth's size
    write_video(out / "video.mp4", clip.frames, config.fps, crf=config.video_crf, pix_fmt=pix_fmt)
    np.savez_compressed(out / "gt.npz", **{name: getattr(clip, name) for name in _ARRAY_FIELDS})
    meta = {
        "format": GT_FORMAT,
        "version": GT_VERSION,
        "variant": clip.variant,
        "num_frames": int(num_frames),
        "width": int(width),
        "height": int(height),
        "fps": float(config.fps),
        "intrinsics": [float(x) for x in clip.intrinsics],
        "world_from_camera": clip.world_from_camera.tolist(),
        "camera_convention": "opencv world_from_camera (x right, y down, z forward)",
        "pixel_convention": PIXEL_CONVENTION,
        "depth": "z-depth along the camera axis",
    }
    (out / "gt.json").write_text(json.dumps(meta, indent=1))


def load_ground_truth(directory: str | Path) -> SyntheticClip:
    """Read a folder written by :func:`write_synthetic` back into a :class:`SyntheticClip`."""
    folder = Path(directory)
    json_path, npz_path = folder / "gt.json", folder / "gt.npz"
    for path in (json_path, npz_path):
        if not path.is_file():
            raise InputError(f"no synthetic ground truth at {path}", hint="write it with write_synthetic first")
    try:
        meta = json.loads(json_path.read_text())
    except json.JSONDecodeError as exc:
        raise InputError(f"{json_path} is not valid JSON ({exc.msg})", hint="re-generate the clip") from exc
    if meta.get("format") != GT_FORMAT:
        raise InputError(
            f"{json_path} is not a recon4d synthetic ground truth", hint="point at a folder from write_synthetic"
        )
    if int(meta.get("version", 0)) > GT_VERSION:
        raise InputError(f"{json_path} has version {meta['version']} > {GT_VERSION}", hint="upgrade recon4d")
    with np.load(npz_path) as data:
        missing = [name for name in _ARRAY_FIELDS if name not in data.files]
        if missing:
            raise InputError(f"{npz_path} lacks {', '.join(missing)}", hint="re-generate the clip")
        arrays = {name: data[name] for name in _ARRAY_FIELDS}
    return SyntheticClip(variant=str(meta["variant"]), **arrays)
