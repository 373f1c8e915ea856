"""The training engine (cct/engine.py): set-up, per-step seeding, the poly schedule, the loss log's
NaN guard, the resume state."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
import torch

from cct import engine


def test_setup_on_the_cpu_is_deterministic_without_importing_the_compiler():
    code = ("import sys, torch; from cct import engine; engine.setup('cpu', 1); "
            "assert torch.are_deterministic_algorithms_enabled(); "
            "assert not torch.is_deterministic_algorithms_warn_only_enabled(); "
            "assert not torch.utils.deterministic.fill_uninitialized_memory, 'NaN fill of new tensors left on'; "
            "assert 'torch._inductor.config' not in sys.modules, 'imported torch._inductor (seconds per run)'; "
            "assert 'torchvision' not in sys.modules")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_seed_step_fixes_the_cpu_generator_and_leaves_no_lazy_accelerator_seeding():
    engine.seed_step(3, 7, torch.device("cpu"))
    a = torch.rand(5)
    engine.seed_step(3, 7, torch.device("cpu"))
    b = torch.rand(5)
    engine.seed_step(3, 8, torch.device("cpu"))
    c = torch.rand(5)
    assert torch.equal(a, b) and not torch.equal(a, c)
    # the same stream as torch.manual_seed of the iteration's seed (what the trainer did before)
    torch.manual_seed(engine.iteration_seed(3, 7))
    assert torch.equal(torch.rand(5), a)


def test_poly_schedule_scales_every_group_from_its_own_base_rate():
    params = [torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))]
    optimizer = torch.optim.SGD([{"params": [params[0]]}, {"params": [params[1]]}], lr=1.0)
    engine.set_poly_lr(optimizer, [0.1, 1.0], 50, 100, 0.9)
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.1 * 0.5**0.9, 0.5**0.9])
    engine.set_poly_lr(optimizer, [0.1, 1.0], 0, 100, 0.9)
    assert [g["lr"] for g in optimizer.param_groups] == [0.1, 1.0]


def test_loss_log_reads_means_at_its_interval_and_stops_a_diverged_run():
    log = engine.LossLog(every=2, total=5, hint="lower optim.lr")
    assert log.add({"loss": torch.tensor(1.0)}, 1) is None
    assert log.add({"loss": torch.tensor(3.0)}, 2) == {"loss": 2.0}
    assert log.add({"loss": torch.tensor(5.0)}, 3) is None
    assert log.add({"loss": torch.tensor(7.0)}, 4) == {"loss": 6.0}
    assert log.add({"loss": torch.tensor(9.0)}, 5) == {"loss": 9.0}  # the last step reads too
    log = engine.LossLog(every=2, total=4, hint="lower optim.lr")
    log.add({"loss": torch.tensor(float("nan"))}, 1)
    with pytest.raises(FloatingPointError, match=r"before iteration 2; lower optim\.lr"):
        log.add({"loss": torch.tensor(1.0)}, 2)


def test_run_cpu_time_counts_from_the_process_start_only_when_the_process_is_the_runs(tmp_path, monkeypatch):
    """``cct train`` from a shell counts its imports too (its job's wall time does); an in-process
    ``train`` call counts from its own start, not the caller's CPU before it."""
    def burn() -> None:
        t = time.process_time()
        while time.process_time() - t < 0.05:
            pass

    burn()
    monkeypatch.setattr(engine, "_cpu_origin", None)
    inside = engine.ResumeState(tmp_path / "a", {})
    burn()
    counted = inside.cpu_time()
    assert 0.05 <= counted < time.process_time() - 0.04
    monkeypatch.setattr(engine, "_cpu_origin", None)
    engine.own_process()
    owned = engine.ResumeState(tmp_path / "b", {})
    assert owned.cpu_time() == pytest.approx(time.process_time(), abs=0.01)
    assert owned.attempts(3)[-1]["cpu_s"] == pytest.approx(time.process_time(), abs=0.01)
    # a run resumed from a state written before attempts counted their CPU has no count of its own
    owned._attempts = [{"start_iteration": 0, "iteration": 2, "wall_s": 1.0}]
    assert owned.cpu_time() is None
    owned._attempts = [{"start_iteration": 0, "iteration": 2, "wall_s": 1.0, "cpu_s": 5.0}]
    assert owned.cpu_time() == pytest.approx(5.0 + time.process_time(), abs=0.01)


def test_resume_state_restores_a_run_of_the_same_config_only(tmp_path):
    from cct.config import ConfigError

    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.ones(1, 2)).sum().backward()
    optimizer.step()
    state = engine.ResumeState(tmp_path, {"train": {"seed": 0}})
    state.save(model, optimizer, 7, [{"iteration": 5}])
    state.release()
    fresh = torch.nn.Linear(2, 2)
    fresh_opt = torch.optim.SGD(fresh.parameters(), lr=0.1, momentum=0.9)
    same = engine.ResumeState(tmp_path, {"train": {"seed": 0}})
    assert same.load(fresh, fresh_opt, torch.device("cpu")) == (7, [{"iteration": 5}])
    same.release()
    assert torch.equal(fresh.weight, model.weight)
    other = torch.nn.Linear(2, 2)
    other_opt = torch.optim.SGD(other.parameters(), lr=0.1)
    with pytest.raises(ConfigError, match=r"train\.seed: 0 -> 1"):  # another config: refused, named
        engine.ResumeState(tmp_path, {"train": {"seed": 1}}).load(other, other_opt, torch.device("cpu"))
    restart = engine.ResumeState(tmp_path, {"train": {"seed": 1}}, stale="restart")
    assert restart.load(other, other_opt, torch.device("cpu")) == (0, [])  # or discarded on request
