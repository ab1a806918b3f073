"""Where a fit's optimisation step goes: milliseconds per call of each part of both passes, on one clip.

Runs the sequential pass and the refinement of a clip as `recon4d fit` does (same preset, priors from the
cache), with timers around the parts of a step: for the sequential pass the camera step and its loss, the
Gaussian step and its replay term; for the refinement the frame loss (Gaussians at the frame, projection,
render, image losses), the motion regularisers, the backward pass, the optimiser and the densification
hooks. `backward` is every `Tensor.backward` of the pass, so the sequential pass's camera and Gaussian steps
share it. Prints one table (pass, part, calls, ms per call, ms per step, share of the pass) and peak RSS;
not a test.

    .venv/bin/python bench/steps.py --clip bear --frames 30
"""
from __future__ import annotations

import argparse
import collections
import functools
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fit import REAL_CLIPS  # noqa: E402
from table import print_markdown_table  # noqa: E402

import recon4d.fit.refine as refine_module  # noqa: E402
import recon4d.fit.sequential as sequential_module  # noqa: E402
from recon4d.fit.config import load_config, with_long_clip, with_static_scene  # noqa: E402
from recon4d.fit.optim import SelectiveAdam  # noqa: E402
from recon4d.fit.outputs import assemble_scene  # noqa: E402
from recon4d.fit.pipeline import prepare  # noqa: E402
from recon4d.fit.strategy.grow import GrowStrategy  # noqa: E402


class Timers:
    """Seconds and calls per (pass, part); `wrap` times a function under the current pass."""

    def __init__(self) -> None:
        self.seconds: collections.Counter = collections.Counter()
        self.calls: collections.Counter = collections.Counter()
        self.current = ""

    def wrap(self, part: str, function):
        @functools.wraps(function)
        def timed(*args, **kwargs):
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.seconds[self.current, part] += time.perf_counter() - started
                self.calls[self.current, part] += 1
        return timed


def instrument(timers: Timers) -> None:
    """Timers around the parts of both passes' steps (this process only)."""
    fitter = sequential_module.SequentialFitter
    for name in ("camera_step", "camera_loss", "optimize_gaussians", "replay_loss"):
        setattr(fitter, name, timers.wrap(name, getattr(fitter, name)))
    refiner = refine_module.Refiner
    for name in ("frame_loss", "motion_regularisers"):
        setattr(refiner, name, timers.wrap(name, getattr(refiner, name)))
    SelectiveAdam.step = timers.wrap("optimizer", SelectiveAdam.step)
    for name in ("step_post_backward", "step_post_optimizer"):
        setattr(GrowStrategy, name, timers.wrap(f"densify ({name})", getattr(GrowStrategy, name)))
    torch.Tensor.backward = timers.wrap("backward", torch.Tensor.backward)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clip", default="bear", help=f"one of {', '.join(REAL_CLIPS)} (bench/fit.py's clips) or a video path")
    parser.add_argument("--frames", type=int, default=30)
    parser.add_argument("--holdout-every", type=int, default=4)
    parser.add_argument("--preset", default="default")
    args = parser.parse_args()
    source = REAL_CLIPS.get(args.clip, Path(args.clip))
    config = with_static_scene(load_config(args.preset, {"max_frames": args.frames, "holdout_every": args.holdout_every}))
    device = torch.device("cpu")
    prepared = prepare(source, config, device, log=lambda *_: None)
    if prepared.long_clip and config.keyframes.long_clip:  # as `recon4d fit` runs a long clip's pass
        config = with_long_clip(config)
    timers = Timers()
    instrument(timers)

    timers.current = "sequential"
    started = time.perf_counter()
    fitter = sequential_module.SequentialFitter(prepared.sequential_inputs, config,
                                                boundaries=prepared.window_boundaries(config.sequential.window_frames))
    state = fitter.run()
    wall = {"sequential": time.perf_counter() - started}
    steps = {"sequential": sum(s.get("gaussian_iters", 0) + s.get("camera_iters", 0) for s in state.frame_stats)}

    timers.current = "refine"
    scene = assemble_scene(state, prepared.sequential, prepared.clip, prepared.K, config,
                           prepared.sequential_priors.moving_masks)
    if prepared.sequential != prepared.fitted:  # the prior's masks of the frames only the refinement fits
        scene.arrays["moving_masks"][prepared.fitted] = torch.from_numpy(np.asarray(prepared.priors.moving_masks))
    started = time.perf_counter()
    _, stats = refine_module.refine_scene(refine_module.RefineInputs(scene, prepared.fitted, prepared.inputs), config, device)
    wall["refine"] = time.perf_counter() - started
    steps["refine"] = stats["refine_iters"]

    rows = []
    for stage in ("sequential", "refine"):
        parts = sorted((part for s, part in timers.seconds if s == stage), key=lambda p: -timers.seconds[stage, p])
        for part in parts:
            seconds, calls = timers.seconds[stage, part], timers.calls[stage, part]
            rows.append({"pass": stage, "part": part, "calls": calls, "ms_per_call": 1000 * seconds / calls,
                         "ms_per_step": 1000 * seconds / max(steps[stage], 1), "share_%": 100 * seconds / wall[stage]})
        rows.append({"pass": stage, "part": f"whole pass ({steps[stage]} steps)", "calls": 1,
                     "ms_per_call": 1000 * wall[stage], "ms_per_step": 1000 * wall[stage] / max(steps[stage], 1),
                     "share_%": 100.0})
    print(f"\n## Step cost, {source.stem} {args.frames} frames at {prepared.clip.width}x{prepared.clip.height}, "
          f"{torch.get_num_threads()} threads (parts nest: camera_loss is inside camera_step, replay_loss and the "
          "Gaussian step's backward inside optimize_gaussians)\n")
    print_markdown_table(rows, ["pass", "part", "calls", "ms_per_call", "ms_per_step", "share_%"], key="pass")
    print(f"\npeak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
