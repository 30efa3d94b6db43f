"""Data-parallel runs through torch.distributed: one process per GPU (NCCL) or per CPU worker (gloo).

A run is distributed when it is started with ``WORLD_SIZE`` > 1 in its environment: by ``torchrun``,
or by SLURM through submitit (``launcher=slurm launcher.tasks_per_node=N``, see harness/launch.py).
Everything here is a no-op in a single process, so the run loop and the methods call it unconditionally.

The rules the run loop keeps:
- every rank trains on its own shard of the training set (``ShardSampler``); gradients are averaged
  (``DistributedDataParallel`` in ``harness.core.train.train``, ``average_gradients`` in a method's own loop);
- statistics a method accumulates over data are summed across ranks (``all_reduce_sum``), so every rank
  ranks channels on the whole data; the pruned model is then taken from rank 0 and checked identical
  on every rank (``state_checksum``);
- evaluation runs on the full validation/test split on every rank, so every rank sees the same numbers;
- rank 0 owns every side effect: MLflow, checkpoints, the baseline cache, artifacts, printed output.
"""

from __future__ import annotations

import atexit
import hashlib
import os
import time
from collections.abc import Iterable
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.utils.data import DistributedSampler


def env_world_size() -> int:
    """The world size the environment asks for (torchrun and submitit export WORLD_SIZE)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def is_main() -> bool:
    return rank() == 0


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0") or 0)


def setup(device: torch.device, timeout_min: float = 30.0) -> torch.device:
    """Join the process group the environment describes (NCCL on CUDA, gloo on CPU) and return this
    rank's device (``cuda:<LOCAL_RANK>`` on GPUs). A single process returns ``device`` unchanged."""
    if env_world_size() <= 1 or is_distributed():
        if is_distributed() and device.type == "cuda":
            return torch.device("cuda", local_rank())
        return device
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        device = torch.device("cuda", local_rank())
        torch.cuda.set_device(device)
    try:
        dist.init_process_group(backend, timeout=timedelta(minutes=timeout_min))
    except (ValueError, RuntimeError) as e:
        from harness.core.errors import ConfigError

        detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(
            f"WORLD_SIZE={env_world_size()} asks for a distributed run, but its process group did not "
            f"start ({detail}); start it with torchrun, or with launcher=slurm "
            "launcher.tasks_per_node=N"
        ) from None
    atexit.register(_shutdown)
    return device


def _shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def describe() -> dict[str, Any]:
    """What to record about the process group (MLflow tags, the JSON summary)."""
    if not is_distributed():
        return {"world_size": 1}
    return {"world_size": world_size(), "backend": dist.get_backend()}


# --- data ----------------------------------------------------------------------------------------------
class ShardSampler(DistributedSampler):
    """This rank's shard of a shuffled dataset. Each pass draws its shuffle seed from ``generator`` (the
    loader's, seeded identically on every rank), as torch's RandomSampler does: re-seeding the generator
    per epoch, or restoring it from a checkpoint, then gives the same shards as an uninterrupted run."""

    def __init__(self, dataset, generator: torch.Generator, shuffle: bool = True):
        super().__init__(dataset, num_replicas=world_size(), rank=rank(), shuffle=shuffle, seed=0)
        self.generator = generator

    def __iter__(self):
        if self.shuffle:
            self.epoch = int(torch.randint(0, 2**62, (1,), generator=self.generator))
        return super().__iter__()


# --- collectives -----------------------------------------------------------------------------------------
def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` in DistributedDataParallel (gradients averaged during backward), or itself alone."""
    if not is_distributed() or not any(p.requires_grad for p in model.parameters()):
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    return DDP(model, device_ids=[device.index] if device.type == "cuda" else None)


def average_gradients(params: Iterable[nn.Parameter]) -> None:
    """Average the gradients of ``params`` over the ranks: what DDP does, for a method's own training loop
    (GBN's ticks, SCOP's β, the distillation of GAL and AIP) and for parameters outside the module."""
    if not is_distributed():
        return
    n = world_size()
    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad.div_(n)


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over the ranks, in place (statistics accumulated over each rank's shard)."""
    if not is_distributed():
        return tensor
    if tensor.device.type == "cpu" and dist.get_backend() == "nccl":  # NCCL reduces GPU tensors only
        staged = tensor.to(torch.device("cuda", local_rank()))
        dist.all_reduce(staged)
        return tensor.copy_(staged.cpu())
    dist.all_reduce(tensor)
    return tensor


def mean_scalar(value: float) -> float:
    """The mean of a float over the ranks (a batch's loss: every rank sees a NaN on any rank)."""
    if not is_distributed():
        return value
    return float(all_reduce_sum(torch.tensor([value], dtype=torch.float64)).item()) / world_size()


def broadcast(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (picklable objects: decisions, small states)."""
    if not is_distributed():
        return obj
    box = [obj if is_main() else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def broadcast_state(model: nn.Module) -> nn.Module:
    """Copy rank 0's parameters and buffers into ``model`` on every rank (same shapes on every rank)."""
    if is_distributed():
        with torch.no_grad():
            for t in model.state_dict().values():
                dist.broadcast(t, src=0)
    return model


def sync_buffers(model: nn.Module) -> nn.Module:
    """Rank 0's buffers (BatchNorm running statistics, which each rank updates from its own batches) on
    every rank, so that evaluation gives the same number everywhere."""
    if is_distributed():
        with torch.no_grad():
            for b in model.buffers():
                dist.broadcast(b, src=0)
    return model


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def state_checksum(model: nn.Module, parameters_only: bool = False) -> str:
    """A hash of the model's tensors (names, shapes and bytes), to check that ranks hold the same model."""
    h = hashlib.sha256()
    items = model.named_parameters() if parameters_only else model.state_dict().items()
    for name, t in items:
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def gather(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def all_ranks_stopping(timeout_s: float = 5.0) -> bool:
    """Whether every rank is stopping too (a cancelled or preempted job signals them all), rather than
    this one alone because another rank died first (torchrun then SIGTERMs the survivors). Each stopping
    rank leaves its mark in the process group's store, which outlives any one worker under torchrun;
    marks missing after ``timeout_s`` (or a store that went with rank 0) mean a peer is gone. Idempotent:
    the run loop may record its end more than once."""
    if not is_distributed():
        return True
    keys = [f"harness/stopping/{r}" for r in range(world_size())]
    try:
        store = dist.distributed_c10d._get_default_store()
        store.set_timeout(timedelta(seconds=timeout_s))
        store.set(keys[rank()], "1")
        deadline = time.monotonic() + timeout_s
        while not store.check(keys):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.1)
        return True
    except Exception:  # noqa: BLE001 - the store is unreachable: its host, a peer, is gone
        return False


def failure_reason(e: BaseException, peer_gone: bool = False) -> str:
    """What to record as a failed run's reason; a collective that broke, or a stop because a peer had
    (``peer_gone``, see ``all_ranks_stopping``), names the likely cause."""
    text = f"{type(e).__name__}: {e}"
    if peer_gone or (
        is_distributed()
        and isinstance(e, (dist.DistError, RuntimeError))
        and any(s in str(e) for s in ("Connection closed", "Connection reset", "Broken pipe", "Gloo", "NCCL"))
    ):
        return f"rank {rank()} of {world_size()}: another rank stopped (died, was killed or failed first): {text}"
    return text
