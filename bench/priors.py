"""Benchmark of the no-weights priors: flow EPE, depth AbsRel / delta<1.25 (median-scaled over the clip),
moving-mask IoU and ms per frame, on the synthetic variants at 320x180, plus timings on the real clips in
../shared/data and depth on the Middlebury "motorcycle" stereo pair (metric ground truth).

Usage: python bench/priors.py [--frames 12] [--width 320] [--height 180]

`--video PATH [--max-frames N] [--short-side S]` instead times the three priors on one video (e.g. a long
clip, or a clip at 480 px) and prints seconds per prior and the process's peak RSS after each, cache off:

    python bench/priors.py --video /tmp/recon4d-bench-inputs/backpack_long450.mp4 --max-frames 450 --short-side 180
"""
from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import cv2
import numpy as np

from recon4d.eval.metrics import depth_errors, flow_epe, mask_iou
from recon4d.eval.synthetic import VARIANTS, SyntheticConfig, make_synthetic
from recon4d.priors.depth import make_depth_estimator
from recon4d.priors.flow import make_flow_estimator
from recon4d.priors.motion import estimate_moving_masks

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
# Slow movers for the motion window: ~0.3 px/frame at 320 px width (the default variants move 5-10 px/frame).
SLOW = SyntheticConfig(object_speed=0.006, object_spin_deg=0.15)


def run_priors(frames: np.ndarray, intrinsics: np.ndarray):
    times = {}
    t0 = time.perf_counter()
    flow = make_flow_estimator("dis")(frames)
    times["flow"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    motion = estimate_moving_masks(flow, frames=frames)
    times["motion"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    depth = make_depth_estimator("video")(frames, flow, intrinsics, motion.moving_masks)
    times["depth"] = time.perf_counter() - t0
    return flow, motion, depth, times


def video_row(path: Path, max_frames: int | None, short_side: int | None) -> None:
    """Seconds of each prior on one decoded video and the peak RSS after each (the default fit's intrinsics)."""
    import torch  # noqa: F401 - imported before the first peak is read, as a fit has it

    from recon4d.fit.config import load_config
    from recon4d.fit.outputs import peak_rss_mb
    from recon4d.fit.pipeline import default_intrinsics
    from recon4d.io.video import read_clip

    clip = read_clip(path, max_frames=max_frames, short_side=short_side)
    intrinsics = default_intrinsics(clip.width, clip.height, load_config("default").input.fov_x_deg)
    peaks = {"decode": peak_rss_mb()}
    times = {}
    t0 = time.perf_counter()
    flow = make_flow_estimator("dis")(clip.frames)
    times["flow"], peaks["flow"] = time.perf_counter() - t0, peak_rss_mb()
    t0 = time.perf_counter()
    motion = estimate_moving_masks(flow, frames=clip.frames)
    times["motion"], peaks["motion"] = time.perf_counter() - t0, peak_rss_mb()
    t0 = time.perf_counter()
    make_depth_estimator("video")(clip.frames, flow, intrinsics, motion.moving_masks)
    times["depth"], peaks["depth"] = time.perf_counter() - t0, peak_rss_mb()
    print("| video | frames | size | flow s | motion s | depth s | total s | peak RSS MB after decode / flow / motion / depth |")
    print("|---|---|---|---|---|---|---|---|")
    print(f"| {path.name} | {clip.num_frames} | {clip.width}x{clip.height} | {times['flow']:.1f} | {times['motion']:.1f} | "
          f"{times['depth']:.1f} | {sum(times.values()):.1f} | " + " / ".join(f"{peaks[k]:.0f}" for k in peaks) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=12)
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--height", type=int, default=180)
    parser.add_argument("--video", type=Path, default=None, help="time the priors on this video only")
    parser.add_argument("--max-frames", type=int, default=None, help="with --video")
    parser.add_argument("--short-side", type=int, default=None, help="with --video: the working resolution's short side")
    args = parser.parse_args()
    if args.video is not None:
        video_row(args.video, args.max_frames, args.short_side)
        return
    print("| clip | flow EPE px | depth AbsRel | depth δ<1.25 | mask IoU | flow ms/f | motion ms/f | depth ms/f |")
    print("|---|---|---|---|---|---|---|---|")
    slow = [("slow-static", "static", SLOW), ("slow-translate", "translate", SLOW)]
    for name, variant, config in [*((v, v, None) for v in VARIANTS), *slow]:
        clip = make_synthetic(variant, num_frames=args.frames, width=args.width, height=args.height, seed=0,
                              config=config)
        flow, motion, depth, times = run_priors(clip.frames, clip.intrinsics)
        epe = flow_epe(flow.flow_forward, clip.flow_forward, valid=~clip.occluded_forward)
        d = depth_errors(depth.depth, clip.depth, valid=~clip.moving_mask)
        iou = mask_iou(motion.moving_masks, clip.moving_mask) if clip.moving_mask.any() else float("nan")
        ms = {k: 1000 * v / args.frames for k, v in times.items()}
        print(f"| syn-{name} | {epe:.3f} | {d['abs_rel']:.3f} | {d['delta_1_25']:.3f} | {iou:.3f} | "
              f"{ms['flow']:.1f} | {ms['motion']:.1f} | {ms['depth']:.1f} |")
    from recon4d.io.video import read_clip

    for name, path in [("bear", "davis-cotracker/bear.mp4"), ("apple", "davis-cotracker/apple.mp4"),
                       ("cup", "opencv-doc/cup.mp4")]:
        clip = read_clip(SHARED / path, max_frames=30, short_side=args.height)
        fx = 0.5 * clip.width / math.tan(math.radians(30))
        _, motion, _, times = run_priors(clip.frames, np.array([fx, fx, (clip.width - 1) / 2, (clip.height - 1) / 2]))
        ms = {k: 1000 * v / clip.num_frames for k, v in times.items()}
        print(f"| {name} ({clip.width}x{clip.height}) | - | - | - | moving {motion.moving_masks.mean():.3f} | "
              f"{ms['flow']:.1f} | {ms['motion']:.1f} | {ms['depth']:.1f} |")
    # Middlebury motorcycle: the rectified pair as a 2-frame video (pure sideways baseline).
    mb = SHARED / "middlebury-motorcycle"
    left = cv2.imread(str(mb / "motorcycle_left.png"))[:, :, ::-1]
    right = cv2.imread(str(mb / "motorcycle_right.png"))[:, :, ::-1]
    disp = np.load(mb / "motorcycle_disp.npz")
    disp = disp[disp.files[0]]
    scale = 370 / left.shape[1]
    size = (370, round(left.shape[0] * scale))
    frames = np.stack([cv2.resize(left, size, interpolation=cv2.INTER_AREA), cv2.resize(right, size, interpolation=cv2.INTER_AREA)])
    gt = 193.001 * 994.978 / (disp + 31.086)
    gt = cv2.resize(gt.astype(np.float32), size, interpolation=cv2.INTER_NEAREST)
    intrinsics = np.array([994.978 * scale, 994.978 * scale, 311.193 * scale, 254.877 * scale])
    _, _, depth, times = run_priors(np.ascontiguousarray(frames), intrinsics)
    d = depth_errors(depth.depth[:1], gt[None], valid=np.isfinite(gt)[None])
    print(f"| middlebury motorcycle ({size[0]}x{size[1]}) | - | {d['abs_rel']:.3f} | {d['delta_1_25']:.3f} | - | "
          f"{1000 * times['flow'] / 2:.1f} | - | {1000 * times['depth'] / 2:.1f} |")


if __name__ == "__main__":
    main()
