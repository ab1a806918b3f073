"""Choosing the compute device once, at the top of a command."""
from __future__ import annotations

import torch

from recon4d.errors import InputError

DEVICE_CHOICES = ("auto", "cpu", "cuda")


def gsplat_available() -> bool:
    """True when gsplat can be imported (it is only useful with CUDA)."""
    try:
        import gsplat  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_device(name: str) -> torch.device:
    """'auto' -> cuda when a GPU and gsplat are present, else cpu; 'cuda' without either is an input error."""
    if name not in DEVICE_CHOICES:
        raise InputError(f"unknown device {name!r}", hint=f"choose one of {', '.join(DEVICE_CHOICES)}")
    cuda_ready = torch.cuda.is_available() and gsplat_available()
    if name == "auto":
        return torch.device("cuda" if cuda_ready else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda but no CUDA GPU is visible to torch", hint="use --device cpu")
    if name == "cuda" and not gsplat_available():
        raise InputError("--device cuda needs gsplat", hint="pip install 'recon4d[cuda]'")
    return torch.device(name)
