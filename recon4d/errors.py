"""User-facing failures. Each carries a one-line message and a hint; the CLI prints them and exits.

Exit codes follow the architecture guide: 2 for bad input, 1 for an internal failure.
"""
from __future__ import annotations


class Recon4DError(Exception):
    """Base of every failure the CLI reports as one line instead of a traceback."""

    exit_code: int = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def one_line(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class InputError(Recon4DError):
    """The user gave something we cannot use (missing file, bad option value)."""

    exit_code = 2


class VideoError(InputError):
    """A video or image folder cannot be decoded into a clip."""


class SceneError(InputError):
    """A scene file is missing, truncated, foreign or from a newer recon4d."""


class PriorError(InputError):
    """A depth/flow prior cannot be computed or its weights are missing."""


class BackendError(Recon4DError):
    """A compute backend (CPU extension build, gsplat) is unavailable."""
