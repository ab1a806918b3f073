"""Optical flow backends: accuracy against exact synthetic ground truth, consistency masks, TorchScript loading."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from recon4d.errors import PriorError
from recon4d.eval.metrics import flow_epe
from recon4d.eval.synthetic import make_synthetic
from recon4d.priors.flow import (
    ConsistencyConfig,
    DISFlow,
    DISFlowConfig,
    FarnebackFlow,
    TorchScriptFlow,
    consistency_masks,
    make_flow_estimator,
    warp_backward,
)
from recon4d.priors.types import FlowResult

# torch 2.13 deprecates TorchScript in favour of torch.export; the TorchScript backend is still the contract.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def _texture(height: int, width: int, seed: int = 0) -> np.ndarray:
    """[H, W, 3] uint8 multi-scale value noise: texture at every scale, like a real surface."""
    rng = np.random.default_rng(seed)
    image = np.zeros((height, width), np.float32)
    for step in (1, 2, 4, 8):
        noise = rng.random((height // step + 2, width // step + 2)).astype(np.float32)
        image += (
            cv2.resize(noise, (width + 2 * step, height + 2 * step), interpolation=cv2.INTER_CUBIC)[
                step : step + height, step : step + width
            ]
            / step**0.5
        )
    image = (image - image.min()) / (image.max() - image.min()) * 255.0
    return np.dstack([image, np.roll(image, 5, axis=1), 255.0 - image]).clip(0, 255).astype(np.uint8)


def _shifted_clip(shift: tuple[float, float], num_frames: int = 4, size: tuple[int, int] = (128, 96)) -> np.ndarray:
    """Frames of a texture translated by `shift` pixels per frame (cubic resampling), [T, H, W, 3]."""
    texture = _texture(140, 180)
    frames = []
    for t in range(num_frames):
        affine = np.float32([[1, 0, shift[0] * t - 20], [0, 1, shift[1] * t - 20]])
        frames.append(cv2.warpAffine(texture, affine, size, flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT))
    return np.stack(frames)


@pytest.fixture(scope="module")
def synthetic_flows():
    """DIS flow of the synthetic variants at 160x120, 8 frames (seed 0)."""
    out = {}
    for variant in ("translate", "rotate", "static"):
        clip = make_synthetic(variant, num_frames=8, width=160, height=120, seed=0)
        out[variant] = (clip, DISFlow()(clip.frames))
    return out


def test_result_shapes_and_types(synthetic_flows):
    clip, flow = synthetic_flows["translate"]
    assert isinstance(flow, FlowResult)
    assert flow.flow_forward.shape == flow.flow_backward.shape == (7, 120, 160, 2)
    assert flow.flow_forward.dtype == flow.flow_backward.dtype == np.float32
    assert flow.valid_forward.shape == flow.valid_backward.shape == (7, 120, 160)
    assert flow.valid_forward.dtype == flow.valid_backward.dtype == bool


@pytest.mark.parametrize(
    # Bars are ~1.5x the EPE measured with the default DISFlowConfig on seed 0, 160x120, 10 frames
    # (translate 0.138, rotate 0.110, static 0.062 px; seeds 0-3 ranged 0.14-0.20 / 0.11-0.13 / 0.06-0.09).
    "variant, bar_px",
    [("translate", 0.25), ("rotate", 0.2), ("static", 0.13)],
)
def test_dis_epe_on_synthetic(synthetic_flows, variant, bar_px):
    clip, flow = synthetic_flows[variant]
    visible = ~clip.occluded_forward
    epe = flow_epe(flow.flow_forward, clip.flow_forward, visible)
    assert epe < bar_px, f"{variant}: EPE {epe:.3f} px"


def test_dis_beats_farneback_on_synthetic(synthetic_flows):
    # Measured at 320x180 over all variants: DIS (default) 0.33 px vs Farneback 1.21 px mean EPE.
    clip, flow = synthetic_flows["rotate"]
    visible = ~clip.occluded_forward
    farneback = FarnebackFlow()(clip.frames)
    assert flow_epe(flow.flow_forward, clip.flow_forward, visible) < 0.5 * flow_epe(
        farneback.flow_forward, clip.flow_forward, visible
    )


def test_occlusion_masks_match_ground_truth(synthetic_flows):
    # Pooled over translate + rotate (seed 0, 160x120): precision 0.88, recall 0.63-0.80 measured; the base
    # rate of occluded pixels is ~4 %, so a precision of 0.7 is far above chance. Non-flagged errors are
    # mostly pixels at motion boundaries, where flow is unreliable though not occluded.
    true_positive = flagged = occluded = 0
    for variant in ("translate", "rotate"):
        clip, flow = synthetic_flows[variant]
        invalid = ~flow.valid_forward
        true_positive += np.count_nonzero(invalid & clip.occluded_forward)
        flagged += np.count_nonzero(invalid)
        occluded += np.count_nonzero(clip.occluded_forward)
    precision, recall = true_positive / flagged, true_positive / occluded
    assert precision > 0.7, f"precision {precision:.2f}"
    assert recall > 0.5, f"recall {recall:.2f}"


def test_valid_flow_is_accurate(synthetic_flows):
    # Flow that passes the check is good: < 1 % of valid pixels are off by more than 3 px (measured 0.3 %).
    clip, flow = synthetic_flows["translate"]
    error = np.linalg.norm(flow.flow_forward - clip.flow_forward, axis=-1)
    assert np.mean(error[flow.valid_forward] > 3.0) < 0.01


def test_subpixel_translation():
    shift = (1.3, -0.7)
    frames = _shifted_clip(shift)
    flow = DISFlow()(frames)
    # Measured EPE 0.044 px forward and 0.041 px backward.
    assert np.linalg.norm(flow.flow_forward - np.array(shift), axis=-1).mean() < 0.1
    assert np.linalg.norm(flow.flow_backward + np.array(shift), axis=-1).mean() < 0.1
    assert flow.valid_forward[:, 8:-8, 8:-8].mean() > 0.99


def test_out_of_frame_targets_are_invalid():
    frames = _shifted_clip((3.0, 0.0), num_frames=3)
    flow = DISFlow()(frames)
    width = frames.shape[2]
    # u + 3 >= W - 0.5 for the last three columns: their targets leave frame t+1.
    assert not flow.valid_forward[:, :, width - 3 :].any()
    # Backward: the first three columns of frame t+1 come from u - 3 < -0.5.
    assert not flow.valid_backward[:, :, :3].any()
    assert flow.valid_forward[:, 10:-10, 10:-10].mean() > 0.99


def test_consistency_masks_flag_inconsistent_vectors():
    height, width = 20, 30
    forward = np.zeros((height, width, 2), np.float32)
    forward[..., 0] = 2.0
    backward = -forward.copy()
    backward[5:10, 5:10] = 0.0  # these frame-(t+1) pixels disagree with the forward flow that lands on them
    valid_forward, valid_backward = consistency_masks(forward, backward, ConsistencyConfig())
    assert not valid_forward[5:10, 3:8].any()  # x + 2 lands in the bad block
    assert valid_forward[12:, :20].all()
    assert not valid_backward[5:10, 5:10].any()
    assert valid_backward[12:, 5:].all()


def test_warp_backward_samples_at_target():
    image = np.arange(20, dtype=np.float32).reshape(4, 5)
    flow = np.zeros((4, 5, 2), np.float32)
    flow[..., 0] = 1.0
    assert np.allclose(warp_backward(image, flow)[:, :4], image[:, 1:])


@pytest.mark.skipif(not (DATA / "opencv-doc" / "rubberwhale1.png").is_file(), reason="shared real data not present")
def test_real_pair_rubberwhale():
    # Middlebury RubberWhale (real photo pair, no ground truth here) at half size (292x194): frame t+1 warped
    # by the flow matches frame t to 1.93 grey levels on average over valid pixels (measured; 1.17 at full
    # size), vs 4.67 with zero flow.
    frames = [cv2.imread(str(DATA / "opencv-doc" / f"rubberwhale{i}.png"))[:, :, ::-1] for i in (1, 2)]
    frames = np.stack([cv2.resize(f, (292, 194), interpolation=cv2.INTER_AREA) for f in frames])
    flow = DISFlow()(frames)
    gray = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY).astype(np.float32) for f in frames]
    warped_error = np.abs(warp_backward(gray[1], flow.flow_forward[0]) - gray[0])[flow.valid_forward[0]].mean()
    zero_flow_error = np.abs(gray[1] - gray[0]).mean()
    assert warped_error < 2.5
    assert warped_error < 0.5 * zero_flow_error
    assert flow.valid_forward.mean() > 0.9


def test_bad_frames_raise_prior_error():
    dis = DISFlow()
    with pytest.raises(PriorError, match="at least 2 frames"):
        dis(np.zeros((1, 32, 32, 3), np.uint8))
    with pytest.raises(PriorError, match="uint8"):
        dis(np.zeros((2, 32, 32, 3), np.float32))
    with pytest.raises(PriorError, match=r"\[T, H, W, 3\]"):
        dis(np.zeros((2, 32, 32), np.uint8))


def test_registry():
    assert isinstance(make_flow_estimator("dis"), DISFlow)
    fast = make_flow_estimator("dis", preset="fast")  # OpenCV's plain preset
    assert isinstance(fast, DISFlow) and fast.config.preset == "fast" and fast.config.finest_scale is None
    assert make_flow_estimator("dis", preset="fast", patch_stride=2).config.patch_stride == 2
    assert make_flow_estimator("dis", patch_stride=3).config.finest_scale == 0  # tuned defaults kept
    assert isinstance(make_flow_estimator("farneback", winsize=9), FarnebackFlow)
    with pytest.raises(PriorError, match="unknown flow estimator"):
        make_flow_estimator("raft")
    with pytest.raises(PriorError, match="unknown option"):
        make_flow_estimator("dis", presett="fast")
    with pytest.raises(PriorError, match="unknown DIS preset"):
        make_flow_estimator("dis", preset="slow")
    with pytest.raises(PriorError, match="needs a model path"):
        make_flow_estimator("torchscript")
    # settings() is JSON-friendly and changes with the config (used for cache keys).
    assert DISFlow().settings() != DISFlow(DISFlowConfig(preset="fast")).settings()
    assert DISFlow(DISFlowConfig(num_threads=1)).settings() == DISFlow(DISFlowConfig(num_threads=2)).settings()


# ---------------------------------------------------------------------------------------------------------
# TorchScript backend, driven by a tiny scripted model instead of a real RAFT


class _ConstantShift(torch.nn.Module):
    """Flow = +shift when image b is brighter than image a, else -shift; checks the input contract."""

    def __init__(self, du: float, dv: float) -> None:
        super().__init__()
        self.du = du
        self.dv = dv

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if a.dim() != 4 or a.shape[0] != 1 or a.shape[1] != 3 or a.shape[2] % 8 != 0 or a.shape[3] % 8 != 0:
            raise RuntimeError("input must be [1, 3, H, W] with H, W multiples of 8")
        if a.dtype != torch.float32 or float(a.max()) <= 1.0:
            raise RuntimeError("input must be float32 in [0, 255]")
        sign = 1.0 if float(b.mean()) > float(a.mean()) else -1.0
        flow = torch.zeros(1, 2, a.shape[2], a.shape[3])
        flow[:, 0] = sign * self.du
        flow[:, 1] = sign * self.dv
        return flow


class _WrongShape(torch.nn.Module):
    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.zeros(1, 2, 8, 8)


def test_torchscript_flow_constant_shift(tmp_path):
    path = tmp_path / "shift.pt"
    torch.jit.script(_ConstantShift(2.0, -1.0)).save(str(path))
    # 45x61 is not a multiple of 8: the backend must pad and crop back.
    frames = np.stack([np.full((45, 61, 3), 40 + 50 * t, np.uint8) for t in range(3)])
    frames[:, 10:20, 10:30] += 30  # some structure, irrelevant to the fake model
    estimator = make_flow_estimator("torchscript", path=str(path))
    flow = estimator(frames)
    assert flow.flow_forward.shape == (2, 45, 61, 2)
    assert np.allclose(flow.flow_forward, [2.0, -1.0])
    assert np.allclose(flow.flow_backward, [-2.0, 1.0])
    # Consistent everywhere except where targets leave the frame: u + 2 >= 60.5, v - 1 < -0.5.
    expected = np.ones((45, 61), bool)
    expected[:, 59:] = False
    expected[0, :] = False
    assert np.array_equal(flow.valid_forward[0], expected)
    # Backward (-2, +1): u - 2 < -0.5 for the first two columns, v + 1 >= 44.5 for the last row.
    assert flow.valid_backward[0, :-1, 2:].all()
    assert not flow.valid_backward[0, :, :2].any() and not flow.valid_backward[0, -1].any()
    settings = estimator.settings()
    assert settings["estimator"] == "torchscript" and settings["size"] == path.stat().st_size


def test_torchscript_missing_or_bad_file(tmp_path):
    with pytest.raises(PriorError, match="not found") as missing:
        TorchScriptFlow(tmp_path / "raft.pt")
    assert "torch.jit" in missing.value.one_line()
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"this is not a TorchScript archive")
    with pytest.raises(PriorError, match="not a loadable TorchScript") as bad:
        TorchScriptFlow(garbage)
    assert "\n" not in bad.value.one_line()
    with pytest.raises(PriorError, match="device"):
        TorchScriptFlow(garbage, device="gpu0")
    wrong = tmp_path / "wrong.pt"
    torch.jit.script(_WrongShape()).save(str(wrong))
    with pytest.raises(PriorError, match="returned"):
        TorchScriptFlow(wrong)(np.zeros((2, 16, 16, 3), np.uint8))
