"""Multi-process data parallel training without DDP wrapping.

Subnets skip blocks and slice MLPs, so different parameters are touched each
step; ``DistributedDataParallel`` would need ``find_unused_parameters``. Instead
every rank draws the same subnets (sampling is a pure function of seed and
iteration), accumulates its shard's gradients, and :func:`all_reduce_grads`
sums them across ranks in one flat buffer (a parameter without a gradient on
some rank counts as zeros; one without a gradient on every rank stays ``None``,
so AdamW skips it exactly as in a single process). Launch with
``torchrun --nproc_per_node K -m supersam.stages.train ...`` or ``supersam train --nproc K``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from supersam.runtime.device import resolve_device
from supersam.runtime.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistContext:
    """This process's place in the job.

    Attributes:
        rank: global rank (0 writes checkpoints, metrics and MLflow).
        world_size: number of processes.
        device: this rank's device (``cuda:LOCAL_RANK`` under CUDA).
        initialized: True when this module created the process group.
    """

    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")
    initialized: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device_name: str = "auto") -> DistContext:
    """Join the torchrun job described by ``RANK``/``WORLD_SIZE``/``MASTER_*`` env vars.

    Without those variables (or with WORLD_SIZE=1) this is a single process on
    ``resolve_device(device_name)``. Backend: nccl on CUDA, gloo on CPU.

    Raises:
        ConfigError: unknown device or CUDA requested without CUDA.
    """
    device = resolve_device(device_name)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext(0, 1, device, False)
    rank = int(os.environ["RANK"])
    if device.type == "cuda":
        local = int(os.environ.get("LOCAL_RANK", rank % max(torch.cuda.device_count(), 1)))
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    created = False
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        created = True
    log.debug("rank %d/%d on %s", rank, world, device)
    return DistContext(dist.get_rank(), dist.get_world_size(), device, created)


def close_distributed(ctx: DistContext) -> None:
    """Destroy the process group if :func:`init_distributed` created it."""
    if ctx.initialized and dist.is_initialized():
        dist.destroy_process_group()


def check_batch(ctx: DistContext, batch_size: int) -> None:
    """Every rank needs at least one image of the global batch.

    Raises:
        ConfigError: ``batch_size`` smaller than the number of processes.
    """
    if batch_size < ctx.world_size:
        raise ConfigError(
            f"train.batch_size {batch_size} is smaller than the {ctx.world_size} processes; "
            "raise batch_size or use fewer processes"
        )


def all_reduce_grads(params: list[torch.nn.Parameter], ctx: DistContext) -> None:
    """Sum gradients over ranks in place (one flat all-reduce).

    Each rank's loss is already divided by the global batch size, so the sum
    is the gradient of the global-batch mean. A ``None`` gradient counts as zeros.
    """
    if not ctx.distributed or not params:
        return
    has = torch.tensor([p.grad is not None for p in params], dtype=torch.float32, device=ctx.device)
    dist.all_reduce(has, op=dist.ReduceOp.MAX)
    active = [p for p, h in zip(params, has.tolist()) if h > 0]
    if not active:
        return
    for p in active:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    flat = torch.cat([p.grad.reshape(-1) for p in active])
    dist.all_reduce(flat)
    offset = 0
    for p in active:
        n = p.numel()
        p.grad.copy_(flat[offset : offset + n].view_as(p.grad))
        offset += n


def all_reduce_sum(values: list[float], ctx: DistContext) -> list[float]:
    """Sum a few floats over ranks (loss logging); identity in a single process."""
    if not ctx.distributed:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=ctx.device if ctx.device.type == "cuda" else "cpu")
    dist.all_reduce(t)
    return t.tolist()


def broadcast_params(module: torch.nn.Module, ctx: DistContext) -> None:
    """Copy rank 0's parameters and buffers to every rank (guards against drift at start)."""
    if not ctx.distributed:
        return
    for tensor in list(module.parameters()) + list(module.buffers()):
        dist.broadcast(tensor.data, src=0)


def barrier(ctx: DistContext) -> None:
    """Wait for all ranks (no-op in a single process)."""
    if ctx.distributed:
        dist.barrier()


def strip_option(args: list[str], name: str) -> list[str]:
    """``args`` without ``name VALUE`` / ``name=VALUE`` (to re-launch a command without it)."""
    out, skip = [], False
    for arg in args:
        if skip:
            skip = False
        elif arg == name:
            skip = True
        elif not arg.startswith(f"{name}="):
            out.append(arg)
    return out


def launch_torchrun(nproc: int, args: list[str]) -> int:
    """Run ``python -m supersam.stages.train ARGS`` under ``torch.distributed.run --standalone``.

    Args:
        nproc: processes on this machine (one per GPU; any number on CPU with gloo).
        args: the ``supersam train`` options, without ``--nproc``.

    Returns:
        torchrun's exit code (non-zero when any rank failed).
    """
    import subprocess
    import sys

    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        "supersam.stages.train",
        *args,
    ]
    log.info("launching %d processes: %s", nproc, " ".join(cmd))
    return subprocess.call(cmd)
