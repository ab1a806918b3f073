"""Data-parallel training under torchrun (torch.distributed): one place for the process-group plumbing.

The single-process path is the default and needs nothing: every function here is a no-op when the
environment that torchrun sets (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``) is absent.

Under ``torchrun --nproc-per-node N -m recon4d ...`` the trainers of `recon4d gen train` and
`recon4d nerf train` call :func:`init_from_env`, wrap their model with :func:`wrap_model`, shard their
data with :func:`make_sampler`, and write checkpoints and logs only where :func:`is_rank0` holds.
Backend: NCCL on CUDA, gloo on CPU.

Example:
    >>> ctx = init_from_env()          # single process: world_size 1, rank 0
    >>> ctx.world_size, ctx.rank, is_rank0()
    (1, 0, True)
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist

from recon4d.errors import InputError


@dataclass(frozen=True)
class DistContext:
    """Where this process sits in the job. world_size 1 means plain single-process training."""

    world_size: int
    rank: int
    local_rank: int
    device: torch.device


def init_from_env(device: torch.device | str = "cpu") -> DistContext:
    """Join the process group that torchrun describes in the environment, once; single process otherwise.

    On CUDA each process takes the GPU of its local rank (NCCL); on CPU the gloo backend is used.
    """
    device = torch.device(device)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if world_size > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(local_rank)
            device = torch.device("cuda", local_rank)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistContext(world_size=world_size, rank=rank, local_rank=local_rank, device=device)


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def is_rank0() -> bool:
    """True in a single process and on rank 0 of a job: the process that writes files and logs."""
    return not is_distributed() or dist.get_rank() == 0


def wrap_model(model: torch.nn.Module, ctx: DistContext, find_unused_parameters: bool = False) -> torch.nn.Module:
    """DistributedDataParallel around `model` in a multi-process job (gradients all-reduced), else `model`.

    A model with parameters that some steps leave out of the loss (e.g. the text stream of the last block of
    an MM-DiT, an expert no token was routed to) must pass ``find_unused_parameters=True``, or the next
    step fails with "Expected to have finished reduction"; better still, do not create dead parameters.
    """
    if ctx.world_size <= 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [ctx.local_rank] if ctx.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids, find_unused_parameters=find_unused_parameters)


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside a DDP wrapper (what checkpoints store)."""
    return getattr(model, "module", model)


def make_sampler(dataset, ctx: DistContext, shuffle: bool = True, seed: int = 0):
    """A DistributedSampler that gives each rank its shard of every epoch (call ``set_epoch(epoch)``).

    A single process gets the same sampler with one replica, so the order of the samples (and with it the
    whole run) is the same for any number of processes that train with the same global batch: rank r of N
    sees samples r, r + N, r + 2N, ... of the epoch's permutation, and the per-rank batches of one step
    together are exactly the single process's batch.
    """
    from torch.utils.data.distributed import DistributedSampler

    return DistributedSampler(dataset, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=shuffle, seed=seed)


def local_batch_size(global_batch: int, ctx: DistContext) -> int:
    """Samples per rank and step for `global_batch` samples per step over the job; InputError unless it divides."""
    if global_batch < ctx.world_size or global_batch % ctx.world_size:
        raise InputError(f"a batch of {global_batch} does not split evenly over {ctx.world_size} processes",
                         hint=f"use a multiple of {ctx.world_size}")
    return global_batch // ctx.world_size


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def all_reduce_mean(value: torch.Tensor) -> torch.Tensor:
    """Mean of `value` over ranks (the value itself in a single process), e.g. for logged losses."""
    if not is_distributed():
        return value
    value = value.detach().clone()
    dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value / dist.get_world_size()


# Seconds the main thread sleeps (GIL released) after tearing down a gloo group. Gloo's worker threads
# free each finished collective's work object, and with it the last C++ reference to a tensor that has
# a Python object, which needs the GIL. If the interpreter is already finalizing by then, the worker
# thread dies inside a destructor and the process aborts ("terminate called without an active
# exception", torch 2.13; 3 of 90 two-process runs on 2 cores, 0 of 150 with the pause). A GIL-free pause
# lets the workers finish; the group object itself is not freed here (DDP keeps a reference to it).
GLOO_SETTLE_SECONDS = 0.25


def shutdown() -> None:
    """Leave the process group; call once at the end of training, after the last collective."""
    if dist.is_available() and dist.is_initialized():
        gloo = dist.get_backend() == "gloo"
        dist.destroy_process_group()
        if gloo:
            time.sleep(GLOO_SETTLE_SECONDS)
