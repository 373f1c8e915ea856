"""Several domains in one model: per-domain decoder sets and class counts, balanced per-domain
batches, joint training (per-domain terms and scores, determinism, resume) and the CLI's --domain."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cct.config import ConfigError, ModelConfig, from_dict
from cct.model.cct import CCT

from .conftest import TINY, run_cct

JOINT = TINY + [
    "data.n_labeled=10", "data.name=day",
    "extra_domains=[{dataset: embedded, domain: b, n_labeled: 12, crop_size: 32, name: night}]",
    "train.iterations=4", "train.eval_interval=2", "train.checkpoint_interval=2",
]


def test_domain_names_defaults_and_uniqueness():
    config = from_dict({"extra_domains": [{"domain": "b"}]})
    assert config.domain_names() == ["main", "embedded_b"]
    assert [d.domain for d in config.domains] == ["a", "b"]
    with pytest.raises(ConfigError, match=r"extra_domains\[0\].name: 'x' is already the name of another domain"):
        from_dict({"data": {"name": "x"}, "extra_domains": [{"domain": "b", "name": "x"}]})
    with pytest.raises(ConfigError, match=r"unknown config key 'extra_domains\[0\].colour'"):
        from_dict({"extra_domains": [{"colour": "red"}]})
    with pytest.raises(ConfigError, match=r"extra_domains\[0\].dataset: 'mnist' is not one of"):
        from_dict({"extra_domains": [{"dataset": "mnist"}]})
    with pytest.raises(ConfigError, match="weak labels are implemented for a single domain"):
        from_dict({"extra_domains": [{"domain": "b"}], "weak": {"pseudo_labels": "p"}})


def test_per_domain_heads_have_their_own_classes_and_gradients():
    model = CCT(ModelConfig(width=8), {"street": 9, "indoor": 5}, {"street": [0], "indoor": [0, 1]})
    x = torch.randn(2, 3, 32, 32)
    assert model(x, "street").shape == (2, 9, 32, 32) and model(x, "indoor").shape == (2, 5, 32, 32)
    z = model.encoder(x)
    assert model.auxiliary(z, model.decode(z, "indoor"), "indoor").shape[:3] == (2, 30, 5)
    # a loss on one domain trains the shared encoder and that domain's decoders, never the other's
    model.zero_grad()
    model(x, "street").logsumexp(1).mean().backward()
    assert all(p.grad is None or not p.grad.any() for p in model.heads["indoor"].parameters())
    assert any(p.grad is not None and p.grad.any() for p in model.heads["street"].main.parameters())
    assert any(p.grad is not None and p.grad.any() for p in model.encoder.parameters())
    with pytest.raises(KeyError):
        model(x, "main")


def test_each_domain_keeps_its_own_batch_norm_statistics():
    from cct.model.cct import DomainBatchNorm

    model = CCT(ModelConfig(width=8), {"day": 9, "night": 9}, {"day": [0], "night": [0]})
    layers = [m for m in model.encoder.modules() if isinstance(m, DomainBatchNorm)]
    assert layers and not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.encoder.modules())
    bn = layers[0]
    model.train()
    model(torch.randn(4, 3, 32, 32) + 3.0, "day")  # a bright domain
    assert not torch.equal(bn.running_mean_day, torch.zeros_like(bn.running_mean_day))
    assert torch.equal(bn.running_mean_night, torch.zeros_like(bn.running_mean_night))
    assert int(bn.num_batches_tracked_day) == 1 and int(bn.num_batches_tracked_night) == 0
    # evaluation normalises each domain with its own statistics: same input, different outputs
    model.eval()
    x = torch.randn(2, 3, 32, 32)
    assert not torch.allclose(model.encoder(x), (model.use_domain("night"), model.encoder(x))[1])
    # affine parameters are shared, and a single-domain model keeps plain batch norm
    assert {n for n, _ in bn.named_parameters()} == {"weight", "bias"}
    single = CCT(ModelConfig(width=8), {"main": 9}, {"main": [0]})
    assert not any(isinstance(m, DomainBatchNorm) for m in single.modules())


def test_every_iteration_draws_from_every_domain_and_each_walks_its_own_images():
    from cct.train import domain_streams, load_domains

    config = from_dict(None, JOINT + ["train.iterations=12"])
    domains = load_domains(config)
    assert [(d.name, len(d.labeled), d.train.num_classes) for d in domains] == [("day", 10, 9), ("night", 12, 9)]
    assert set(domains[0].train.class_names) & set(domains[1].train.class_names) == {
        "background", "hstripes", "vstripes", "checker", "dots"}  # partially overlapping label spaces
    streams = domain_streams(config, domains, start=0)
    seen = [[], []]
    for _ in range(12):
        for k, (lab, unl) in enumerate(streams):
            x_l, y_l = next(lab)
            x_u, _ = next(unl)
            assert x_l.shape == (2, 3, 32, 32) and x_u.shape == (2, 3, 32, 32)
            seen[k].append(y_l)
    # each domain's labels are its own: night masks hold night class indices of its images
    night_classes = {int(c) for c in torch.cat(seen[1]).unique()} - {255}
    present = set(np.flatnonzero(domains[1].train.image_labels[domains[1].labeled].any(0)) + 1) | {0}
    assert night_classes <= present
    # resuming at iteration 5 gives the same batches as the uninterrupted streams
    again = domain_streams(config, domains, start=5)
    fresh = domain_streams(config, domains, start=0)
    for _ in range(5):
        for lab, unl in fresh:
            next(lab), next(unl)
    for (a_lab, _), (b_lab, _) in zip(again, fresh, strict=True):
        xa, ya = next(a_lab)
        xb, yb = next(b_lab)
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_domain_pools_are_drawn_evenly():
    """The sampler of each domain visits every labelled image once per pass, independently of the
    other domains: over k passes each image is drawn exactly k times."""
    from cct.data.loader import IterationBatchSampler
    from cct.train import domain_seed

    counts = []
    for k, pool in enumerate((list(range(10)), list(range(100, 112)))):
        sampler = IterationBatchSampler(pool, 2, domain_seed(0, k), "labeled", 0, len(pool) * 3 // 2)
        drawn = [index for batch in sampler for index, _ in batch]
        counts.append(np.unique(drawn, return_counts=True))
    assert counts[0][0].tolist() == list(range(10)) and (counts[0][1] == 3).all()
    assert counts[1][0].tolist() == list(range(100, 112)) and (counts[1][1] == 3).all()
    assert domain_seed(0, 0) == 0 and domain_seed(0, 1) != domain_seed(0, 2)


@pytest.fixture(scope="module")
def joint_run(tmp_path_factory):
    from cct.train import train

    out = tmp_path_factory.mktemp("joint")
    deterministic = torch.are_deterministic_algorithms_enabled()
    try:
        metrics = train(from_dict(None, JOINT), out)
    finally:
        torch.use_deterministic_algorithms(deterministic)
    return out, metrics


def test_joint_run_scores_each_domain_on_its_own_classes(joint_run):
    out, metrics = joint_run
    day, night = metrics["domains"]["day"], metrics["domains"]["night"]
    assert day["class_names"][1] == "solid" and night["class_names"][5] == "zigzag"
    assert (day["n_labeled"], night["n_labeled"]) == (10, 12) and night["n_unlabeled"] == 988
    assert metrics["miou"] == pytest.approx((day["miou"] + night["miou"]) / 2)
    assert len(metrics["confusion_matrix"]["night"]) == 9
    last = metrics["history"][-1]
    assert {"val_miou@day", "val_miou@night", "loss_sup@day", "loss_sup@night", "loss_unsup@night"} <= set(last)
    assert last["loss_sup"] == pytest.approx(last["loss_sup@day"] + last["loss_sup@night"], rel=1e-5)
    assert set(metrics["per_class_iou"]) >= {"day/solid", "night/zigzag"}
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert set(state["domains"]) == {"day", "night"}


def test_joint_run_is_deterministic_and_resumes(joint_run, tmp_path, monkeypatch):
    from cct import train as train_module
    from cct.train import Interrupted, train

    _, reference = joint_run
    calls = {"n": 0}
    real = train_module.distributed.any_rank

    def stop_at_third(flag, ctx):  # as if SIGTERM arrived during iteration 3
        calls["n"] += 1
        return real(flag, ctx) or calls["n"] == 3

    monkeypatch.setattr(train_module.distributed, "any_rank", stop_at_third)
    with pytest.raises(Interrupted, match="at iteration 3"):
        train(from_dict(None, JOINT), tmp_path)
    monkeypatch.setattr(train_module.distributed, "any_rank", real)
    resumed = train(from_dict(None, JOINT), tmp_path)
    assert resumed["domains"]["night"]["miou"] == reference["domains"]["night"]["miou"]
    assert resumed["miou"] == reference["miou"] and resumed["confusion_matrix"] == reference["confusion_matrix"]


def test_cli_evaluates_and_predicts_one_domain(joint_run, tmp_path):
    out, metrics = joint_run
    proc = run_cct("evaluate", "--checkpoint", str(out / "checkpoint.pt"), "--domain", "night",
                   "--out", str(tmp_path / "s.json"))
    assert proc.returncode == 0, proc.stderr
    scores = json.loads((tmp_path / "s.json").read_text())
    assert scores["domain"] == "night" and scores["miou"] == pytest.approx(metrics["domains"]["night"]["miou"])
    proc = run_cct("evaluate", "--checkpoint", str(out / "checkpoint.pt"), "--domain", "dusk")
    assert proc.returncode == 2 and "'dusk' is not a domain of this checkpoint" in proc.stderr


def test_joint_backbone_mean_halves_the_backbones_step_and_nothing_else(tmp_path):
    """``optim.joint_backbone=mean``: a two-domain run's first SGD step moves the backbone half as
    far as with ``sum`` (its gradient is the sum over the domains; the mean steps like one domain's)
    and every other parameter (PSP, each domain's decoders) exactly as far. No weight decay, so a
    first step is ``-lr * grad``; both runs draw the same batches and perturbations."""
    from cct.train import _model, load_domains, train

    base = JOINT + ["train.iterations=1", "train.eval_interval=1", "train.checkpoint_interval=1",
                    "optim.weight_decay=0.0"]
    config = from_dict(None, base)
    init = _model(config, load_domains(config), torch.device("cpu"))
    backbone = {name for name, _ in init.named_parameters() if name.startswith("encoder.backbone.")}
    start = {name: p.detach().clone() for name, p in init.named_parameters()}
    steps = {}
    for mode in ("sum", "mean"):
        train(from_dict(None, base + [f"optim.joint_backbone={mode}"]), tmp_path / mode)
        final = torch.load(tmp_path / mode / "checkpoint.pt", weights_only=True)["model"]
        steps[mode] = {name: final[name] - start[name] for name in start}
    assert backbone and len(backbone) < len(start)
    moved = [name for name in backbone if steps["sum"][name].abs().max() > 1e-4]
    assert len(moved) > len(backbone) // 2  # the step is not vacuous
    for name in start:  # atol: a step is the difference of two float32 weights, exact to about 1e-8
        expected = steps["sum"][name] / 2 if name in backbone else steps["sum"][name]
        torch.testing.assert_close(steps["mean"][name], expected, rtol=1e-3, atol=1e-7, msg=name)


def test_joint_backbone_rate_is_the_single_domain_rate_over_the_domains():
    from cct.config import OptimConfig
    from cct.train import backbone_lr

    assert backbone_lr(OptimConfig(lr=0.05, encoder_lr_factor=0.1), 3) == pytest.approx(0.005)
    assert backbone_lr(OptimConfig(lr=0.05, encoder_lr_factor=0.1, joint_backbone="mean"), 1) == pytest.approx(0.005)
    assert backbone_lr(OptimConfig(lr=0.05, encoder_lr_factor=0.1, joint_backbone="mean"), 2) == pytest.approx(0.0025)
    with pytest.raises(ConfigError, match="optim.joint_backbone"):
        from_dict(None, ["optim.joint_backbone=average"])
