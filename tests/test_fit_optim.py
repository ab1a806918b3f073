"""SelectiveAdam: the fused C++ step equals the tensor-op step, equals torch's Adam on seen rows, and leaves
unseen rows (value and moments) untouched."""
from __future__ import annotations

import torch

from recon4d.fit.optim import SelectiveAdam, _update_rows


def _state(shape, seed):
    generator = torch.Generator().manual_seed(seed)
    param = torch.randn(shape, generator=generator)
    grad = torch.randn(shape, generator=generator)
    grad[1::3] = 0  # every third row unseen
    exp_avg = torch.randn(shape, generator=generator) * 0.1
    exp_avg_sq = torch.rand(shape, generator=generator) * 0.01
    return param, grad, exp_avg, exp_avg_sq


def test_cpp_step_matches_tensor_ops():
    for shape in [(1000, 3), (257, 10, 3), (5, 1)]:
        fused = _state(shape, 0)  # float32 CPU: the C++ kernel
        reference = [x.double() for x in _state(shape, 0)]  # float64: the tensor-op path (as on CUDA)
        _update_rows(*fused, 0.01, 0.9, 0.999, 1e-15, 7)
        _update_rows(*reference, 0.01, 0.9, 0.999, 1e-15, 7)
        for got, want in zip(fused, reference):
            torch.testing.assert_close(got, want.float(), rtol=1e-5, atol=1e-6)
        unseen = torch.arange(shape[0]) % 3 == 1
        for got, before in zip(fused, _state(shape, 0)):
            assert torch.equal(got[unseen], before[unseen])
        assert not torch.equal(fused[0][~unseen], _state(shape, 0)[0][~unseen])


def test_seen_rows_follow_torch_adam():
    torch.manual_seed(0)
    start = torch.randn(64, 4)
    ours = torch.nn.Parameter(start.clone())
    theirs = torch.nn.Parameter(start.clone())
    mine, torch_adam = SelectiveAdam([ours], lr=0.05, eps=1e-8), torch.optim.Adam([theirs], lr=0.05, eps=1e-8)
    target = torch.randn(64, 4)
    for _ in range(20):  # every row has a gradient at every step: plain Adam
        for param, optimizer in ((ours, mine), (theirs, torch_adam)):
            optimizer.zero_grad()
            ((param - target) ** 2).sum().backward()
            optimizer.step()
    torch.testing.assert_close(ours.detach(), theirs.detach(), rtol=1e-5, atol=1e-6)


def test_thread_count_does_not_change_the_step():
    shape = (300_000, 3)  # above the per-thread grain: two threads take part
    results = []
    threads = torch.get_num_threads()
    try:
        for count in (1, 2):
            torch.set_num_threads(count)
            state = _state(shape, 1)
            _update_rows(*state, 0.01, 0.9, 0.999, 1e-15, 3)
            results.append(state)
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(*results):
        assert torch.equal(a, b)
