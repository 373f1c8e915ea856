"""cct/distributed.py: several processes (gloo on CPU, 2 ranks) train like one process on the
combined batch. One SGD step of the CCT model (small encoder, batch norm synchronised, supervised
loss) with the batch split over 2 ranks gives the parameters and batch-norm statistics of one
process stepping on the whole batch; each rank's share of a data batch is its slice of the
single-process batch."""

from __future__ import annotations

import json
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn

from cct import distributed
from cct.config import PERTURBATIONS, AuxConfig, ModelConfig
from cct.data.loader import IterationBatchSampler
from cct.losses import cross_entropy
from cct.model.cct import CCT

BATCH, CLASSES, SIZE, LR = 4, 5, 32, 0.5


def small_model() -> CCT:
    torch.manual_seed(0)
    config = ModelConfig(encoder="small", width=8, output_stride=4, psp=False, decoder="bilinear",
                         aux=AuxConfig(**{name: 0 for name in PERTURBATIONS}))
    return CCT(config, {"main": CLASSES}, {"main": [0]})


def combined_batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(BATCH, 3, SIZE, SIZE, generator=g), torch.randint(0, CLASSES, (BATCH, SIZE, SIZE), generator=g)


def supervised(model: CCT, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return cross_entropy(model(x), y)


def one_step(model: CCT, step, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9)
    model.train()
    loss = step(supervised, x, y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _rank(rank: int, world: int, port: int, queue) -> None:
    import os

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    ctx = distributed.setup("cpu")
    try:
        model = small_model()
        step = distributed.wrap(model, ctx)
        n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
        n_sync = sum(isinstance(m, distributed.GlooSyncBatchNorm) for m in model.modules())
        x, y = combined_batch()
        mine = distributed.shard(list(range(BATCH)), ctx.rank, ctx.world_size)
        state = one_step(model, step, x[mine], y[mine])
        stop = distributed.any_rank(rank == 1, ctx)
        held = []  # references to an all-reduced tensor besides ours: at the return, after _released
        for _ in range(300):
            t = torch.ones(1)
            dist.all_reduce(t)
            held.append((t._use_count() - 1, distributed._released(t)._use_count() - 1))
        for _ in range(300):  # a training's per-iteration collective: kept, not waited for
            distributed.any_rank(False, ctx)
        kept = len(distributed._collective_tensors)
        distributed.cleanup(ctx)  # waits for them; the finally's call is then a no-op
        if ctx.is_main:
            state = {k: v.numpy() for k, v in state.items()}  # by value: this process exits
            queue.put({"state": state, "bn": n_bn, "sync": n_sync, "stop": stop, "ctx": (ctx.rank, ctx.world_size),
                       "held": held, "kept": kept, "kept_after_cleanup": len(distributed._collective_tensors)})
    finally:
        distributed.cleanup(ctx)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_gloo_ranks_step_like_one_process_on_the_combined_batch():
    torch.set_num_threads(1)
    model = small_model()
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    ctx = distributed.setup("cpu")  # no torchrun: one process, nothing initialised
    assert (ctx.rank, ctx.world_size, ctx.is_main, ctx.distributed) == (0, 1, True, False)
    single = one_step(model, distributed.wrap(model, ctx), *combined_batch())

    spawn = mp.get_context("spawn")
    queue = spawn.Queue()
    port = free_port()
    procs = [spawn.Process(target=_rank, args=(r, 2, port, queue)) for r in range(2)]
    for p in procs:
        p.start()
    try:
        result = queue.get(timeout=240)  # before join: rank 0 cannot exit until its result is read
        for p in procs:
            p.join(timeout=60)
        assert [p.exitcode for p in procs] == [0, 0]
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
    assert result["ctx"] == (0, 2)
    assert result["bn"] == 0 and result["sync"] > 0  # every batch norm synchronised
    assert result["stop"] is True  # rank 1's flag stops rank 0 too
    # gloo's worker may still hold a tensor when all_reduce returns (a quarter of the calls here);
    # after _released only the caller does, so the worker never frees a Python object at exit
    at_return = sum(before > 0 for before, _ in result["held"])
    assert [after for _, after in result["held"]] == [0] * 300, f"held at the return in {at_return} of 300"
    # any_rank keeps its tensors (those gloo let go of are dropped as it goes); cleanup empties the list
    assert 1 <= result["kept"] <= 64 and result["kept_after_cleanup"] == 0

    ddp = {k: torch.from_numpy(v) for k, v in result["state"].items()}
    assert ddp.keys() == single.keys()  # checkpoints interchangeable
    moved = 0
    for key, value in single.items():
        torch.testing.assert_close(ddp[key], value, atol=1e-5, rtol=1e-4, msg=key)
        moved += key.endswith("weight") and not torch.equal(value, small_model().state_dict()[key])
    assert moved > 5  # the step changed the weights (the comparison is not vacuous)


def test_release_wait_gives_up_once_and_for_all_on_a_tensor_held_elsewhere(monkeypatch):
    monkeypatch.setattr(distributed, "_wait_for_release", True)
    t = torch.ones(1, requires_grad=True)
    y = t * t  # the autograd graph holds t: its count stays above one
    assert t._use_count() > 1
    with pytest.warns(RuntimeWarning, match="no longer waiting"):
        assert distributed._released(t, timeout_s=0.05) is t
    assert distributed._wait_for_release is False  # later calls return at once, every iteration
    assert distributed._released(t, timeout_s=0.05) is t
    del y


def test_shard_splits_the_single_process_batch_into_contiguous_equal_parts():
    sampler = IterationBatchSampler(list(range(100, 137)), 6, seed=3, stream="labeled", start=5, stop=9)
    full = list(sampler)
    parts = [list(distributed.ShardedBatchSampler(sampler, r, 3)) for r in range(3)]
    assert len(parts[0]) == len(full) == 4
    for i, batch in enumerate(full):
        assert sum((p[i] for p in parts), []) == batch  # same images and augmentation seeds, in order
    with pytest.raises(ValueError, match="not divisible"):
        distributed.shard(list(range(5)), 0, 2)


def test_single_process_wrap_changes_nothing():
    model = small_model()
    step = distributed.wrap(model, distributed.Context())
    assert distributed.unwrap(step) is model
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert not any(isinstance(m, distributed.GlooSyncBatchNorm) for m in model.modules())


def test_sync_batchnorm_conversion_keeps_parameters_and_state_dict():
    model = small_model()
    before = {id(p) for p in model.parameters()}
    keys = set(model.state_dict())
    distributed.convert_sync_batchnorm(model, torch.device("cpu"))
    assert {id(p) for p in model.parameters()} == before  # the optimizer's parameters stay valid
    assert set(model.state_dict()) == keys
    assert not any(type(m) is nn.BatchNorm2d for m in model.modules())
    # outside a process group it is ordinary batch norm
    x = torch.randn(2, 3, 16, 16)
    reference = small_model()
    model.train(), reference.train()
    torch.testing.assert_close(model(x), reference(x))


@pytest.mark.slow
def test_cct_train_under_torchrun_matches_one_process(tmp_path):
    """`cct train` under torchrun with 2 CPU processes (gloo): the supervised run's weights equal a
    single process's on the same global batches (no PSP: its Dropout2d draws differ per shard);
    a semi run completes, and only rank 0 writes."""
    import subprocess
    import sys

    from .conftest import TINY, cct_env

    common = TINY + ["train.iterations=3", "train.eval_interval=3", "model.psp=false", "data.n_labeled=8"]
    sup = ["train.mode=supervised", "train.batch_size_labeled=4"]

    def run(nproc: int, out, extra: list[str]) -> subprocess.CompletedProcess:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
        cmd = (launcher if nproc > 1 else [sys.executable]) + ["-m", "cct", "train", "--out", str(out), "--set",
                                                               *common, *extra]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=cct_env())

    one = run(1, tmp_path / "one", sup)
    two = run(2, tmp_path / "two", sup)
    assert one.returncode == 0, one.stderr[-2000:]
    assert two.returncode == 0, two.stderr[-2000:]
    a = torch.load(tmp_path / "one" / "checkpoint.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "two" / "checkpoint.pt", weights_only=True)["model"]
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-5, msg=key)
    assert json.loads((tmp_path / "two" / "metrics.json").read_text())["world_size"] == 2
    semi = run(2, tmp_path / "semi", [])
    assert semi.returncode == 0, semi.stderr[-2000:]
    assert json.loads((tmp_path / "semi" / "metrics.json").read_text())["mode"] == "semi"
