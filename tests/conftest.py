import sys
from pathlib import Path

# Shared test helpers (render_scenes.py) live beside the tests.
sys.path.insert(0, str(Path(__file__).parent))
