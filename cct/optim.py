"""SGD with momentum and weight decay, the paper's optimizer, without ``torch.optim``.

Written by hand for one measured reason: constructing or stepping any ``torch.optim`` optimizer
imports ``torch._dynamo`` (its methods are wrapped by ``torch._disable_dynamo``), about 2.5 s of
every process on the CPU build this suite runs on, and a workflow of short CPU trainings starts
dozens of processes. The update is torch's own, op for op (``torch.optim.SGD`` with dampening 0,
no Nesterov), on torch's multi-tensor kernels: a test checks the parameters equal
``torch.optim.SGD``'s bit for bit, and ``state_dict`` has its format, so either loads the other's.
"""

from __future__ import annotations

from typing import Any, Iterable

import torch


class SGD:
    """``torch.optim.SGD(groups, lr, momentum, weight_decay)``: per parameter p with gradient g,
    ``g += weight_decay * p``; ``buf = g`` at the first step, else ``buf = momentum * buf + g``;
    ``p -= lr * buf``. ``param_groups`` (each with its own ``lr``) are what schedules change."""

    def __init__(self, params: Iterable[dict[str, Any]], lr: float = 1e-3, momentum: float = 0.0,
                 weight_decay: float = 0.0) -> None:
        defaults = {"lr": lr, "momentum": momentum, "weight_decay": weight_decay}
        self.param_groups = [{**defaults, **group, "params": list(group["params"])} for group in params]
        self.state: dict[torch.Tensor, dict[str, torch.Tensor]] = {}

    def zero_grad(self, set_to_none: bool = True) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if set_to_none:
                    p.grad = None
                else:
                    p.grad.detach_().zero_()

    @torch.no_grad()
    def step(self) -> None:
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            if group["weight_decay"]:
                grads = torch._foreach_add(grads, params, alpha=group["weight_decay"])
            if group["momentum"]:
                bufs = [self.state.get(p, {}).get("momentum_buffer") for p in params]
                fresh = [i for i, b in enumerate(bufs) if b is None]
                old = [i for i, b in enumerate(bufs) if b is not None]
                if old:
                    kept = [bufs[i] for i in old]
                    torch._foreach_mul_(kept, group["momentum"])
                    torch._foreach_add_(kept, [grads[i] for i in old])
                for i in fresh:
                    bufs[i] = grads[i].detach().clone()
                    self.state.setdefault(params[i], {})["momentum_buffer"] = bufs[i]
                grads = bufs
            torch._foreach_add_(params, grads, alpha=-group["lr"])

    # torch.optim's format: parameters by their index over the groups, in order
    def state_dict(self) -> dict[str, Any]:
        index, groups, state = 0, [], {}
        for group in self.param_groups:
            ids = list(range(index, index + len(group["params"])))
            for i, p in zip(ids, group["params"], strict=True):
                if p in self.state:
                    state[i] = dict(self.state[p])
            groups.append({**{k: v for k, v in group.items() if k != "params"}, "dampening": 0, "nesterov": False,
                           "maximize": False, "params": ids})
            index += len(ids)
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        groups = state_dict["param_groups"]
        if len(groups) != len(self.param_groups) or any(
                len(g["params"]) != len(mine["params"]) for g, mine in zip(groups, self.param_groups, strict=True)):
            raise ValueError("loaded state dict has a different number of parameter groups or parameters")
        by_index = [p for group in self.param_groups for p in group["params"]]
        self.state = {}
        for group, saved in zip(self.param_groups, groups, strict=True):
            for key in ("lr", "momentum", "weight_decay"):
                group[key] = saved[key]
        for i, entry in state_dict["state"].items():
            p = by_index[int(i)]
            self.state[p] = {k: v.to(device=p.device, dtype=p.dtype) if torch.is_tensor(v) else v
                             for k, v in entry.items()}
