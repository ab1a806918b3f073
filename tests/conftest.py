import sys
from pathlib import Path

import pytest
import torch

# Shared test helpers (render_scenes.py) live beside the tests.
sys.path.insert(0, str(Path(__file__).parent))


def pytest_sessionstart(session) -> None:  # noqa: ANN001
    """Build the C++ kernels not built yet in background processes, all at once, as a fit does: on a fresh
    environment (CI) the tests would otherwise build them one after another as they reach them."""
    from recon4d.cpp import build_in_background

    build_in_background()


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module of tiny models: they do not parallelise, and on a shared, busy CPU
    OpenMP spin-waiting costs many times what it gains. Modules opt in with
    `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
