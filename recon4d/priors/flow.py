"""Dense optical flow between consecutive frames, forward and backward, with occlusion/validity masks.

Backends (see :func:`make_flow_estimator`):

- ``"dis"`` (default, :class:`DISFlow`): OpenCV's Dense Inverse Search flow. Needs no weights.
- ``"farneback"`` (:class:`FarnebackFlow`): OpenCV's Farneback flow; kept as a slower, blurrier baseline.
- ``"torchscript"`` (:class:`TorchScriptFlow`): a learned model (e.g. RAFT) exported by the user to a local
  TorchScript file. Nothing is ever downloaded.

Every backend computes the forward flow t -> t+1 and the backward flow t+1 -> t of each consecutive pair and
then runs the same forward-backward consistency check (:func:`consistency_masks`), so ``valid_*`` masks mean
the same thing whatever the backend; both live in :mod:`recon4d.priors.flow_pairs`, which also states the
pixel convention (pixel centres at integer (u, v); a pixel at (u, v) of frame t moves to
(u + flow[..., 0], v + flow[..., 1]) in frame t+1).
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from recon4d.errors import PriorError
from recon4d.priors.flow_pairs import (
    ConsistencyConfig,
    consistency_masks,
    pairwise_flow,
    validate_frames,
    warp_backward,
)
from recon4d.priors.registry import BackendRegistry, config_from_options
from recon4d.priors.types import FlowEstimator, FlowResult

__all__ = [
    "ConsistencyConfig",
    "DISFlowConfig",
    "DISFlow",
    "FarnebackFlowConfig",
    "FarnebackFlow",
    "TorchScriptFlow",
    "FLOW_ESTIMATORS",
    "consistency_masks",
    "warp_backward",
    "make_flow_estimator",
    "validate_frames",
]

# Hint attached to every failure to load a TorchScript flow model: how to produce one from torchvision's RAFT.
TORCHSCRIPT_EXPORT_HINT = (
    "export one with torchvision, e.g. wrap raft_large(weights='DEFAULT') in a module whose forward(a, b) maps "
    "[0,255] images to [-1,1] and returns model(a, b)[-1], then torch.jit.trace(wrapper.eval(), (a, b)).save(path)"
)


@dataclass
class DISFlowConfig:
    """Settings of OpenCV's DIS optical flow. Every field set to None keeps the value of `preset`; the
    defaults override most of it, so use :meth:`from_preset` for OpenCV's plain presets.

    The defaults were chosen by measurement at 320x180 on the synthetic clips of ``recon4d.eval.synthetic``
    (all five variants, 2 seeds, 8 frames) and on real frames (DAVIS, Middlebury RubberWhale): the MEDIUM
    preset computed at full resolution (``finest_scale=0``; the preset stops at half resolution, which blurs
    small moving objects), with a denser patch grid (stride 2 instead of 3) and 50 instead of 25 descent
    iterations. Mean non-occluded EPE over the variants 0.33 px vs 0.59 px for plain MEDIUM, 0.91 px for FAST
    and 1.21 px for Farneback; about 37 ms per flow field on one core (plain MEDIUM 6 ms), and the dense
    grid/iterations mostly pay off on fast objects (moving-pixel EPE 9.9 px vs 18 px with stride 3/25 its).

    Attributes:
        preset: "ultrafast" | "fast" | "medium" — the OpenCV preset the other fields start from.
        finest_scale: finest pyramid level computed (0 = full resolution, 1 = half, ...); coarser is faster
            and blurrier.
        coarsest_scale: coarsest pyramid level, or None to let OpenCV derive it from the image size (-1).
            Large motions need a coarse enough level: a level s handles roughly patch_size * 2**s / 2 pixels.
        patch_size: side of the matched patches in pixels (of the pyramid level).
        patch_stride: distance between neighbouring patches in pixels; smaller is denser and slower.
        gradient_descent_iterations: inverse-search iterations per patch.
        variational_refinement_iterations: iterations of the variational refinement on each level (0 = off).
        variational_refinement_alpha: smoothness weight of the refinement.
        variational_refinement_delta: colour-constancy weight of the refinement.
        variational_refinement_gamma: gradient-constancy weight of the refinement.
        use_mean_normalization: normalise patch means (robust to brightness changes).
        use_spatial_propagation: propagate good patch matches to neighbours.
        consistency: forward-backward check that produces the validity masks.
        num_threads: pairs computed at once (OpenCV releases the GIL); 0 = os.cpu_count().
    """

    preset: str = "medium"
    finest_scale: int | None = 0
    coarsest_scale: int | None = None
    patch_size: int | None = 8
    patch_stride: int | None = 2
    gradient_descent_iterations: int | None = 50
    variational_refinement_iterations: int | None = 5
    variational_refinement_alpha: float | None = None
    variational_refinement_delta: float | None = None
    variational_refinement_gamma: float | None = None
    use_mean_normalization: bool | None = None
    use_spatial_propagation: bool | None = None
    consistency: ConsistencyConfig = field(default_factory=ConsistencyConfig)
    num_threads: int = 0

    @classmethod
    def from_preset(cls, preset: str, **overrides: Any) -> "DISFlowConfig":
        """A plain OpenCV preset: every tuned field None (so the preset's values apply), then `overrides`."""
        tuned = (
            "finest_scale",
            "patch_size",
            "patch_stride",
            "gradient_descent_iterations",
            "variational_refinement_iterations",
        )
        return cls(**{"preset": preset, **{name: None for name in tuned}, **overrides})


_DIS_PRESETS = {
    "ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
    "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
    "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM,
}


@dataclass
class FarnebackFlowConfig:
    """Settings of ``cv2.calcOpticalFlowFarneback`` (meanings as in the OpenCV documentation).

    Attributes:
        pyr_scale: scale between pyramid levels (< 1).
        levels: number of pyramid levels.
        winsize: averaging window in pixels; larger is more robust and blurrier.
        iterations: iterations per level.
        poly_n: neighbourhood of the polynomial expansion (5 or 7).
        poly_sigma: Gaussian sigma of the polynomial expansion (1.1 for poly_n=5, 1.5 for 7).
        gaussian_window: use a Gaussian instead of a box window (slower, more accurate).
        consistency: forward-backward check that produces the validity masks.
        num_threads: pairs computed at once; 0 = os.cpu_count().
    """

    pyr_scale: float = 0.5
    levels: int = 5
    winsize: int = 15
    iterations: int = 5
    poly_n: int = 7
    poly_sigma: float = 1.5
    gaussian_window: bool = True
    consistency: ConsistencyConfig = field(default_factory=ConsistencyConfig)
    num_threads: int = 0


def _to_gray(frame: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)


def _settings_of(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


class DISFlow:
    """OpenCV DIS optical flow on grayscale frames (no weights). Call with frames [T, H, W, 3] uint8 RGB."""

    name = "dis"

    def __init__(self, config: DISFlowConfig | None = None) -> None:
        self.config = config or DISFlowConfig()
        if self.config.preset not in _DIS_PRESETS:
            raise PriorError(
                f"unknown DIS preset {self.config.preset!r}", hint=f"choose one of {', '.join(_DIS_PRESETS)}"
            )

    def settings(self) -> dict[str, Any]:
        """Everything that changes the result, for cache keys (JSON-serialisable)."""
        settings = _settings_of(self.config)
        settings.pop("num_threads")  # speed only
        return {"estimator": self.name, "opencv": cv2.__version__, **settings}

    def make_solver(self) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
        """A fresh DIS object configured from `config`, wrapped as solve(gray_a, gray_b) -> [H, W, 2] float32."""
        cfg = self.config
        dis = cv2.DISOpticalFlow_create(_DIS_PRESETS[cfg.preset])
        setters = {
            "finest_scale": dis.setFinestScale,
            "coarsest_scale": dis.setCoarsestScale,
            "patch_size": dis.setPatchSize,
            "patch_stride": dis.setPatchStride,
            "gradient_descent_iterations": dis.setGradientDescentIterations,
            "variational_refinement_iterations": dis.setVariationalRefinementIterations,
            "variational_refinement_alpha": dis.setVariationalRefinementAlpha,
            "variational_refinement_delta": dis.setVariationalRefinementDelta,
            "variational_refinement_gamma": dis.setVariationalRefinementGamma,
            "use_mean_normalization": dis.setUseMeanNormalization,
            "use_spatial_propagation": dis.setUseSpatialPropagation,
        }
        for name, setter in setters.items():
            value = getattr(cfg, name)
            if value is not None:
                setter(value)

        def solve(a: np.ndarray, b: np.ndarray) -> np.ndarray:
            return dis.calc(a, b, None).astype(np.float32, copy=False)

        return solve

    def __call__(self, frames: np.ndarray) -> FlowResult:
        """frames: [T, H, W, 3] uint8 RGB, T >= 2 -> FlowResult of T-1 pairs."""
        return pairwise_flow(frames, self.make_solver, _to_gray, self.config.consistency, self.config.num_threads)


class FarnebackFlow:
    """OpenCV Farneback optical flow on grayscale frames (no weights); a baseline, slower and blurrier than DIS."""

    name = "farneback"

    def __init__(self, config: FarnebackFlowConfig | None = None) -> None:
        self.config = config or FarnebackFlowConfig()

    def settings(self) -> dict[str, Any]:
        """Everything that changes the result, for cache keys (JSON-serialisable)."""
        settings = _settings_of(self.config)
        settings.pop("num_threads")
        return {"estimator": self.name, "opencv": cv2.__version__, **settings}

    def make_solver(self) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
        cfg = self.config
        flags = cv2.OPTFLOW_FARNEBACK_GAUSSIAN if cfg.gaussian_window else 0

        def solve(a: np.ndarray, b: np.ndarray) -> np.ndarray:
            flow = cv2.calcOpticalFlowFarneback(
                a, b, None, cfg.pyr_scale, cfg.levels, cfg.winsize, cfg.iterations, cfg.poly_n, cfg.poly_sigma, flags
            )
            return flow.astype(np.float32, copy=False)

        return solve

    def __call__(self, frames: np.ndarray) -> FlowResult:
        """frames: [T, H, W, 3] uint8 RGB, T >= 2 -> FlowResult of T-1 pairs."""
        return pairwise_flow(frames, self.make_solver, _to_gray, self.config.consistency, self.config.num_threads)


class TorchScriptFlow:
    """A learned flow model (e.g. RAFT) loaded from a local TorchScript file; nothing is downloaded.

    Model contract: ``model(image_a, image_b) -> flow`` where both images are float32 tensors [1, 3, H, W],
    RGB, values in [0, 255] (any normalisation belongs inside the model), H and W multiples of 8, and flow
    is a float tensor [1, 2, H, W] in pixels, channel 0 = horizontal (u, to the right), channel 1 = vertical
    (v, down), moving pixels of image_a to image_b. Frames are padded by edge replication to a multiple of 8
    (split evenly between the two sides, as RAFT's InputPadder does) and the flow is cropped back.

    A RAFT from torchvision returns a list of refinements and expects [-1, 1] input; wrap it::

        class Wrapper(torch.nn.Module):
            def __init__(self, raft): super().__init__(); self.raft = raft
            def forward(self, a, b): return self.raft(a / 127.5 - 1, b / 127.5 - 1)[-1]

        torch.jit.trace(Wrapper(raft_large(weights="DEFAULT")).eval(), (a, b)).save("raft.pt")
    """

    name = "torchscript"
    #: Input sides must be multiples of this (RAFT works at 1/8 resolution).
    PAD_MULTIPLE = 8

    def __init__(
        self, path: str | os.PathLike, device: str = "cpu", consistency: ConsistencyConfig | None = None
    ) -> None:
        import torch

        self.path = Path(path).expanduser()
        try:
            self.device = torch.device(device)
        except (RuntimeError, TypeError) as error:
            raise PriorError(f"bad torch device {device!r} for TorchScript flow", hint="use 'cpu' or 'cuda'") from error
        self.consistency = consistency or ConsistencyConfig()
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise PriorError(
                "TorchScript flow asked for device 'cuda' but torch sees no CUDA GPU", hint="use device='cpu'"
            )
        if not self.path.is_file():
            raise PriorError(f"TorchScript flow model not found: {self.path}", hint=TORCHSCRIPT_EXPORT_HINT)
        try:
            with warnings.catch_warnings():
                # torch >= 2.10 deprecates TorchScript for torch.export; loading still works and is our contract.
                warnings.filterwarnings("ignore", category=DeprecationWarning)
                self.model = torch.jit.load(str(self.path), map_location=self.device).eval()
        except Exception as error:  # torch raises RuntimeError/ValueError/zip errors depending on the corruption
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise PriorError(
                f"{self.path} is not a loadable TorchScript flow model: {first_line[:200]}",
                hint=TORCHSCRIPT_EXPORT_HINT,
            ) from error

    def settings(self) -> dict[str, Any]:
        """Model file identity (path, size, mtime) and the consistency check, for cache keys."""
        stat = self.path.stat()
        return {
            "estimator": self.name,
            "path": str(self.path.resolve()),
            "size": stat.st_size,
            "mtime_ns": stat.st_mtime_ns,
            "consistency": dataclasses.asdict(self.consistency),
        }

    def make_solver(self) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
        import torch

        def solve(a: np.ndarray, b: np.ndarray) -> np.ndarray:
            height, width = a.shape[1:]
            pad_h = -height % self.PAD_MULTIPLE
            pad_w = -width % self.PAD_MULTIPLE
            padding = (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2)  # left, right, top, bottom

            def to_input(image: np.ndarray) -> torch.Tensor:
                tensor = torch.from_numpy(image).to(self.device)[None]
                if pad_h or pad_w:
                    tensor = torch.nn.functional.pad(tensor, padding, mode="replicate")
                return tensor

            with torch.inference_mode():
                flow = self.model(to_input(a), to_input(b))
            if not isinstance(flow, torch.Tensor) or tuple(flow.shape) != (1, 2, height + pad_h, width + pad_w):
                got = list(flow.shape) if isinstance(flow, torch.Tensor) else type(flow).__name__
                raise PriorError(
                    f"TorchScript flow model {self.path.name} returned {got}, expected [1, 2, {height + pad_h}, {width + pad_w}]",
                    hint=TORCHSCRIPT_EXPORT_HINT,
                )
            flow = flow[0, :, padding[2] : padding[2] + height, padding[0] : padding[0] + width]
            return flow.permute(1, 2, 0).float().cpu().numpy()

        return solve

    def __call__(self, frames: np.ndarray) -> FlowResult:
        """frames: [T, H, W, 3] uint8 RGB, T >= 2 -> FlowResult of T-1 pairs (model run one pair at a time)."""

        def prepare(frame: np.ndarray) -> np.ndarray:
            return np.ascontiguousarray(frame.transpose(2, 0, 1), dtype=np.float32)  # [3, H, W] in [0, 255]

        # One thread: torch parallelises inside the model, and a GPU would serialise the pairs anyway.
        return pairwise_flow(frames, self.make_solver, prepare, self.consistency, num_threads=1)


def _make_dis(**options: Any) -> DISFlow:
    config = config_from_options(DISFlowConfig, options, "flow estimator", "dis")  # validates, builds nested
    if "preset" in options:
        # A named preset means OpenCV's preset, changed only by the other options given.
        given = {name: getattr(config, name) for name in options if name != "preset"}
        config = DISFlowConfig.from_preset(config.preset, **given)
    return DISFlow(config)


def _make_farneback(**options: Any) -> FarnebackFlow:
    return FarnebackFlow(config_from_options(FarnebackFlowConfig, options, "flow estimator", "farneback"))


def _make_torchscript(
    path: str | os.PathLike | None = None, device: str = "cpu", consistency: Any = None, **unknown: Any
) -> TorchScriptFlow:
    if unknown:
        raise PriorError(
            f"unknown option(s) for the flow estimator 'torchscript': {', '.join(sorted(unknown))}",
            hint="valid: path, device, consistency",
        )
    if path is None:
        raise PriorError("flow backend 'torchscript' needs a model path", hint=TORCHSCRIPT_EXPORT_HINT)
    if isinstance(consistency, dict):
        consistency = config_from_options(ConsistencyConfig, consistency, "flow estimator", "torchscript.consistency")
    return TorchScriptFlow(path, device=device, consistency=consistency)


#: Flow backends by name; each factory takes the options of make_flow_estimator.
FLOW_ESTIMATORS: BackendRegistry[FlowEstimator] = BackendRegistry("flow estimator")
FLOW_ESTIMATORS.register("dis", DISFlow, _make_dis)
FLOW_ESTIMATORS.register("farneback", FarnebackFlow, _make_farneback)
FLOW_ESTIMATORS.register("torchscript", TorchScriptFlow, _make_torchscript)


def make_flow_estimator(name: str = "dis", **options: Any) -> FlowEstimator:
    """Flow backend by name ("dis", "farneback", "torchscript"); options are its config fields
    (e.g. ``make_flow_estimator("dis", patch_stride=3)``, ``make_flow_estimator("torchscript", path="raft.pt")``).
    For "dis", naming a ``preset`` gives OpenCV's plain preset (``DISFlowConfig.from_preset``) changed only by
    the other options; without it the tuned defaults of DISFlowConfig apply. Unknown name or option ->
    PriorError."""
    return FLOW_ESTIMATORS.make(name, **options)
