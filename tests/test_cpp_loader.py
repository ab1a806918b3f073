"""The C++ kernel loader (`recon4d.cpp`): a build lock left behind by a killed process never blocks a later
load of a kernel that is already built."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import recon4d.fit.optim as optim
from recon4d.cpp import _build_key, cache_dir, load_extension


def test_a_left_over_build_lock_does_not_block_a_built_kernel():
    source = Path(optim.__file__).with_name("csrc") / "selective_adam.cpp"
    load_extension(source)  # built (or already there) before the lock appears
    lock = cache_dir() / "ext" / _build_key(source) / "lock"
    lock.touch()  # as a process killed inside torch's build check leaves it
    try:
        code = ("import torch; from pathlib import Path; import recon4d.fit.optim as o; from recon4d.cpp import load_extension; "
                "load_extension(Path(o.__file__).with_name('csrc') / 'selective_adam.cpp'); print('loaded')")
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    finally:
        lock.unlink(missing_ok=True)
    assert result.returncode == 0 and "loaded" in result.stdout, result.stderr[-2000:]


def test_a_dead_builders_lock_does_not_block_a_build(tmp_path, monkeypatch):
    """A process killed while building (a fit-batch worker, Ctrl-C) leaves torch's lock file; the next build of
    that kernel must not wait on it forever (CI once hung there for minutes)."""
    import torch.utils.cpp_extension

    import recon4d.cpp as cpp

    monkeypatch.setenv("RECON4D_CACHE_DIR", str(tmp_path))
    source = tmp_path / "tiny_kernel.cpp"
    source.write_text("// not compiled: torch's load is replaced below\n")
    build_dir = cache_dir() / "ext" / _build_key(source)
    build_dir.mkdir(parents=True)
    (build_dir / "lock").touch()  # left by the killed builder
    calls = []

    def fake_load(name, sources, build_directory, **kwargs):
        calls.append((Path(build_directory) / "lock").exists())
        return "built"

    monkeypatch.setattr(torch.utils.cpp_extension, "load", fake_load)
    monkeypatch.setattr(cpp, "_extensions", {})
    assert load_extension(source) == "built"
    assert calls == [False]  # the stale lock was cleared before torch's build check
    assert (build_dir / cpp.BUILD_LOCK_NAME).exists()


def test_kernels_build_in_a_background_process_that_a_load_then_uses(tmp_path, monkeypatch):
    """`build_in_background` builds a missing kernel in a process of its own (a fit starts them beside its
    decoding and priors); the library appears without this process building it, and a kernel already built or
    loaded is not started again."""
    import time

    import recon4d.cpp as cpp
    from recon4d.cpp import build_in_background, is_built, kernel_sources

    assert optim._KERNEL in kernel_sources() and len(kernel_sources()) >= 5
    monkeypatch.setenv("RECON4D_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(cpp, "_extensions", {})
    source = tmp_path / "tiny_add.cpp"  # pybind11 only: builds in about 4 s, where the kernels take 6-8 s
    source.write_text("#include <pybind11/pybind11.h>\nint add(int a, int b) { return a + b; }\n"
                      "PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) { m.def(\"add\", &add); }\n")
    assert not is_built(source)
    assert build_in_background([source]) == ["tiny_add"]
    deadline = time.monotonic() + 180
    while not is_built(source) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert is_built(source)
    assert build_in_background([source]) == []
    assert load_extension(source).add(2, 3) == 5
