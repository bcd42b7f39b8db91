"""Multi-process training on torch.distributed.

    torchrun --nproc_per_node 2 -m nnspec train examples/digits_cnn.yaml

torchrun sets RANK, LOCAL_RANK and WORLD_SIZE; `setup()` then joins the process group (gloo on CPU, nccl when
training on CUDA, one GPU per local rank). Every process builds the same model from the same seed, draws the
same epoch permutation and takes its contiguous part of each global batch (data.EpochBatches); gradients are
averaged across processes, so N processes with batch b follow the run of one process with batch N*b (exactly,
up to float summation order, for SGD without momentum).

- One objective (ordinary models): the model is wrapped in DistributedDataParallel.
- Several objectives (GANs): each step updates only some parameters and backpropagates one named loss, which
  DDP's reducer cannot follow (it expects gradients for every parameter that the forward reached). The model
  is then left unwrapped; its parameters are broadcast from rank 0 at the start, and after each backward the
  gradients of the step's parameters are averaged with one all_reduce (`average_gradients`). The arithmetic is
  DDP's.
- Only rank 0 writes logs, plots and checkpoints; every rank evaluates the (small) validation split itself, so
  all ranks take the same early-stopping decision without communicating. A non-finite loss on any rank stops
  every rank (the check is all-reduced).
- Resuming a distributed run restores rank 0's random state on every rank: the run continues correctly, and
  bit-identically when the model draws no random numbers (no dropout, no noise).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def requested() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def setup(device_pref: str = "auto") -> DistInfo:
    """Join the process group torchrun describes (nothing to do for a single process)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device_pref != "cpu" and torch.cuda.is_available()
    backend = "nccl" if use_cuda else "gloo"
    if use_cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return DistInfo(rank=rank, world=world, local_rank=local_rank, backend=backend)


def cleanup(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def device_for(info: DistInfo, pref: str) -> torch.device:
    if pref == "cpu" or (pref == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError("training.device is cuda but no CUDA device is available")
    return torch.device("cuda", info.local_rank if info.enabled else torch.cuda.current_device())


def wrap_ddp(model: torch.nn.Module, info: DistInfo, device: torch.device):
    from torch.nn.parallel import DistributedDataParallel
    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def broadcast_parameters(model: torch.nn.Module, info: DistInfo) -> None:
    if not info.enabled:
        return
    with torch.no_grad():
        for t in list(model.parameters()) + list(model.buffers()):
            dist.broadcast(t.data, src=0)


def average_gradients(params, info: DistInfo) -> None:
    """All-reduce (mean) the gradients of `params` in one flat buffer."""
    if not info.enabled:
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= info.world
    offset = 0
    for g in grads:
        n = g.numel()
        g.copy_(flat[offset:offset + n].view_as(g))
        offset += n


def any_true(flag: bool, info: DistInfo, device) -> bool:
    """True on every rank when `flag` is true on any rank."""
    if not info.enabled:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()
