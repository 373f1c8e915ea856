"""Several GPUs in one training: ``torchrun --nproc_per_node N -m cct train ...``.

One process per GPU (DistributedDataParallel), batch norm synchronised across the processes, and
each process given its contiguous share of the single-process batch: with N processes and batch
sizes B (labelled) and B_u (unlabelled), process r trains on slots [r*B/N, (r+1)*B/N) of exactly the
batch a single process would draw at that iteration (same images, same augmentation seeds). Batch
sizes are the global ones of the config and must be divisible by N. Only rank 0 evaluates and writes
(metrics, checkpoints, TensorBoard, resume state); every rank resumes from the same state file.

The pieces the training loop calls::

    ctx = distributed.setup("auto")            # reads torchrun's RANK/WORLD_SIZE/LOCAL_RANK; a no-op without them
    step = distributed.wrap(model, ctx)        # SyncBN + DDP when ctx.world_size > 1; a plain call otherwise
    loss, terms = step(compute, x_l, y_l, x_u) # compute(model, ...) runs inside DDP's forward
    loader = distributed.shard_loader(loader, ctx)
    stop = distributed.any_rank(stop_flag, ctx)
    distributed.cleanup(ctx)

Why a step function runs inside the wrapper's forward: a CCT step uses the model through several
calls (``model(x_l)``, ``model.encoder``, ``model.decode``, ``model.auxiliary``). DDP synchronises
gradients for what one ``forward`` of the wrapped module produced; calls that bypass it (methods of
``ddp.module``) break its bookkeeping as soon as a parameter goes unused (supervised mode with
auxiliary decoders built, a domain without a batch). So the wrapped module is ``_Call``, whose
forward is ``fn(model, *args)``: the whole step is one DDP forward.

Batch norm across processes: on CUDA, torch's ``nn.SyncBatchNorm``. torch (checked with 2.14)
refuses CPU tensors in ``SyncBatchNorm.forward`` ("SyncBatchNorm expected input tensor to be on GPU
or XPU ..."), so on CPU (gloo; the tests) ``GlooSyncBatchNorm`` below does the same computation with
differentiable all-reduces of the per-channel sums. Both give one process's batch norm of the
combined batch: same outputs, gradients and running statistics.
"""

from __future__ import annotations

import datetime
import os
import time
import warnings
from dataclasses import dataclass
from typing import Callable

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.utils.data import DataLoader, Sampler


@dataclass(frozen=True)
class Context:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched() -> bool:
    """True in a process started by torchrun (or any launcher setting WORLD_SIZE > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def setup(device: str = "auto", timeout_s: float = 1800) -> Context:
    """The process's rank, world size, local rank and device, from torchrun's environment
    (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT); initialises the process group: NCCL
    for CUDA tensors and gloo for CPU ones on a GPU, gloo alone on CPU. Without torchrun (WORLD_SIZE
    unset or 1): rank 0 of 1 on ``device``, nothing initialised.

    ``device``: "auto" (CUDA if available), "cuda" or "cpu", as train.device. Each rank uses GPU
    ``LOCAL_RANK`` (torchrun in a SLURM job with --gpus=N sees GPUs 0..N-1)."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if not launched():
        return Context(device=torch.device(device))
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    if device == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise RuntimeError(f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} CUDA devices visible")
        torch.cuda.set_device(local_rank)
        dev, backend = torch.device("cuda", local_rank), "cpu:gloo,cuda:nccl"
    else:
        dev, backend = torch.device("cpu"), "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend, rank=rank, world_size=world,
                                timeout=datetime.timedelta(seconds=timeout_s))
    return Context(rank, world, local_rank, dev)


def cleanup(ctx: Context | None = None) -> None:
    """Destroys the process group (if one was initialised), after a last collective that every rank
    joins (a barrier: no rank tears the group down while another still talks to it) and once gloo
    has let go of every tensor of this module's collectives (see ``_released``): the process may
    exit right after. Every rank must call it, at the same point."""
    if dist.is_available() and dist.is_initialized():
        if dist.get_world_size() > 1:
            _max_over_ranks(False)
        for tensor in _collective_tensors:
            _released(tensor)
        _collective_tensors.clear()
        dist.destroy_process_group()


def is_main(ctx: Context | None = None) -> bool:
    """Rank 0 (or no distributed run): the process that evaluates and writes files."""
    if ctx is not None:
        return ctx.is_main
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def barrier(ctx: Context) -> None:
    if ctx.distributed:
        dist.barrier()


def any_rank(flag: bool, ctx: Context) -> bool:
    """True on every rank if ``flag`` is true on any (e.g. a SIGTERM seen by one process), so that
    all ranks stop at the same iteration. A CPU tensor: no CUDA synchronisation."""
    if not ctx.distributed:
        return bool(flag)
    return _max_over_ranks(flag)


def _max_over_ranks(flag: bool) -> bool:
    t = torch.tensor([int(bool(flag))], dtype=torch.int32)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    _keep(t)
    return bool(t.item())


# Tensors of this module's collectives that gloo's worker may still hold (see ``_released``): kept
# here, not waited for, so that a training iteration's collective costs no wait (2 ranks, per call:
# 240-300 us bare, 420 with a wait, 330 kept here); ``cleanup`` waits for them once, before the
# process exits.
_collective_tensors: list[torch.Tensor] = []


def _held_elsewhere(tensor: torch.Tensor) -> bool:
    count = getattr(tensor, "_use_count", None)
    return count is not None and count() > 1


def _keep(tensor: torch.Tensor) -> None:
    """Holds ``tensor`` until ``cleanup``, dropping (on this thread) the held ones gloo has let go of;
    at most the last 64, in case ``_use_count`` never falls to one (a torch that counts otherwise)."""
    _collective_tensors[:] = ([t for t in _collective_tensors if _held_elsewhere(t)] + [tensor])[-64:]


def _released(tensor: torch.Tensor, timeout_s: float = 5.0) -> torch.Tensor:
    """``tensor`` once gloo's worker thread no longer holds it (waits at most ``timeout_s``).

    Why: ``dist.all_reduce`` returns when the work is complete, but the worker thread drops its own
    reference to the work's tensors a moment later (measured: still held after the return in 20-30%
    of 2000 calls, 2 ranks). If Python has dropped its reference first, the worker frees the
    tensor's Python object itself and must take the GIL to do so; when that happens while the
    process exits (a rank whose last act is a collective), Python ends the thread in the middle of a
    C++ destructor and the process aborts ("terminate called without an active exception", exit
    code -6). ``destroy_process_group`` does not prevent it: it joins the workers only once nothing
    holds the group, and DistributedDataParallel does until the interpreter ends. Keeping the
    tensor until the worker has let go means the last reference is dropped on the calling thread.
    ``Tensor._use_count`` is torch's private count of references to the tensor; without it
    (another torch) there is nothing to wait for."""
    global _wait_for_release
    if not _wait_for_release:
        return tensor
    deadline = time.monotonic() + timeout_s
    while _held_elsewhere(tensor):
        if time.monotonic() > deadline:  # a torch whose count means something else: stop waiting
            _wait_for_release = False
            warnings.warn(f"gloo still holds an all-reduced tensor after {timeout_s} s; no longer waiting for it",
                          RuntimeWarning, stacklevel=2)
            break
        time.sleep(1e-4)
    return tensor


_wait_for_release = True


def broadcast_object(obj, ctx: Context, src: int = 0):
    """``obj`` of rank ``src`` on every rank (e.g. a value only rank 0 computed)."""
    if not ctx.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


# --- the data: each rank its contiguous share of the single-process batch ------------------------

def shard(batch: list, rank: int, world_size: int) -> list:
    """Slots [rank*b, (rank+1)*b) of ``batch``, b = len(batch) / world_size (must divide)."""
    if len(batch) % world_size:
        raise ValueError(f"batch size {len(batch)} is not divisible by the {world_size} processes")
    b = len(batch) // world_size
    return batch[rank * b:(rank + 1) * b]


class ShardedBatchSampler(Sampler):
    """Wraps a batch sampler (cct.data.loader.IterationBatchSampler): yields each rank's share of
    every batch it yields, in the same order."""

    def __init__(self, batch_sampler, rank: int, world_size: int) -> None:
        self.batch_sampler, self.rank, self.world_size = batch_sampler, rank, world_size

    def __len__(self) -> int:
        return len(self.batch_sampler)

    def __iter__(self):
        for batch in self.batch_sampler:
            yield shard(batch, self.rank, self.world_size)


def shard_loader(loader: DataLoader, ctx: Context) -> DataLoader:
    """The DataLoader of ``cct.data.loader.batch_stream`` with each batch cut to this rank's share
    (the same loader when not distributed)."""
    if not ctx.distributed:
        return loader
    sampler = ShardedBatchSampler(loader.batch_sampler, ctx.rank, ctx.world_size)
    return DataLoader(loader.dataset, batch_sampler=sampler, collate_fn=loader.collate_fn,
                      num_workers=loader.num_workers, pin_memory=loader.pin_memory, persistent_workers=False)


# --- the model ----------------------------------------------------------------------------------

class _Call(nn.Module):
    """``forward(fn, *args, **kwargs)`` = ``fn(model, *args, **kwargs)``: a whole training step as the
    forward of one module, so that DistributedDataParallel sees every use of the model."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, fn: Callable, *args, **kwargs):
        return fn(self.model, *args, **kwargs)


def wrap(model: nn.Module, ctx: Context, find_unused_parameters: bool = False) -> nn.Module:
    """A callable ``step(fn, *args)`` -> ``fn(model, *args)``. Distributed: batch norm layers of
    ``model`` become synchronised ones (in place; same parameters and buffers, same state_dict keys,
    so checkpoints stay interchangeable), and the call runs inside DistributedDataParallel, which
    averages the gradients over the ranks during ``backward``. Keep using ``model`` itself for
    ``state_dict``, evaluation and the optimizer's parameters.

    ``find_unused_parameters``: set it when a step may leave parameters without a gradient (e.g.
    supervised mode of a model built with auxiliary decoders, several domains)."""
    if not ctx.distributed:
        return _Call(model)
    convert_sync_batchnorm(model, ctx.device)
    wrapper = _Call(model)
    if ctx.device.type == "cuda":
        return nn.parallel.DistributedDataParallel(wrapper, device_ids=[ctx.device.index],
                                                   output_device=ctx.device.index,
                                                   find_unused_parameters=find_unused_parameters)
    return nn.parallel.DistributedDataParallel(wrapper, find_unused_parameters=find_unused_parameters)


def unwrap(step: nn.Module) -> nn.Module:
    """The model inside what ``wrap`` returned."""
    while isinstance(step, (nn.parallel.DistributedDataParallel, _Call)):
        step = step.module if isinstance(step, nn.parallel.DistributedDataParallel) else step.model
    return step


def convert_sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """Replaces every BatchNorm1d/2d/3d child of ``model`` by torch's SyncBatchNorm (CUDA) or
    GlooSyncBatchNorm (CPU), in place; the same Parameter and buffer objects are kept."""
    cls = nn.SyncBatchNorm if device.type != "cpu" else GlooSyncBatchNorm
    for name, child in model.named_children():
        synced = isinstance(child, (nn.SyncBatchNorm, GlooSyncBatchNorm))
        if isinstance(child, nn.modules.batchnorm._BatchNorm) and not synced:
            new = cls(child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats)
            if child.affine:
                new.weight, new.bias = child.weight, child.bias
            if child.track_running_stats:
                new.running_mean, new.running_var = child.running_mean, child.running_var
                new.num_batches_tracked = child.num_batches_tracked
            new.train(child.training)
            setattr(model, name, new)
        else:
            convert_sync_batchnorm(child, device)
    return model


class GlooSyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Batch norm over the union of the ranks' batches, for CPU tensors (torch's SyncBatchNorm
    accepts CUDA/XPU/HPU only). Training mode in an initialised process group: per-channel mean and
    variance from all-reduced sums (two passes: sum and count, then squared deviations), through an
    all-reduce whose backward all-reduces the gradients, so that the result equals batch norm of the
    combined batch, gradients included. Otherwise (eval,
    no process group): ordinary batch norm. Inputs (N, C, ...)."""

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(input)
        synced = self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        if not synced:
            return super().forward(input)
        all_reduce = _AllReduceSum.apply
        dims = [0] + list(range(2, input.dim()))
        shape = [1, -1] + [1] * (input.dim() - 2)
        count = torch.tensor([input.numel() // input.shape[1]], dtype=input.dtype, device=input.device)
        sums = all_reduce(torch.cat([input.sum(dims), count]))
        n = sums[-1]
        mean = sums[:-1] / n
        centred = input - mean.view(shape)
        var = all_reduce(centred.pow(2).sum(dims)) / n
        out = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = (1.0 / float(self.num_batches_tracked)) if self.momentum is None else self.momentum
                unbiased = var.detach() * (n / (n - 1)) if float(n) > 1 else var.detach()
                self.running_mean.mul_(1 - momentum).add_(mean.detach(), alpha=momentum)
                self.running_var.mul_(1 - momentum).add_(unbiased, alpha=momentum)
        return out


class _AllReduceSum(torch.autograd.Function):
    """Sum over the ranks; the gradient of every rank's input is the sum of the ranks' gradients of
    the output (each rank's loss depends on every rank's input through the sum)."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        out = tensor.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad


class NullWriter:
    """Stands in for a TensorBoard SummaryWriter on ranks other than 0 (they write nothing)."""

    def add_scalar(self, *args, **kwargs) -> None:
        pass

    def close(self) -> None:
        pass
