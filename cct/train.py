"""One CCT run, from a validated config to ``metrics.json``.

Each iteration takes a labelled batch (supervised CE on the main decoder) and, in ``semi`` mode, an
unlabelled batch: the main decoder's prediction on it is the target of every auxiliary decoder,
each fed its own perturbation of the encoder output; the consistency loss is weighted by w_u with
a sigmoid ramp-up. Labelled and unlabelled batches go through the encoder in separate passes (as the
official code), so batch-norm statistics of one never mix with the other. ``supervised`` mode
trains the same model for the same number of iterations without the unlabelled branch.

All randomness is a function of (seed, iteration): data order and augmentation through
:mod:`cct.data.loader`, and perturbations/dropout through a per-iteration reseed of torch's
generator. Resuming from a checkpoint at iteration i therefore reproduces the uninterrupted run.
"""

from __future__ import annotations

import logging
import platform
import signal
import time
from pathlib import Path

import numpy as np
import torch
import torchvision

import cct
from cct import losses
from cct.config import ConfigError, RunConfig, save_config
from cct.data.base import Source, load_source
from cct.data.loader import batch_stream
from cct.data.splits import make_split, read_list, validate_split
from cct.data.transforms import train_transform
from cct.evaluate import PROTOCOL, evaluate
from cct.io import atomic_torch_save, atomic_write_json
from cct.model.cct import CCT

log = logging.getLogger("cct.train")

# Keys that change how a run executes but not its numbers: a resume may differ in these.
_EXECUTION_KEYS = {("train", "threads"), ("train", "progress"), ("train", "device"), ("data", "num_workers")}


def versions() -> dict[str, str]:
    return {
        "cct": cct.__version__,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def pick_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device: 'cuda' was asked for but no CUDA device is available")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def iteration_seed(seed: int, iteration: int) -> int:
    return int(np.random.default_rng([seed, 0xCC7, iteration]).integers(2**62))


def resolve_split(config: RunConfig, source: Source) -> tuple[list[int], list[int]]:
    """Indices of the labelled and unlabelled training images (from lists, or a seeded nested split)."""
    data = config.data
    if data.labeled_list is not None:
        labeled = read_list(data.labeled_list, "data.labeled_list")
        unlabeled = read_list(data.unlabeled_list, "data.unlabeled_list")
        validate_split(labeled, unlabeled, source.ids, f"{data.labeled_list} / {data.unlabeled_list}")
    else:
        labeled, unlabeled = make_split(
            source.ids, data.n_labeled, data.split_seed, source.image_labels, source.labeled_first
        )
    return source.subset(labeled, "data.labeled_list"), source.subset(unlabeled, "data.unlabeled_list")


def build_model(config: RunConfig, source: Source) -> CCT:
    torch.manual_seed(config.train.seed)
    return CCT(config.model, {"main": source.num_classes}, {"main": source.background_classes})


def _numeric_config(config_dict: dict) -> dict:
    return {
        section: {k: v for k, v in values.items() if (section, k) not in _EXECUTION_KEYS}
        for section, values in config_dict.items()
    }


class _StopFlag:
    """Turns SIGTERM/SIGINT into a flag checked between iterations, so the state can be saved."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous = {}

    def __enter__(self) -> "_StopFlag":
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum, frame) -> None:
        self.signum = signum

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class Interrupted(RuntimeError):
    """Training stopped by a signal after saving its resume state."""


def train(config: RunConfig, out_dir: str | Path, resume_dir: str | Path | None = None) -> dict:
    """Train and evaluate one run; write ``config.yaml``, ``checkpoint.pt``, ``metrics.json`` and
    ``tb/`` under ``out_dir``. Resume state lives in ``resume_dir`` (default ``out_dir/resume``)."""
    from torch.utils.tensorboard import SummaryWriter
    from tqdm import tqdm

    out_dir = Path(out_dir)
    resume_path = Path(resume_dir or out_dir / "resume") / "state.pt"
    tc = config.train
    torch.set_num_threads(tc.threads)
    device = pick_device(tc.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    else:
        torch.use_deterministic_algorithms(True)

    train_source = load_source(config.data, "train")
    val_source = load_source(config.data, "val")
    labeled, unlabeled = resolve_split(config, train_source)
    semi = tc.mode == "semi"
    if semi and not unlabeled:
        raise ConfigError("train.mode: 'semi' needs unlabelled images, but the unlabelled list is empty")
    if semi and sum(getattr(config.model.aux, k) for k in vars(config.model.aux)) == 0:
        raise ConfigError("model.aux: 'semi' mode needs at least one auxiliary decoder (all counts are 0)")

    model = build_model(config, train_source).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    backbone, rest = model.parameter_groups()
    oc = config.optim
    base_lrs = [oc.lr * oc.encoder_lr_factor, oc.lr]
    optimizer = torch.optim.SGD(
        [{"params": backbone, "lr": base_lrs[0]}, {"params": rest, "lr": base_lrs[1]}],
        momentum=oc.momentum, weight_decay=oc.weight_decay,
    )
    config_dict = config.to_dict()
    start, history, elapsed = 0, [], 0.0
    if resume_path.is_file():
        state = torch.load(resume_path, map_location=device, weights_only=True)
        if _numeric_config(state["config"]) == _numeric_config(config_dict):
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            start, history, elapsed = state["iteration"], state["history"], state["elapsed"]
            log.info("resuming from %s at iteration %d", resume_path, start)
        else:
            log.warning("ignoring %s: it was written by a different config", resume_path)

    total = tc.iterations
    pin = device.type == "cuda"
    # without data.base_size the random rescale is relative to the images' long side
    transform = train_transform(config.data, max(train_source.load(0)[0].shape[:2]))
    lab = iter(batch_stream(train_source, labeled, transform, tc.batch_size_labeled, tc.seed, "labeled", start, total,
                            config.data.num_workers, pin))
    weak = config.weak.pseudo_labels is not None
    unl_source = train_source
    if weak:  # unlabelled images carry pseudo labels from their image-level labels (cct.weak)
        from cct.weak.pseudo import with_pseudo_labels

        unl_source = with_pseudo_labels(train_source, config.weak.pseudo_labels, unlabeled)
    unl = iter(batch_stream(unl_source, unlabeled, transform, tc.batch_size_unlabeled, tc.seed, "unlabeled", start,
                            total, config.data.num_workers, pin)) if semi else None
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=tc.amp and device.type == "cuda")
    writer = SummaryWriter(str(out_dir / "tb"), purge_step=start)
    lc = config.loss

    def save_state(iteration: int) -> None:
        atomic_torch_save(
            {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "iteration": iteration,
             "history": history, "elapsed": elapsed + time.perf_counter() - t0, "config": config_dict},
            resume_path,
        )

    model.train()
    t0 = time.perf_counter()
    running: dict[str, torch.Tensor | int] = {}
    result = None
    bar = tqdm(range(start, total), initial=start, total=total, disable=not tc.progress, mininterval=2.0,
               desc=f"{tc.mode} seed {tc.seed}")
    with _StopFlag() as stop:
        for i in bar:
            torch.manual_seed(iteration_seed(tc.seed, i))
            factor = (1 - i / total) ** oc.poly_power
            for group, lr in zip(optimizer.param_groups, base_lrs):
                group["lr"] = lr * factor
            x_l, y_l = (t.to(device, non_blocking=True) for t in next(lab))
            terms: dict[str, torch.Tensor] = {}
            with amp:
                logits_l = model(x_l)
                if lc.supervised == "abce":
                    th = losses.abce_threshold(i, total, train_source.num_classes, lc.abce_final_threshold, lc.abce_rampup)
                    terms["loss_sup"] = losses.annealed_bootstrapped_ce(logits_l.float(), y_l, th)
                else:
                    terms["loss_sup"] = losses.cross_entropy(logits_l.float(), y_l)
                loss = terms["loss_sup"]
                if semi:
                    x_u, y_w = (t.to(device, non_blocking=True) for t in next(unl))
                    z_u = model.encoder(x_u)
                    logits_u = model.decode(z_u)
                    aux = model.auxiliary(z_u, logits_u, native=True).float()
                    target = model.to_native(logits_u.float())
                    threshold = lc.confidence_threshold if lc.confidence_masking else None
                    terms["loss_unsup"] = losses.consistency_loss(aux, target, lc.consistency, threshold, lc.softmax_temp)
                    w_u = losses.unsupervised_weight(i, total, lc.unsupervised_w, lc.rampup)
                    loss = loss + w_u * terms["loss_unsup"]
                    if weak:  # CE of every aux decoder against the pseudo labels, ramped like w_u
                        y_native = model.to_native(y_w.unsqueeze(1))[:, 0]
                        terms["loss_weak"] = losses.weak_loss(aux, y_native)
                        w_w = losses.unsupervised_weight(i, total, config.weak.loss_w, lc.rampup)
                        loss = loss + w_w * terms["loss_weak"]
                    if lc.pairwise_w > 0:  # part of the optimised loss (official defect 2)
                        terms["loss_pairwise"] = losses.pairwise_loss(aux)
                        loss = loss + w_u * lc.pairwise_w * terms["loss_pairwise"]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

            # summed on the device and read every 10 iterations: no host sync in the other steps
            for k, v in terms.items():
                running[k] = running.get(k, 0.0) + v.detach()
            running["n"] = running.get("n", 0) + 1
            step = i + 1
            if step % 10 == 0 or step == total:
                means = {k: float(v) / running["n"] for k, v in running.items() if k != "n"}
                if not all(np.isfinite(list(means.values()))):
                    raise FloatingPointError(f"loss became {means} before iteration {step}; lower optim.lr")
                for k, v in means.items():
                    writer.add_scalar(f"train/{k}", v, step)
                writer.add_scalar("train/lr", optimizer.param_groups[1]["lr"], step)
                if semi:
                    writer.add_scalar("train/w_u", w_u, step)
                bar.set_postfix({k: f"{v:.3f}" for k, v in means.items()}, refresh=False)
                running = {}
            result = None
            if step % tc.eval_interval == 0 or step == total:
                result = evaluate(model, val_source, device)
                entry = {"iteration": step, "val_miou": result["miou"], "loss_sup": float(terms["loss_sup"].detach()),
                         "lr": optimizer.param_groups[1]["lr"]}
                if semi:
                    entry.update(loss_unsup=float(terms["loss_unsup"].detach()), w_u=w_u)
                if weak:
                    entry.update(loss_weak=float(terms["loss_weak"].detach()))
                history.append(entry)
                writer.add_scalar("val/miou", result["miou"], step)
                log.info("iteration %d: val mIoU %.2f", step, result["miou"])
            if stop.signum is not None or step % tc.checkpoint_interval == 0:
                save_state(step)
            if stop.signum is not None:
                writer.close()
                raise Interrupted(f"stopped by signal {stop.signum} at iteration {step}; state saved to {resume_path}")
    bar.close()
    writer.close()

    if result is None:  # resumed after the last iteration
        result = evaluate(model, val_source, device)
    best = max(history, key=lambda e: e["val_miou"]) if history else {"val_miou": result["miou"], "iteration": total}
    metrics = {
        "miou": result["miou"],
        "best_miou": best["val_miou"],
        "best_iteration": best["iteration"],
        "per_class_iou": result["per_class_iou"],
        "pixel_accuracy": result["pixel_accuracy"],
        "eval_protocol": PROTOCOL,
        "iterations": total,
        "mode": tc.mode,
        "seed": tc.seed,
        "split_seed": config.data.split_seed,
        "n_labeled": len(labeled),
        "n_unlabeled": len(unlabeled),
        "n_weak": len(unlabeled) if weak else 0,  # unlabelled images trained on their pseudo labels
        "dataset": config.data.dataset,
        "domain": config.data.domain,
        "class_names": list(train_source.class_names),
        "history": history,
        "confusion_matrix": result["confusion_matrix"],
        "wall_time_s": elapsed + time.perf_counter() - t0,
        "device": str(device),
        "config": config_dict,
        "versions": versions(),
    }
    save_config(config, out_dir / "config.yaml")
    atomic_torch_save(
        {"model": model.state_dict(), "config": config_dict, "class_names": list(train_source.class_names),
         "background_classes": train_source.background_classes},
        out_dir / "checkpoint.pt",
    )
    atomic_write_json(out_dir / "metrics.json", metrics)
    if start < total:
        save_state(total)
    return metrics
