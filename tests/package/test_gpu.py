"""The paper configuration (config/paper/voc.yaml: ResNet-50 OS 8 + PSP, pixelshuffle decoders, the 30
auxiliary decoders, crop 320, batch 10 + 10, bf16 autocast) trained for a few iterations on CUDA, on a
generated VOC-layout tree (tests/package/layouts.py) with random weights (``model.pretrained: false``,
nothing to download): the supervised loss falls and the peak GPU memory stays under the 40 GB the
workflow's resources assume for one training.

The GPU test is skipped where ``torch.cuda.is_available()`` is false; the same code path runs on CPU at a
tiny size in ``test_paper_smoke_code_path_on_cpu`` (slow: about 6 s on a 2-core machine)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from cct.config import from_dict
from cct.train import train

from .layouts import voc_tree

ROOT = Path(__file__).resolve().parents[2]
PAPER_VOC = ROOT / "config" / "paper" / "voc.yaml"
GPU_ITERATIONS = 20
GPU_MEMORY_LIMIT_GB = 40

needs_cuda = pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="needs a CUDA device (torch.cuda.is_available() is false): the paper configuration at full size",
)


def _merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for key, value in update.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def paper_run_config(root: Path, **train_overrides) -> dict:
    """The cct config a label_fraction run of config/paper/voc.yaml gets (its ``cct`` section extended
    by ``datasets.voc.cct``), reading ``root``, with random weights."""
    paper = yaml.safe_load(PAPER_VOC.read_text())
    tree = _merge(paper["cct"], paper["datasets"]["voc"]["cct"])
    return _merge(tree, {"data": {"root": str(root)}, "model": {"pretrained": False}, "train": train_overrides})


def paper_smoke(tmp_path: Path, device: str, iterations: int, crop: int, batch: int, size: tuple[int, int],
                train_images: int, val_images: int, num_workers: int) -> tuple[dict, float | None]:
    """Train the paper configuration for ``iterations`` iterations (evaluating after each one, so
    metrics.json's history holds the supervised loss of every iteration) on a generated VOC tree of
    ``size`` images: ``train_images`` in train.txt (all labelled) and as many SBD-only (unlabelled).
    Returns the metrics and, on CUDA, the peak allocated GPU memory in GB."""
    voc_tree(tmp_path / "voc", train=train_images, extra=train_images, val=val_images, size=size)
    tree = paper_run_config(tmp_path / "voc", device=device, iterations=iterations, eval_interval=1,
                            checkpoint_interval=iterations, batch_size_labeled=batch,
                            batch_size_unlabeled=batch, progress=False)
    tree = _merge(tree, {"data": {"crop_size": crop, "n_labeled": train_images, "num_workers": num_workers}})
    config = from_dict(tree)
    # the paper's model and losses are what runs
    assert (config.model.encoder, config.model.output_stride, config.model.psp, config.model.decoder) == (
        "resnet50", 8, True, "pixelshuffle")
    assert sum(vars(config.model.aux).values()) == 30 and config.train.mode == "semi" and config.train.amp
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    metrics = train(config, tmp_path / "run")
    peak = torch.cuda.max_memory_allocated() / 1e9 if device == "cuda" else None
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["history"] == metrics["history"]
    assert metrics["n_labeled"] == train_images and metrics["n_unlabeled"] == train_images
    assert [e["iteration"] for e in metrics["history"]] == list(range(1, iterations + 1))
    return metrics, peak


@pytest.mark.gpu
@needs_cuda
def test_paper_configuration_trains_on_cuda_within_40_gb(tmp_path):
    metrics, peak = paper_smoke(tmp_path, "cuda", GPU_ITERATIONS, crop=320, batch=10, size=(336, 448),
                                train_images=20, val_images=4, num_workers=4)
    assert metrics["device"].startswith("cuda")
    losses = [e["loss_sup"] for e in metrics["history"]]
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < first, f"supervised loss did not fall over {GPU_ITERATIONS} iterations: {losses}"
    assert all(e["loss_unsup"] == e["loss_unsup"] for e in metrics["history"])  # finite, not NaN
    assert peak < GPU_MEMORY_LIMIT_GB, f"peak GPU memory {peak:.1f} GB"
    print(f"peak GPU memory {peak:.1f} GB, loss_sup {first:.3f} -> {last:.3f}, {metrics['wall_time_s']:.0f} s")


@pytest.mark.slow
def test_paper_smoke_code_path_on_cpu(tmp_path):
    """paper_smoke as the GPU test runs it, on CPU at crop 64, batch 2 + 2, 2 iterations."""
    metrics, peak = paper_smoke(tmp_path, "cpu", 2, crop=64, batch=2, size=(72, 96),
                                train_images=4, val_images=2, num_workers=0)
    assert peak is None and metrics["device"] == "cpu"
    assert all(set(e) >= {"loss_sup", "loss_unsup", "val_miou"} for e in metrics["history"])
