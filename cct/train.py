"""One CCT run, from a validated config to ``metrics.json``.

Each iteration takes a labelled batch (supervised CE on the main decoder) and, in ``semi`` mode, an
unlabelled batch: the main decoder's prediction on it is the target of every auxiliary decoder,
each fed its own perturbation of the encoder output; the consistency loss is weighted by w_u with
a sigmoid ramp-up. Labelled and unlabelled batches go through the encoder in separate passes (as the
official code), so batch-norm statistics of one never mix with the other. ``supervised`` mode
trains the same model for the same number of iterations without the unlabelled branch.

With ``weak.pseudo_labels`` the unlabelled batch carries pseudo labels (from image-level labels,
:mod:`cct.weak`) and every auxiliary decoder also learns from them. With ``extra_domains`` each
iteration does all of this for every domain, with its own decoder set, and sums the losses.

All randomness is a function of (seed, iteration): data order and augmentation through
:mod:`cct.data.loader`, and perturbations/dropout through a per-iteration reseed of torch's
generator. Resuming from a checkpoint at iteration i therefore reproduces the uninterrupted run.
"""

from __future__ import annotations

import functools
import logging
import platform
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchvision

import cct
from cct import distributed, host, losses
from cct.config import ConfigError, DataConfig, RunConfig, save_config
from cct.data.base import Source, load_source
from cct.data.loader import batch_stream
from cct.data.splits import make_split, read_list, validate_split
from cct.data.transforms import train_transform
from cct.evaluate import PROTOCOL, evaluate
from cct.io import atomic_torch_save, atomic_write_json
from cct.model.cct import CCT

log = logging.getLogger("cct.train")

# Keys that change how a run executes but not its numbers: a resume may differ in these.
_EXECUTION_KEYS = {
    ("train", "threads"), ("train", "progress"), ("train", "device"), ("train", "compile"), ("data", "num_workers"),
}


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


@dataclass
class Domain:
    """One domain of a run: its decoder-set name, data config, sources and split (indices into
    ``train``). A single-domain run has one, named ``main`` unless ``data.name`` says otherwise."""

    name: str
    data: DataConfig
    where: str  # the config key of its data section, for messages ("data", "extra_domains[0]")
    train: Source
    val: Source
    labeled: list[int]
    unlabeled: list[int]


def resolve_split(data: DataConfig, source: Source, where: str = "data") -> tuple[list[int], list[int]]:
    """Indices of the labelled and unlabelled training images (from lists, or a seeded nested split)."""
    if data.labeled_list is not None:
        labeled = read_list(data.labeled_list, f"{where}.labeled_list")
        unlabeled = read_list(data.unlabeled_list, f"{where}.unlabeled_list")
        validate_split(labeled, unlabeled, source.ids, f"{data.labeled_list} / {data.unlabeled_list}")
    else:
        labeled, unlabeled = make_split(
            source.ids, data.n_labeled, data.split_seed, source.image_labels, source.labeled_first
        )
    return source.subset(labeled, f"{where}.labeled_list"), source.subset(unlabeled, f"{where}.unlabeled_list")


def load_domains(config: RunConfig) -> list[Domain]:
    """Every domain of the run with its sources and split, ``data`` first."""
    domains = []
    for k, (name, data) in enumerate(zip(config.domain_names(), config.domains)):
        where = "data" if k == 0 else f"extra_domains[{k - 1}]"
        train_source, val_source = load_source(data, "train"), load_source(data, "val")
        labeled, unlabeled = resolve_split(data, train_source, where)
        domains.append(Domain(name, data, where, train_source, val_source, labeled, unlabeled))
    return domains


def build_model(config: RunConfig, domains: list[Domain]) -> CCT:
    torch.manual_seed(config.train.seed)
    return CCT(config.model, {d.name: d.train.num_classes for d in domains},
               {d.name: d.train.background_classes for d in domains})


def domain_seed(seed: int, k: int) -> int:
    """The data-stream seed of domain ``k``: the run's seed for the first (a single-domain run's
    batches do not depend on whether the code supports several), a derived one for the others."""
    return seed if k == 0 else int(np.random.default_rng([seed, 0xD0, k]).integers(2**62))


def domain_streams(config: RunConfig, domains: list[Domain], start: int, ctx: distributed.Context | None = None,
                   pin_memory: bool = False) -> list[tuple]:
    """Per domain, iterators over its (labelled, unlabelled) batches of iterations ``start`` ..
    ``train.iterations - 1``; unlabelled is None in supervised mode. Every iteration takes one batch
    of each from every domain (each domain walks its own seeded passes over its own images,
    whatever the other domains' sizes), so all domains are seen in every step. An unlabelled batch
    is (images, masks): ground truth that is never read, or the pseudo labels of ``weak``."""
    tc, ctx = config.train, ctx or distributed.Context()
    streams = []
    for k, d in enumerate(domains):
        # without data.base_size the random rescale is relative to the images' long side
        transform = train_transform(d.data, max(d.train.load(0)[0].shape[:2]))
        seed = domain_seed(tc.seed, k)

        def stream(source: Source, pool: list[int], size: int, kind: str):
            loader = batch_stream(source, pool, transform, size, seed, kind, start, tc.iterations, d.data.num_workers,
                                  pin_memory)
            return iter(distributed.shard_loader(loader, ctx))

        unl = None
        if tc.mode == "semi":
            unl_source = d.train
            if config.weak.pseudo_labels is not None:  # pseudo labels from image-level labels (cct.weak)
                from cct.weak.pseudo import with_pseudo_labels

                unl_source = with_pseudo_labels(d.train, config.weak.pseudo_labels, d.unlabeled)
            unl = stream(unl_source, d.unlabeled, tc.batch_size_unlabeled, "unlabeled")
        streams.append((stream(d.train, d.labeled, tc.batch_size_labeled, "labeled"), unl))
    return streams


def _numeric_config(config_dict: dict) -> dict:
    out = {}
    for section, values in config_dict.items():
        if isinstance(values, dict):
            out[section] = {k: v for k, v in values.items() if (section, k) not in _EXECUTION_KEYS}
        else:  # extra_domains: data sections
            out[section] = [{k: v for k, v in d.items() if ("data", k) not in _EXECUTION_KEYS} for d in values]
    return out


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
    ``tb/`` under ``out_dir``. Resume state lives in ``resume_dir`` (default ``out_dir/resume``).

    Under ``torchrun`` (several processes) each rank trains on its share of every batch with
    synchronised batch norm (:mod:`cct.distributed`); rank 0 alone evaluates and writes, and the
    other ranks return ``{}``."""
    from torch.utils.tensorboard import SummaryWriter
    from tqdm import tqdm

    out_dir = Path(out_dir)
    resume_path = Path(resume_dir or out_dir / "resume") / "state.pt"
    tc = config.train
    torch.set_num_threads(tc.threads)
    ctx = distributed.setup(pick_device(tc.device).type)
    device, main = ctx.device, ctx.is_main
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    else:
        torch.use_deterministic_algorithms(True)
        host.keep_freed_memory()

    domains = load_domains(config)
    semi = tc.mode == "semi"
    for d in domains:
        if semi and not d.unlabeled:
            raise ConfigError(f"train.mode: 'semi' needs unlabelled images, but the unlabelled list of {d.where} is empty")
    if semi and sum(getattr(config.model.aux, k) for k in vars(config.model.aux)) == 0:
        raise ConfigError("model.aux: 'semi' mode needs at least one auxiliary decoder (all counts are 0)")
    for key, size in (("batch_size_labeled", tc.batch_size_labeled), ("batch_size_unlabeled", tc.batch_size_unlabeled)):
        if size % ctx.world_size:
            raise ConfigError(f"train.{key}: {size} is not divisible by the {ctx.world_size} processes of this run")

    model = build_model(config, domains).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    if tc.compile:  # in place: parameters and state_dict keys stay those of the plain model
        model.encoder.compile()
        for head in model.heads.values():
            head.main.compile()
    # supervised mode leaves the auxiliary decoders without gradients
    step_fn = distributed.wrap(model, ctx, find_unused_parameters=not semi)
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
    weak = config.weak.pseudo_labels is not None
    streams = domain_streams(config, domains, start, ctx, pin)
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=tc.amp and device.type == "cuda")
    writer = SummaryWriter(str(out_dir / "tb"), purge_step=start) if main else distributed.NullWriter()
    lc = config.loss
    several = len(domains) > 1
    loss_fn = functools.partial(step_loss, config=config, domains=domains)

    def save_state(iteration: int) -> None:
        if not main:
            return
        atomic_torch_save(
            {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "iteration": iteration,
             "history": history, "elapsed": elapsed + time.perf_counter() - t0, "config": config_dict},
            resume_path,
        )

    def evaluate_all() -> dict[str, dict]:
        return {d.name: evaluate(model, d.val, device, domain=d.name) for d in domains}

    def mean_miou(results: dict[str, dict]) -> float:
        return float(np.mean([r["miou"] for r in results.values()]))

    model.train()
    t0 = time.perf_counter()
    running: dict[str, torch.Tensor | int] = {}
    results = None
    bar = tqdm(range(start, total), initial=start, total=total, disable=not (tc.progress and main), mininterval=2.0,
               desc=f"{tc.mode} seed {tc.seed}")
    with _StopFlag() as stop:
        for i in bar:
            torch.manual_seed(iteration_seed(tc.seed, i))
            factor = (1 - i / total) ** oc.poly_power
            for group, lr in zip(optimizer.param_groups, base_lrs):
                group["lr"] = lr * factor
            batches = []
            for lab, unl in streams:
                x_l, y_l = (t.to(device, non_blocking=True) for t in next(lab))
                x_u = y_w = None
                if unl is not None:
                    x_u, y_w = (t.to(device, non_blocking=True) for t in next(unl))
                    y_w = y_w if weak else None
                batches.append((x_l, y_l, x_u, y_w))
            w_u = losses.unsupervised_weight(i, total, lc.unsupervised_w, lc.rampup)
            w_w = losses.unsupervised_weight(i, total, config.weak.loss_w, lc.rampup)
            with amp:
                loss, terms = step_fn(loss_fn, batches, i, w_u, w_w)
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
                bar.set_postfix({k: f"{v:.3f}" for k, v in means.items() if "@" not in k}, refresh=False)
                running = {}
            results = None
            if main and (step % tc.eval_interval == 0 or step == total):
                results = evaluate_all()
                entry = {"iteration": step, "val_miou": mean_miou(results), "lr": optimizer.param_groups[1]["lr"]}
                entry.update({k: float(v.detach()) for k, v in terms.items()})
                if semi:
                    entry["w_u"] = w_u
                if several:
                    entry.update({f"val_miou@{name}": r["miou"] for name, r in results.items()})
                history.append(entry)
                writer.add_scalar("val/miou", entry["val_miou"], step)
                for name, r in results.items():
                    if several:
                        writer.add_scalar(f"val/miou@{name}", r["miou"], step)
                log.info("iteration %d: val mIoU %.2f", step, entry["val_miou"])
            stopping = distributed.any_rank(stop.signum is not None, ctx)
            if stopping or step % tc.checkpoint_interval == 0:
                save_state(step)
            if stopping:
                writer.close()
                distributed.cleanup(ctx)
                raise Interrupted(f"stopped by signal {stop.signum} at iteration {step}; state saved to {resume_path}")
    bar.close()
    writer.close()
    if not main:
        distributed.cleanup(ctx)
        return {}

    if results is None:  # resumed after the last iteration
        results = evaluate_all()
    metrics = _metrics(config, domains, results, history, total)
    metrics.update(wall_time_s=elapsed + time.perf_counter() - t0, device=str(device), world_size=ctx.world_size,
                   config=config_dict, versions=versions())
    save_config(config, out_dir / "config.yaml")
    first = domains[0]
    atomic_torch_save(
        {"model": model.state_dict(), "config": config_dict, "class_names": list(first.train.class_names),
         "background_classes": first.train.background_classes,
         "domains": {d.name: {"class_names": list(d.train.class_names), "background_classes": d.train.background_classes}
                     for d in domains}},
        out_dir / "checkpoint.pt",
    )
    atomic_write_json(out_dir / "metrics.json", metrics)
    if start < total:
        save_state(total)
    distributed.cleanup(ctx)
    return metrics


def step_loss(
    m: CCT, batches: list, i: int, w_u: float, w_w: float, *, config: RunConfig, domains: list[Domain]
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The loss of iteration ``i`` over every domain's batches ``(x_l, y_l, x_u, y_w)`` (x_u and y_w
    None without unlabelled images or pseudo labels), and its terms (summed over domains; per domain
    as ``<term>@<name>`` when there are several). ``w_u``/``w_w``: the ramped unsupervised and
    weak-label weights. The training step of :func:`train` (and of ``benchmarks/step_time.py``)."""
    lc, total, several = config.loss, config.train.iterations, len(domains) > 1
    terms: dict[str, torch.Tensor] = {}
    loss = 0.0

    def add(kind: str, name: str, value: torch.Tensor) -> None:
        terms[kind] = terms[kind] + value if kind in terms else value
        if several:
            terms[f"{kind}@{name}"] = value

    for d, (x_l, y_l, x_u, y_w) in zip(domains, batches):
        logits_l = m(x_l, d.name)
        if lc.supervised == "abce":
            th = losses.abce_threshold(i, total, d.train.num_classes, lc.abce_final_threshold, lc.abce_rampup)
            sup = losses.annealed_bootstrapped_ce(logits_l.float(), y_l, th)
        else:
            sup = losses.cross_entropy(logits_l.float(), y_l)
        add("loss_sup", d.name, sup)
        loss = loss + sup
        if x_u is None:
            continue
        m.use_domain(d.name)
        z_u = m.encoder(x_u)
        logits_u = m.decode(z_u, d.name)
        # The targets in the decoders' native layout, so the 30 outputs never need rearranging:
        # (B, 1, K, 4^n, h, w) for pixel-shuffle decoders (image layout for bilinear ones).
        target = F.softmax(m.to_native(logits_u.detach().float(), d.name) / lc.softmax_temp, dim=1).unsqueeze(1)
        mask = losses.confidence_mask(target, lc.confidence_threshold if lc.confidence_masking else None)
        pseudo = None if y_w is None else m.to_native(y_w.unsqueeze(1), d.name)[:, 0]

        def aux_terms(aux: torch.Tensor, rows: slice) -> tuple[torch.Tensor, torch.Tensor]:
            """(sums, counts) of unsup [, weak] [, pairwise] over the base-grid rows ``rows``."""
            aux, at = aux.float(), (..., rows, slice(None))
            parts = [losses.consistency_sums(aux, target[at], lc.consistency, None if mask is None else mask[at])]
            if pseudo is not None:  # CE of every aux decoder against the pseudo labels
                parts.append(losses.weak_sums(aux, pseudo[at]))
            if lc.pairwise_w > 0:  # part of the optimised loss (official defect 2)
                parts.append(losses.pairwise_sums(aux))
            return torch.stack([p[0] for p in parts]), torch.stack([p[1] for p in parts])

        values = m.auxiliary_objective(z_u, logits_u, aux_terms, d.name)
        add("loss_unsup", d.name, values[0])
        loss = loss + w_u * values[0]
        if pseudo is not None:  # ramped like w_u
            add("loss_weak", d.name, values[1])
            loss = loss + w_w * values[1]
        if lc.pairwise_w > 0:
            add("loss_pairwise", d.name, values[-1])
            loss = loss + w_u * lc.pairwise_w * values[-1]
    return loss, terms


def _metrics(config: RunConfig, domains: list[Domain], results: dict[str, dict], history: list[dict], total: int) -> dict:
    """metrics.json without the run's provenance: the headline is the mean of the domains' mIoU
    (a single domain's own), every domain's scores under ``domains``."""
    several = len(domains) > 1
    per_domain = {}
    for d in domains:
        r = results[d.name]
        key = f"val_miou@{d.name}" if several else "val_miou"
        scored = [e for e in history if key in e]
        best = max(scored, key=lambda e: e[key]) if scored else {key: r["miou"], "iteration": total}
        per_domain[d.name] = {
            "miou": r["miou"], "best_miou": best[key], "best_iteration": best["iteration"],
            "per_class_iou": r["per_class_iou"], "pixel_accuracy": r["pixel_accuracy"],
            "class_names": list(d.train.class_names), "n_labeled": len(d.labeled), "n_unlabeled": len(d.unlabeled),
            "dataset": d.data.dataset, "domain": d.data.domain, "confusion_matrix": r["confusion_matrix"],
        }
    best = max(history, key=lambda e: e["val_miou"]) if history else {
        "val_miou": float(np.mean([r["miou"] for r in results.values()])), "iteration": total}
    first = domains[0]
    head = results[first.name]
    weak = config.weak.pseudo_labels is not None
    return {
        "miou": float(np.mean([r["miou"] for r in results.values()])),
        "best_miou": best["val_miou"],
        "best_iteration": best["iteration"],
        # one domain: its per-class scores; several: "<domain>/<class>"
        "per_class_iou": head["per_class_iou"] if not several else {
            f"{name}/{c}": v for name, r in results.items() for c, v in r["per_class_iou"].items()},
        "pixel_accuracy": head["pixel_accuracy"] if not several else float(np.mean([r["pixel_accuracy"] for r in results.values()])),
        "eval_protocol": PROTOCOL,
        "iterations": total,
        "mode": config.train.mode,
        "seed": config.train.seed,
        "split_seed": first.data.split_seed,
        "n_labeled": len(first.labeled),
        "n_unlabeled": len(first.unlabeled),
        "n_weak": len(first.unlabeled) if weak else 0,  # unlabelled images trained on their pseudo labels
        "dataset": first.data.dataset,
        "domain": first.data.domain,
        "class_names": list(first.train.class_names),
        "domains": {name: {k: v for k, v in entry.items() if k != "confusion_matrix"} for name, entry in per_domain.items()},
        "history": history,
        "confusion_matrix": head["confusion_matrix"] if not several else {n: e["confusion_matrix"] for n, e in per_domain.items()},
    }
