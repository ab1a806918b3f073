"""Where a fit's optimisation step goes: milliseconds per call of each part of both passes, on one clip.

Runs the sequential pass and the refinement of a clip as `recon4d fit` does (same preset, priors from the
cache), with timers around the parts of a step: for the sequential pass the camera step and its loss, the
Gaussian step and its replay term; for the refinement the frame loss (Gaussians at the frame, projection,
render, image losses), the motion regularisers, the backward pass, the optimiser and the densification
hooks. `backward` is every `Tensor.backward` of the pass, so the sequential pass's camera and Gaussian steps
share it. Prints one table (pass, part, calls, ms per call, ms per step, share of the pass) and peak RSS;
not a test.

`--count-ops` runs the same passes under a dispatch mode instead of the timers and prints, per step of each
pass, the PyTorch operators that launch a kernel (views excluded; forward, backward and optimiser alike) and
those that would make the host wait for a GPU (`.item()`, `nonzero`, boolean indexing, `unique`, ...). On a
GPU each launch costs a few microseconds of host time and each wait stalls the queue, so these counts are a
CPU-side measure of what keeps a small step from flying there. recon4d's own C++ kernels (and gsplat's on a
GPU) are called outside the dispatcher and are not counted. On a CPU run every tensor is on the CPU, so a read
of a CPU generator's draw (a random frame or time) counts too although it is no GPU wait: the callers' lines
tell them apart. The mode slows the run severalfold: use a short clip (`--frames 10`).

    .venv/bin/python bench/steps.py --clip bear --frames 30
    .venv/bin/python bench/steps.py --clip bear --frames 10 --count-ops
"""
from __future__ import annotations

import argparse
import collections
import functools
import resource
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode

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

#: Operators that read a result on the host (a GPU stream waits for them); boolean indexing is added per call.
HOST_READS = {"aten._local_scalar_dense", "aten.nonzero", "aten.masked_select", "aten.unique", "aten._unique",
              "aten._unique2", "aten.unique_consecutive", "aten.unique_dim", "aten.equal", "aten.is_nonzero",
              "aten.allclose", "aten.argwhere", "aten.masked_scatter", "aten.repeat_interleave"}
_BOOL_INDEXED = {"aten.index", "aten.index_put", "aten.index_put_", "aten._index_put_impl_"}


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


class OpCounter(TorchDispatchMode):
    """Counts, per pass, the operators that launch a kernel and those that read a result on the host."""

    def __init__(self) -> None:
        super().__init__()
        self.current = ""
        self.launches: collections.Counter = collections.Counter()
        self.host_reads: collections.Counter = collections.Counter()
        self.by_name: collections.Counter = collections.Counter()
        self.read_sites: collections.Counter = collections.Counter()  # (pass, innermost recon4d file:line)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func.overloadpacket)
        if not func.is_view:
            self.launches[self.current] += 1
            self.by_name[self.current, name] += 1
        bool_index = name in _BOOL_INDEXED and any(
            torch.is_tensor(index) and index.dtype == torch.bool
            for arg in args if isinstance(arg, (list, tuple)) for index in arg)
        if name in HOST_READS or bool_index:
            self.host_reads[self.current] += 1
            self.by_name[self.current, f"{name} (host read)"] += 1
            caller = next((f"{Path(frame.filename).name}:{frame.lineno}" for frame in reversed(traceback.extract_stack())
                           if "/recon4d/" in frame.filename), "?")
            self.read_sites[self.current, caller] += 1
        return func(*args, **(kwargs or {}))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clip", default="bear", help=f"one of {', '.join(REAL_CLIPS)} (bench/fit.py's clips) or a video path")
    parser.add_argument("--frames", type=int, default=30)
    parser.add_argument("--holdout-every", type=int, default=4)
    parser.add_argument("--preset", default="default")
    parser.add_argument("--short-side", type=int, default=None, help="working resolution's short side (the preset's by default)")
    parser.add_argument("--count-ops", action="store_true", help="count kernel launches and host reads per step instead of timing")
    args = parser.parse_args()
    source = REAL_CLIPS.get(args.clip, Path(args.clip))
    overrides = {"max_frames": args.frames, "holdout_every": args.holdout_every}
    if args.short_side is not None:
        overrides["short_side"] = args.short_side
    config = with_static_scene(load_config(args.preset, overrides))
    device = torch.device("cpu")
    prepared = prepare(source, config, device, log=lambda *_: None)
    if prepared.long_clip and config.keyframes.long_clip:  # as `recon4d fit` runs a long clip's pass
        config = with_long_clip(config)
    timers = Timers()
    counter = OpCounter() if args.count_ops else None
    if counter is None:
        instrument(timers)
    else:
        counter.__enter__()  # left after the refinement, where the counts are printed

    timers.current = "sequential"
    if counter is not None:
        counter.current = "sequential"
    started = time.perf_counter()
    fitter = sequential_module.SequentialFitter(prepared.sequential_inputs, config,
                                                boundaries=prepared.window_boundaries(config.sequential.window_frames))
    state = fitter.run()
    wall = {"sequential": time.perf_counter() - started}
    steps = {"sequential": sum(s.get("gaussian_iters", 0) + s.get("camera_iters", 0) for s in state.frame_stats)}

    timers.current = "refine"
    if counter is not None:
        counter.current = "refine"
    scene = assemble_scene(state, prepared.sequential, prepared.clip, prepared.K, config,
                           prepared.sequential_priors.moving_masks)
    if prepared.sequential != prepared.fitted:  # the prior's masks of the frames only the refinement fits
        scene.arrays["moving_masks"][prepared.fitted] = torch.from_numpy(np.asarray(prepared.priors.moving_masks))
    started = time.perf_counter()
    _, stats = refine_module.refine_scene(refine_module.RefineInputs(scene, prepared.fitted, prepared.inputs), config, device)
    wall["refine"] = time.perf_counter() - started
    steps["refine"] = stats["refine_iters"]
    if counter is not None:
        counter.__exit__(None, None, None)
        print_op_counts(counter, steps, source.stem, args.frames, prepared.clip)
        return 0

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


def print_op_counts(counter: OpCounter, steps: dict, clip_name: str, frames: int, clip) -> None:
    """Per pass: launches and host reads per step, and the operators that launch most."""
    rows = []
    for stage in ("sequential", "refine"):
        per_step = max(steps[stage], 1)
        rows.append({"pass": stage, "steps": steps[stage], "launches_per_step": counter.launches[stage] / per_step,
                     "host_reads_per_step": counter.host_reads[stage] / per_step})
    print(f"\n## Operators per step, {clip_name} {frames} frames at {clip.width}x{clip.height} (views excluded; "
          "the passes' whole work divided by their steps)\n")
    print_markdown_table(rows, ["pass", "steps", "launches_per_step", "host_reads_per_step"])
    for stage in ("sequential", "refine"):
        top = sorted(((name, n) for (s, name), n in counter.by_name.items() if s == stage), key=lambda item: -item[1])
        launched = [(name, n) for name, n in top if "host read" not in name]
        print(f"\n{stage}, most frequent per step: " + ", ".join(
            f"{name} {n / max(steps[stage], 1):.1f}" for name, n in launched[:25]))
        print(f"{stage}, host reads per step: " + ", ".join(
            f"{name} {n / max(steps[stage], 1):.2f}" for name, n in top if "host read" in name))
        sites = sorted(((site, n) for (s, site), n in counter.read_sites.items() if s == stage), key=lambda item: -item[1])
        print(f"{stage}, host reads by caller: " + ", ".join(f"{site} {n / max(steps[stage], 1):.2f}" for site, n in sites[:12]))


if __name__ == "__main__":
    raise SystemExit(main())
