import sys
from pathlib import Path

import pytest
import torch

# Shared test helpers (render_scenes.py) live beside the tests.
sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module of tiny models: they do not parallelise, and on a shared, busy CPU
    OpenMP spin-waiting costs many times what it gains. Modules opt in with
    `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
