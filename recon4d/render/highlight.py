"""Motion highlight: colours that show which Gaussians belong to moving things.

Moving Gaussians are blended towards a highlight colour, the others turned to dimmed grey (their luminance).
Path videos (`recon4d render --motion`) and the browser viewer use the same look.

Example:
    >>> import torch
    >>> from recon4d.render.highlight import MotionHighlight, motion_highlight
    >>> colors = torch.tensor([[0.2, 0.4, 0.6], [0.2, 0.4, 0.6]])
    >>> motion_highlight(colors, torch.tensor([True, False]), MotionHighlight(tint=1.0)).tolist()[0]
    [1.0, 0.15000000596046448, 0.10000000149011612]
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

LUMINANCE = (0.299, 0.587, 0.114)  # ITU-R BT.601 weights


@dataclass(frozen=True)
class MotionHighlight:
    """Attributes:
        color: RGB in [0, 1] that moving Gaussians are blended towards.
        tint: share of that colour in a moving Gaussian's colour (1 = pure highlight).
        still_brightness: grey level of the other Gaussians: their luminance times this, in [0, 1].
    """

    color: tuple[float, float, float] = (1.0, 0.15, 0.1)
    tint: float = 0.75
    still_brightness: float = 0.6


def motion_highlight(colors: torch.Tensor, is_moving: torch.Tensor, config: MotionHighlight = MotionHighlight()) -> torch.Tensor:
    """colors [N, 3] in [0, 1], is_moving [N] bool -> highlighted colours [N, 3]."""
    rgb = colors[:, :3]
    grey = (rgb * torch.tensor(LUMINANCE, dtype=rgb.dtype, device=rgb.device)).sum(-1, keepdim=True)
    still = (grey * config.still_brightness).expand(-1, 3)
    moving = (1 - config.tint) * rgb + config.tint * torch.tensor(config.color, dtype=rgb.dtype, device=rgb.device)
    return torch.where(is_moving[:, None].to(rgb.device), moving, still)
