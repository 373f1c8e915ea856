"""cct.optim.SGD is torch.optim.SGD's update bit for bit, with its state_dict format, and imports
no torch._dynamo."""

from __future__ import annotations

import copy
import subprocess
import sys

import torch

from cct.optim import SGD


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Conv2d(4, 2, 1))


def _groups(model, ours: bool):
    first, rest = list(model[0].parameters()), [p for m in model[1:] for p in m.parameters()]
    return [{"params": first, "lr": 0.01}, {"params": rest, "lr": 0.1}]


def _train(model, optimizer, steps: int, start: int = 0) -> None:
    for i in range(start, start + steps):
        torch.manual_seed(100 + i)
        x = torch.randn(2, 3, 6, 6)
        loss = model(x).square().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if i == 1:  # a parameter without a gradient this step is left alone
            model[2].bias.grad = None
        optimizer.step()
        for group, lr in zip(optimizer.param_groups, (0.01 * 0.9**i, 0.1 * 0.9**i), strict=True):
            group["lr"] = lr  # a schedule changes the groups' rates


def test_updates_equal_torch_sgd_bit_for_bit():
    a, b = _model(), _model()
    ours = SGD(_groups(a, True), lr=0.5, momentum=0.9, weight_decay=1e-4)
    theirs = torch.optim.SGD(_groups(b, False), lr=0.5, momentum=0.9, weight_decay=1e-4)
    _train(a, ours, 5)
    _train(b, theirs, 5)
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q)


def test_state_dicts_load_across_the_two_and_resume_identically():
    a, b = _model(), _model()
    ours = SGD(_groups(a, True), lr=0.5, momentum=0.9, weight_decay=1e-4)
    _train(a, ours, 3)
    b.load_state_dict(a.state_dict())
    theirs = torch.optim.SGD(_groups(b, False), lr=0.5, momentum=0.9, weight_decay=1e-4)
    theirs.load_state_dict(copy.deepcopy(ours.state_dict()))  # ours -> torch
    again = _model()
    again.load_state_dict(a.state_dict())
    resumed = SGD(_groups(again, True), lr=0.5, momentum=0.9, weight_decay=1e-4)
    resumed.load_state_dict(copy.deepcopy(theirs.state_dict()))  # torch -> ours
    _train(a, ours, 2, start=3)
    _train(b, theirs, 2, start=3)
    _train(again, resumed, 2, start=3)
    for p, q, r in zip(a.parameters(), b.parameters(), again.parameters(), strict=True):
        assert torch.equal(p, q) and torch.equal(p, r)


def test_no_dynamo_import():
    code = ("import sys, torch; from cct.optim import SGD; m = torch.nn.Linear(2, 2); "
            "o = SGD([{'params': m.parameters()}], lr=0.1, momentum=0.9, weight_decay=1e-4); "
            "m(torch.ones(1, 2)).sum().backward(); o.step(); o.zero_grad(); o.state_dict(); "
            "assert 'torch._dynamo' not in sys.modules")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
