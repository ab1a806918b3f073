"""The outputs render_views and export stand side by side: neither imports the other (no import cycle)."""
from __future__ import annotations

import subprocess
import sys

import pytest


def _imported_packages(module: str) -> set[str]:
    code = f"import sys, {module}; print(' '.join(sorted(sys.modules)))"
    names = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    return set(names)


@pytest.mark.parametrize("module, forbidden", [
    ("recon4d.render_views", "recon4d.export"),
    ("recon4d.export", "recon4d.render_views"),
    ("recon4d.export.tracks", "recon4d.render_views"),
    ("recon4d.io.frames", "recon4d.export"),
    ("recon4d.io.frames", "recon4d.render_views"),
])
def test_output_packages_do_not_import_each_other(module: str, forbidden: str) -> None:
    loaded = _imported_packages(module)
    assert not {name for name in loaded if name == forbidden or name.startswith(forbidden + ".")}
