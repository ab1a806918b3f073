"""Data-parallel training with recon4d.distributed under torchrun: 2 gloo processes on CPU end with the
same parameters and loss curve as 1 process with the same global batch, and only rank 0 writes.

The trainer is a real loop written here (a small convolutional regressor, Adam, a shuffled DataLoader with
make_sampler, several epochs), run once as a plain process and once as `torchrun --nproc-per-node 2`.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from recon4d import distributed
from recon4d.errors import InputError

TRAINER = textwrap.dedent('''
    import json, sys
    from pathlib import Path

    import torch
    from safetensors.torch import save_file
    from torch.utils.data import DataLoader, TensorDataset

    from recon4d import distributed

    out, steps, global_batch = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    ctx = distributed.init_from_env("cpu")
    torch.manual_seed(0)
    images = torch.randn(40, 3, 8, 8)
    targets = images.mean(dim=(1, 2, 3)).unsqueeze(1) * 3 + images[:, 0, 2:4, 2:4].std(dim=(1, 2)).unsqueeze(1)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.GELU(), torch.nn.Conv2d(8, 8, 3),
                                torch.nn.GELU(), torch.nn.Flatten(), torch.nn.Linear(8 * 6 * 6, 1))
    wrapped = distributed.wrap_model(model, ctx)
    optimizer = torch.optim.Adam(wrapped.parameters(), lr=3e-3)
    dataset = TensorDataset(images, targets)
    sampler = distributed.make_sampler(dataset, ctx, shuffle=True, seed=7)
    loader = DataLoader(dataset, batch_size=distributed.local_batch_size(global_batch, ctx), sampler=sampler,
                        drop_last=True)
    losses, step, epoch = [], 0, 0
    while step < steps:
        sampler.set_epoch(epoch)
        for x, y in loader:
            loss = torch.nn.functional.mse_loss(wrapped(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(float(distributed.all_reduce_mean(loss.detach())))
            step += 1
            if step == steps:
                break
        epoch += 1
    if distributed.is_rank0():
        state = {k: v.contiguous() for k, v in distributed.unwrap_model(wrapped).state_dict().items()}
        save_file(state, str(out / "model.safetensors"))
        (out / "log.json").write_text(json.dumps({"losses": losses, "epochs": epoch, "world": ctx.world_size}))
    (out / f"rank{ctx.rank}.done").write_text(str(len(losses)))
    distributed.barrier()
    distributed.shutdown()
''')
STEPS, GLOBAL_BATCH = 24, 8  # 5 batches per epoch: the run crosses epochs (reshuffles)


def run_trainer(tmp_path: Path, name: str, nproc: int) -> Path:
    out = tmp_path / name
    out.mkdir()
    script = tmp_path / "trainer.py"
    script.write_text(TRAINER)
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
                if nproc > 1 else [sys.executable])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RECON4D_NO_PROGRESS": "1"}
    result = subprocess.run([*launcher, str(script), str(out), str(STEPS), str(GLOBAL_BATCH)], check=False,
                            capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    return run_trainer(tmp, "single", 1), run_trainer(tmp, "ddp2", 2)


@pytest.mark.slow
def test_two_gloo_processes_match_one_process(runs):
    single, ddp = runs
    one, two = load_file(str(single / "model.safetensors")), load_file(str(ddp / "model.safetensors"))
    assert one.keys() == two.keys()
    start = torch.nn.Conv2d(3, 8, 3, padding=1)  # any freshly initialised layer is far from the trained one
    moved = max(float((one[k] - v).abs().max()) for k, v in two.items())
    assert moved < 1e-5, f"parameters differ by {moved}"
    assert float((one["0.weight"] - start.weight.detach()).abs().max()) > 1e-2
    log1, log2 = json.loads((single / "log.json").read_text()), json.loads((ddp / "log.json").read_text())
    assert (log1["world"], log2["world"]) == (1, 2) and log1["epochs"] == log2["epochs"] == 5
    assert len(log1["losses"]) == len(log2["losses"]) == STEPS
    assert max(abs(a - b) for a, b in zip(log1["losses"], log2["losses"])) < 1e-5
    assert log1["losses"][-1] < 0.5 * log1["losses"][0]  # it trained
    # Only rank 0 wrote the model and the log; both ranks ran every step.
    assert sorted(p.name for p in ddp.iterdir()) == ["log.json", "model.safetensors", "rank0.done", "rank1.done"]
    assert (ddp / "rank1.done").read_text() == str(STEPS)


def test_single_process_helpers_are_plain():
    ctx = distributed.init_from_env("cpu")
    assert (ctx.world_size, ctx.rank) == (1, 0) and distributed.is_rank0()
    model = torch.nn.Linear(2, 1)
    assert distributed.wrap_model(model, ctx) is model and distributed.unwrap_model(model) is model
    value = torch.tensor([1.5, 2.0])
    assert torch.equal(distributed.all_reduce_mean(value), value)
    sampler = distributed.make_sampler(list(range(10)), ctx, shuffle=False)
    assert list(sampler) == list(range(10))
    assert distributed.local_batch_size(8, ctx) == 8


def test_shards_of_a_two_process_job_cover_the_single_process_batches():
    from recon4d.distributed import DistContext

    data = list(range(20))
    ranks = [DistContext(2, r, r, torch.device("cpu")) for r in (0, 1)]
    single = DistContext(1, 0, 0, torch.device("cpu"))
    for epoch in (0, 3):
        samplers = [distributed.make_sampler(data, c, seed=5) for c in [single, *ranks]]
        for s in samplers:
            s.set_epoch(epoch)
        order, shard0, shard1 = (list(s) for s in samplers)
        assert sorted(order) == data and order != data  # shuffled, per epoch
        batch = distributed.local_batch_size(4, ranks[0])
        for step in range(5):  # step k of the job = rank 0's and rank 1's local batches together
            together = shard0[step * batch:(step + 1) * batch] + shard1[step * batch:(step + 1) * batch]
            assert sorted(together) == sorted(order[step * 4:(step + 1) * 4])
    with pytest.raises(InputError, match="does not split evenly"):
        distributed.local_batch_size(5, ranks[0])


NERF_ARGS = ["--steps", "4", "--rays", "32", "--eval-every", "2", "--short-side", "32", "--device", "cpu"]


@pytest.mark.slow
def test_nerf_train_under_torchrun_matches_one_process(tmp_path):
    """`torchrun --nproc-per-node 2 -m recon4d nerf train` (GNT-MOVE, gloo) against the plain command."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RECON4D_NO_PROGRESS": "1"}
    corpus = tmp_path / "corpus"
    made = subprocess.run([sys.executable, "-m", "recon4d", "gen", "corpus", "-o", str(corpus), "--count", "2",
                           "--views", "10", "--size", "32"], check=False, capture_output=True, text=True, env=env,
                          timeout=600)
    assert made.returncode == 0, made.stderr[-2000:]
    data = [str(p) for p in sorted(corpus.glob("obj_*"))]
    models = {}
    for name, launcher in (("single", [sys.executable, "-m", "recon4d"]),
                           ("ddp", [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                    "--nproc-per-node=2", "-m", "recon4d"])):
        result = subprocess.run([*launcher, "nerf", "train", *data, "-o", str(tmp_path / name), *NERF_ARGS],
                                check=False, capture_output=True, text=True, env=env, timeout=900)
        assert result.returncode == 0, result.stderr[-3000:]
        models[name] = tmp_path / name
    logs = {name: [json.loads(line) for line in (path / "log.jsonl").read_text().splitlines()]
            for name, path in models.items()}
    assert [r["step"] for r in logs["single"]] == [r["step"] for r in logs["ddp"]] == [2, 4]
    for one, two in zip(logs["single"], logs["ddp"]):
        for key in ("mse", "balance", "consistency"):
            assert two[key] == pytest.approx(one[key], rel=1e-4, abs=1e-6), key
    one, two = (load_file(str(path / "model.safetensors")) for path in models.values())
    diff = torch.cat([(one[k] - two[k]).abs().flatten() for k in one])
    # Equal up to float summation order; Adam's normalised step turns that noise on near-zero gradients into
    # moves of up to lr (1e-3) on a handful of weights, so the bulk is compared tightly and the tail loosely.
    assert float(diff.mean()) < 1e-6 and float((diff > 1e-4).float().mean()) < 1e-3 and float(diff.max()) < 5e-3


GEN_TINY = """stages: [rf1]
model: {num_gaussians: 64, patch: 16, width: 32, depth: 2, heads: 2, mlp_ratio: 2.0}
rf1: {steps: 12, batch: 4, lr: 0.003, warmup: 1, ema_decay: 0.5, checkpoint_every: 6, log_every: 1}
"""


@pytest.mark.slow
def test_gen_train_under_torchrun_matches_one_process(tmp_path):
    """`torchrun --nproc-per-node 2 -m recon4d gen train` (MM-DiT rectified flow, gloo) against the plain command:
    same loss per step, same EMA weights and optimiser state, written once (rank 0)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RECON4D_NO_PROGRESS": "1"}

    def recon4d(*args: str, launcher: tuple[str, ...] = (sys.executable, "-m", "recon4d")) -> None:
        result = subprocess.run([*launcher, *args], check=False, capture_output=True, text=True, env=env, timeout=900)
        assert result.returncode == 0, result.stderr[-3000:]

    recon4d("gen", "corpus", "-o", str(tmp_path / "corpus"), "--count", "4", "--views", "8", "--size", "32")
    recon4d("gen", "encode", str(tmp_path / "corpus"), "-o", str(tmp_path / "latents"), "--gaussians", "64",
            "--steps", "10")
    config = tmp_path / "tiny.yaml"
    config.write_text(GEN_TINY)
    train = ("gen", "train", str(tmp_path / "latents"), "--config", str(config))
    recon4d(*train, "-o", str(tmp_path / "single"))
    recon4d(*train, "-o", str(tmp_path / "ddp"), launcher=(sys.executable, "-m", "torch.distributed.run",
                                                            "--standalone", "--nproc-per-node=2", "-m", "recon4d"))
    logs = {name: [json.loads(line) for line in (tmp_path / name / "train_rf1.jsonl").read_text().splitlines()]
            for name in ("single", "ddp")}
    assert [r["step"] for r in logs["ddp"]] == list(range(1, 13))
    for one, two in zip(logs["single"], logs["ddp"]):
        assert two["loss"] == pytest.approx(one["loss"], rel=1e-5)
    losses = [r["loss"] for r in logs["single"]]
    assert sum(losses[-4:]) < sum(losses[:4])  # it trained (one batch of 4 is noisy: compare 4 steps each)
    files = {run: sorted(p.name for p in (tmp_path / run).iterdir()) for run in ("single", "ddp")}
    assert files["ddp"] == files["single"]  # rank 1 wrote nothing of its own
    for name in ("model.safetensors", "checkpoint_rf1.safetensors"):
        one, two = (load_file(str(tmp_path / run / name)) for run in ("single", "ddp"))
        assert one.keys() == two.keys()
        floats = [k for k in one if one[k].is_floating_point()]
        assert max(float((one[k].float() - two[k].float()).abs().max()) for k in floats) < 1e-5, name
