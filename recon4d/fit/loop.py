"""Loop closure for the sequential pass: has the camera come back to a view it saw many frames ago?

A revisit is recognised by appearance, not by the estimated poses: the poses are what drifted. Each frame gets
a small global descriptor (`frame_descriptors`: the grey image area-averaged to a 16 x 16 grid, zero mean, unit
norm, so the cosine similarity of two descriptors is the normalised cross-correlation of two thumbnails).
Frame k is a revisit of the latest frame t when

- k lies at least `min_gap` frames before t (recent frames look alike because they are recent),
- similarity(t, k) >= `min_similarity`, the best such k, and
- the frames between them departed from k's view: some frame j in (k, t) has
  similarity(j, k) <= similarity(t, k) - `min_departure`. A camera that never left a view (a static or
  slowly panning one) is not a loop; adding its old frame would cost time and close nothing.

`recon4d.fit.bundle` adds the revisited frame, with its camera fixed, to the bundle-adjustment window.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

# Side of the thumbnail grid of a descriptor (cells): coarse enough to ignore small shifts, fine enough to
# tell views of one object apart.
DESCRIPTOR_GRID = 16


def frame_descriptors(frames: torch.Tensor) -> torch.Tensor:
    """frames [T, H, W, 3] in [0, 1] -> descriptors [T, DESCRIPTOR_GRID**2]: grey thumbnails, zero mean,
    unit norm (all zeros for a flat frame)."""
    grey = frames.mean(-1)[:, None]
    thumbs = F.adaptive_avg_pool2d(grey, DESCRIPTOR_GRID).flatten(1)
    thumbs = thumbs - thumbs.mean(1, keepdim=True)
    return thumbs / thumbs.norm(dim=1, keepdim=True).clamp_min(1e-8)


def find_revisit(descriptors: torch.Tensor, t: int, min_gap: int, min_similarity: float,
                 min_departure: float) -> int | None:
    """Index k < t of the frame that frame t revisits (see the module docstring), or None.

    descriptors: [T', D] with T' > t (rows of frames after t are not read)."""
    if t - min_gap < 0:
        return None
    similarity = descriptors[: t + 1] @ descriptors[t]  # [t + 1]
    candidates = similarity[: t - min_gap + 1]
    k = int(candidates.argmax())
    best = float(candidates[k])
    if best < min_similarity:
        return None
    between = descriptors[k + 1: t] @ descriptors[k]
    if between.numel() == 0 or float(between.min()) > best - min_departure:
        return None
    return k
