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
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cct import distributed, engine, losses
from cct.config import ConfigError, DataConfig, OptimConfig, RunConfig, save_config
from cct.data.base import Source, load_source
from cct.data.loader import batch_stream
from cct.data.splits import make_split, read_list, validate_split
from cct.data.transforms import train_transform
from cct.evaluate import PROTOCOL, evaluate
from cct.io import atomic_write_json
from cct.model.cct import CCT, build_model
from cct.optim import SGD

# compatibility names of the pieces that moved to the engine (cct.cli and the tests use them)
Interrupted = engine.Interrupted

log = logging.getLogger("cct.train")

# Keys that change how a run executes but not its numbers: a resume may differ in these; any other
# key is part of the run's identity, and a resume state written under another value is refused
# (or, with --stale-resume restart, discarded).
# - train.progress: the progress bar only.
# - data.num_workers: batch i is the same with any number of loader processes (every sample carries
#   its own augmentation seed, cct/data/loader.py), so the numbers are too.
# - train.device: the key ("auto" and "cuda" can name the same device); the device *type* the run
#   executes on is part of the state's `execution` record, compared on resume (CPU and CUDA kernels,
#   and bf16 autocast on CUDA, give other numbers), with the number of torchrun processes.
# Not here, because they change the numbers: train.threads (CPU kernels split their reductions by
# thread: 1 vs 2 threads gave 16.54 vs 15.32 mIoU on the same seed) and train.compile (fused kernels
# round differently).
_EXECUTION_KEYS = {("train", "progress"), ("train", "device"), ("data", "num_workers")}
STALE_CHOICES = ("refuse", "restart")


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
    pseudo: Source | None = None  # the training set with pseudo labels (weak.pseudo_labels), else None


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
    for k, (name, data) in enumerate(zip(config.domain_names(), config.domains, strict=True)):
        where = "data" if k == 0 else f"extra_domains[{k - 1}]"
        train_source, val_source = load_source(data, "train"), load_source(data, "val")
        labeled, unlabeled = resolve_split(data, train_source, where)
        pseudo = None
        if config.weak.pseudo_labels is not None and config.train.mode == "semi":
            from cct.weak.pseudo import with_pseudo_labels

            pseudo = with_pseudo_labels(train_source, config.weak.pseudo_labels, unlabeled)
        domains.append(Domain(name, data, where, train_source, val_source, labeled, unlabeled, pseudo))
    return domains


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
        stream = functools.partial(_stream, transform=transform, seed=domain_seed(tc.seed, k), start=start,
                                   stop=tc.iterations, workers=d.data.num_workers, pin_memory=pin_memory, ctx=ctx)

        unl = None
        if tc.mode == "semi":  # with weak labels, the pseudo labels (cct.weak); else masks never read
            source = d.pseudo if d.pseudo is not None else d.train
            unl = stream(source, d.unlabeled, tc.batch_size_unlabeled, "unlabeled", labels=d.pseudo is not None)
        streams.append((stream(d.train, d.labeled, tc.batch_size_labeled, "labeled"), unl))
    return streams


def _stream(source: Source, pool: list[int], size: int, kind: str, *, transform, seed: int, start: int, stop: int,
            workers: int, pin_memory: bool, ctx: distributed.Context, labels: bool = True):
    """An iterator over this process's share of the batches of ``pool`` (see :func:`batch_stream`)."""
    loader = batch_stream(source, pool, transform, size, seed, kind, start, stop, workers, pin_memory, labels)
    return iter(distributed.shard_loader(loader, ctx))


def _numeric_config(config_dict: dict) -> dict:
    return engine.numeric_identity(config_dict, _EXECUTION_KEYS)


def backbone_lr(oc: OptimConfig, n_domains: int) -> float:
    """The backbone's base rate (the pretrained part of the shared encoder; PSP and decoders take
    ``lr``): ``lr * encoder_lr_factor``, over the number of domains when ``optim.joint_backbone`` is
    ``mean`` (its step is then that of the domains' mean gradient, not of their sum)."""
    return oc.lr * oc.encoder_lr_factor / (n_domains if oc.joint_backbone == "mean" else 1)


def train(config: RunConfig, out_dir: str | Path, resume_dir: str | Path | None = None, *, stale: str = "refuse",
          watch_pid: int | None = None) -> dict:
    """Train and evaluate one run; write ``config.yaml``, ``checkpoint.pt``, ``metrics.json`` and
    ``tb/`` under ``out_dir``. Resume state lives in ``resume_dir`` (default ``out_dir/resume``); a
    state of a run with other numbers is refused (``stale="refuse"``) or discarded (``"restart"``),
    see :class:`cct.engine.ResumeState`. With ``watch_pid`` the run saves and stops when that
    process ends (:class:`cct.engine.StopFlag`).

    Under ``torchrun`` (several processes) each rank trains on its share of every batch with
    synchronised batch norm (:mod:`cct.distributed`); rank 0 alone evaluates and writes, and the
    other ranks return ``{}``."""
    from tqdm import tqdm

    out_dir, tc, oc = Path(out_dir), config.train, config.optim
    ctx = engine.setup(tc.device, tc.threads, compiled=tc.compile)
    device, main, semi, weak = ctx.device, ctx.is_main, tc.mode == "semi", config.weak.pseudo_labels is not None
    config_dict, total = config.to_dict(), tc.iterations
    resume = engine.ResumeState(Path(resume_dir or out_dir / "resume"), config_dict, identity=_numeric_config,
                                stale=stale, execution={"device": device.type, "processes": ctx.world_size})
    resume.prepare(ctx)  # a stale state is refused before the data is read
    try:
        domains = load_domains(config)
        check_run(config, domains, ctx.world_size)
        if main:
            check_data(config, domains)
        model = _model(config, domains, device)
        # supervised: the aux decoders get no gradient
        step_fn = distributed.wrap(model, ctx, find_unused_parameters=not semi)
        backbone, rest = model.parameter_groups()
        base_lrs = [backbone_lr(oc, len(domains)), oc.lr]
        optimizer = SGD([{"params": backbone, "lr": base_lrs[0]}, {"params": rest, "lr": base_lrs[1]}],
                        momentum=oc.momentum, weight_decay=oc.weight_decay)
        start, history = resume.load(model, optimizer, device, ctx)

        streams = domain_streams(config, domains, start, ctx, pin_memory=device.type == "cuda")
        amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=tc.amp and device.type == "cuda")
        writer = EventWriter(out_dir / "tb", start) if main else distributed.NullWriter()
        loss_fn = functools.partial(step_loss, config=config, domains=domains)
        losses_log = engine.LossLog(every=10, total=total, hint=engine.DIVERGED.format(key="optim.lr"))
        bar = tqdm(range(start, total), initial=start, total=total, disable=not (tc.progress and main), mininterval=2.0,
                   desc=f"{tc.mode} seed {tc.seed}")
        results = None
        model.train()
        with engine.StopFlag(watch_pid) as stop:
            for i in bar:
                engine.seed_step(tc.seed, i, device)
                engine.set_poly_lr(optimizer, base_lrs, i, total, oc.poly_power)
                w_u = losses.unsupervised_weight(i, total, config.loss.unsupervised_w, config.loss.rampup)
                w_w = losses.unsupervised_weight(i, total, config.weak.loss_w, config.loss.rampup)
                with amp:
                    loss, terms = step_fn(loss_fn, next_batches(streams, device, weak), i, w_u, w_w)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()

                step, results = i + 1, None
                means = losses_log.add(terms, step)
                if means is not None:
                    _log_scalars(writer, means, optimizer, w_u if semi else None, step)
                    bar.set_postfix({k: f"{v:.3f}" for k, v in means.items() if "@" not in k}, refresh=False)
                if main and (step % tc.eval_interval == 0 or step == total):
                    results = evaluate_domains(model, domains, device)
                    history.append(_history_entry(results, terms, optimizer, w_u if semi else None, step, len(domains)))
                    _log_evaluation(writer, history[-1], results, step, len(domains) > 1)
                stopping = distributed.any_rank(stop.stopping, ctx)
                if main and (stopping or step % tc.checkpoint_interval == 0):
                    resume.save(model, optimizer, step, history)
                if stopping:
                    writer.close()
                    resume.release()
                    distributed.cleanup(ctx)
                    raise engine.Interrupted(
                        f"{stop.reason or 'stopped'} at iteration {step}; state saved to {resume.path} (the same "
                        "command resumes from it)"
                    )
        bar.close()
        writer.close()
        if not main:
            distributed.cleanup(ctx)
            return {}

        if results is None:  # resumed after the last iteration
            results = evaluate_domains(model, domains, device)
        metrics = _metrics(config, domains, results, history, total)
        metrics.update(
            wall_time_s=resume.wall_time(),
            cpu_time_s=resume.cpu_time(),
            attempts=resume.attempts(total),
            device=str(device),
            world_size=ctx.world_size,
            config=config_dict,
            versions=engine.versions(),
        )
        save_config(config, out_dir / "config.yaml")
        engine.save_checkpoint(
            out_dir / "checkpoint.pt",
            model,
            config_dict,
            {
                d.name: {"class_names": list(d.train.class_names), "background_classes": d.train.background_classes}
                for d in domains
            },
        )
        atomic_write_json(out_dir / "metrics.json", metrics)
        if start < total:
            resume.save(model, optimizer, total, history)
        resume.finish()
        distributed.cleanup(ctx)
        return metrics
    finally:
        resume.release()  # the resume folder's lock, whatever happened


class EventWriter:
    """TensorBoard's SummaryWriter into ``directory`` whose failures name the folder: it writes from
    a thread of its own and surfaces a full disk later as an OSError without a file name."""

    def __init__(self, directory: Path, start: int) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.directory = directory
        self._writer = self._call(SummaryWriter, str(directory), purge_step=start)

    def _call(self, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except OSError as exc:
            if exc.filename is not None or exc.errno is None:
                raise
            raise OSError(exc.errno, exc.strerror, str(self.directory)) from exc

    def add_scalar(self, *args, **kwargs) -> None:
        self._call(self._writer.add_scalar, *args, **kwargs)

    def close(self) -> None:
        self._call(self._writer.close)


def check_run(config: RunConfig, domains: list[Domain], world_size: int) -> None:
    """What the config alone cannot tell: the data and the process count fit the run."""
    tc = config.train
    if tc.mode == "semi":
        for d in domains:
            if not d.unlabeled:
                raise ConfigError(
                    f"train.mode: 'semi' needs unlabelled images, but the unlabelled list of {d.where} is empty"
                )
    for key in ("batch_size_labeled", "batch_size_unlabeled"):
        if getattr(tc, key) % world_size:
            raise ConfigError(
                f"train.{key}: {getattr(tc, key)} is not divisible by the {world_size} processes of this run"
            )


def check_data(config: RunConfig, domains: list[Domain]) -> None:
    """Before the first iteration, one pass over every mask the run will read: the validation set's
    (its first evaluation may be thousands of iterations away), the labelled images' and the pseudo
    labels'. A bad value, a size that differs from its image's, an unreadable file: ConfigError
    naming the file now, not an error in the middle of training. A validation set without a single
    labelled pixel has no mIoU: refused too."""
    import time

    t0 = time.perf_counter()
    n = 0
    for d in domains:
        if d.val.check(range(len(d.val)), f"the {d.where} validation set") == 0:
            raise ConfigError(
                f"{d.where}: the validation set {d.val.name} has no labelled pixel (every mask value is 255): "
                "its mIoU is undefined"
            )
        d.train.check(d.labeled, f"the labelled images of {d.where}")
        n += len(d.val) + len(d.labeled)
        if d.pseudo is not None:
            d.pseudo.check(d.unlabeled, "weak.pseudo_labels")
            n += len(d.unlabeled)
    log.info("checked %d masks in %.1f s", n, time.perf_counter() - t0)


def _model(config: RunConfig, domains: list[Domain], device: torch.device) -> CCT:
    """The run's model on ``device``, initialised from the run's seed (channels_last on CUDA;
    ``train.compile`` compiles the encoder and main decoders in place, so parameters and
    state_dict keys stay those of the plain model)."""
    model = build_model(
        config.model,
        {d.name: d.train.num_classes for d in domains},
        {d.name: d.train.background_classes for d in domains},
        seed=config.train.seed,
    ).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    if config.train.compile:
        model.encoder.compile()
        for head in model.heads.values():
            head.main.compile()
    return model


def next_batches(streams: list[tuple], device: torch.device, weak: bool) -> list[tuple]:
    """Every domain's batches of this iteration on ``device``: ``(x_l, y_l, x_u, y_w)``, x_u None in
    supervised mode, y_w the unlabelled batch's pseudo labels with ``weak`` (else None)."""
    batches = []
    for lab, unl in streams:
        x_l, y_l = (t.to(device, non_blocking=True) for t in next(lab))
        x_u = y_w = None
        if unl is not None:
            x_u, y_w = (t.to(device, non_blocking=True) for t in next(unl))
        batches.append((x_l, y_l, x_u, y_w if weak else None))
    return batches


def evaluate_domains(model: CCT, domains: list[Domain], device: torch.device) -> dict[str, dict]:
    """Scores of every domain on its validation set."""
    return {d.name: evaluate(model, d.val, device, domain=d.name) for d in domains}


def _history_entry(
    results: dict[str, dict], terms: dict, optimizer, w_u: float | None, step: int, n_domains: int
) -> dict:
    entry = {
        "iteration": step,
        "val_miou": float(np.mean([r["miou"] for r in results.values()])),
        "lr": optimizer.param_groups[1]["lr"],
    }
    entry.update({k: float(v.detach()) for k, v in terms.items()})
    if w_u is not None:
        entry["w_u"] = w_u
    if n_domains > 1:
        entry.update({f"val_miou@{name}": r["miou"] for name, r in results.items()})
    return entry


def _log_scalars(writer, means: dict[str, float], optimizer, w_u: float | None, step: int) -> None:
    for k, v in means.items():
        writer.add_scalar(f"train/{k}", v, step)
    writer.add_scalar("train/lr", optimizer.param_groups[1]["lr"], step)
    if w_u is not None:
        writer.add_scalar("train/w_u", w_u, step)


def _log_evaluation(writer, entry: dict, results: dict[str, dict], step: int, several: bool) -> None:
    writer.add_scalar("val/miou", entry["val_miou"], step)
    if several:
        for name, r in results.items():
            writer.add_scalar(f"val/miou@{name}", r["miou"], step)
    log.info("iteration %d: val mIoU %.2f", step, entry["val_miou"])


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

    for d, (x_l, y_l, x_u, y_w) in zip(domains, batches, strict=True):
        logits_l = m(x_l, d.name)
        if lc.supervised == "abce":
            th = losses.abce_threshold(i, total, d.train.num_classes, lc.abce_final_threshold, lc.abce_rampup)
            sup = losses.annealed_bootstrapped_ce(logits_l.float(), y_l, th)
        else:  # loss.softmax_temp divides the supervised logits (the official CE_loss)
            sup = losses.cross_entropy(logits_l.float(), y_l, lc.softmax_temp)
        add("loss_sup", d.name, sup)
        loss = loss + sup
        if x_u is None:
            continue
        m.use_domain(d.name)
        z_u = m.encoder(x_u)
        logits_u = m.decode(z_u, d.name)
        # The targets in the decoders' native layout, so the 30 outputs never need rearranging:
        # (B, 1, K, 4^n, h, w) for pixel-shuffle decoders (image layout for bilinear ones).
        target = F.softmax(m.to_native(logits_u.detach().float(), d.name), dim=1).unsqueeze(1)
        mask = losses.confidence_mask(target, lc.confidence_threshold if lc.confidence_masking else None)
        pseudo = None if y_w is None else m.to_native(y_w.unsqueeze(1), d.name)[:, 0]
        pairs = _pairwise_decoders(lc, len(m.heads[d.name].kinds), x_u.device)
        values = m.auxiliary_objective(z_u, logits_u, _aux_terms(lc, target, mask, pseudo, pairs), d.name)
        add("loss_unsup", d.name, values[0])
        loss = loss + w_u * values[0]
        if pseudo is not None:  # ramped like w_u
            add("loss_weak", d.name, values[1])
            loss = loss + w_w * values[1]
        if lc.pairwise_w > 0:  # the official aux_constraint_w, not ramped (official defect 2: optimised here)
            add("loss_pairwise", d.name, values[-1])
            loss = loss + lc.pairwise_w * values[-1]
    return loss, terms


def _pairwise_decoders(lc, n_aux: int, device: torch.device) -> torch.Tensor | None:
    """The auxiliary decoders the pair-wise loss compares this step: ``loss.pairwise_decoders`` drawn
    at random (the official draws 8), or None for all of them (or no pair-wise loss)."""
    if lc.pairwise_w <= 0 or lc.pairwise_decoders == 0 or lc.pairwise_decoders >= n_aux:
        return None
    return torch.randperm(n_aux)[: lc.pairwise_decoders].to(device)


def _aux_terms(lc, target: torch.Tensor, mask: torch.Tensor | None, pseudo: torch.Tensor | None,
               pairs: torch.Tensor | None = None):
    """The objective of the auxiliary decoders (see :meth:`cct.model.decoders.DecoderBank.objective`):
    ``(aux logits, rows) -> (sums, counts)`` of unsup [, weak] [, pairwise] over the base-grid rows
    ``rows``, against the main prediction ``target``, masked by ``mask`` (confidence masking) and,
    with weak labels, against ``pseudo``."""

    def terms(aux: torch.Tensor, rows: slice) -> tuple[torch.Tensor, torch.Tensor]:
        aux, at = aux.float(), (..., rows, slice(None))
        parts = [losses.consistency_sums(aux, target[at], lc.consistency, None if mask is None else mask[at])]
        if pseudo is not None:  # CE of every aux decoder against the pseudo labels
            parts.append(losses.weak_sums(aux, pseudo[at]))
        if lc.pairwise_w > 0:  # part of the optimised loss (official defect 2)
            parts.append(losses.pairwise_sums(aux, pairs))
        return torch.stack([p[0] for p in parts]), torch.stack([p[1] for p in parts])

    return terms


def _metrics(
    config: RunConfig, domains: list[Domain], results: dict[str, dict], history: list[dict], total: int
) -> dict:
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
            "miou": r["miou"],
            "best_miou": best[key],
            "best_iteration": best["iteration"],
            "per_class_iou": r["per_class_iou"],
            "pixel_accuracy": r["pixel_accuracy"],
            "class_names": list(d.train.class_names),
            "n_labeled": len(d.labeled),
            "n_unlabeled": len(d.unlabeled),
            "dataset": d.data.dataset,
            "domain": d.data.domain,
            "confusion_matrix": r["confusion_matrix"],
        }
    best = (
        max(history, key=lambda e: e["val_miou"])
        if history
        else {"val_miou": float(np.mean([r["miou"] for r in results.values()])), "iteration": total}
    )
    first = domains[0]
    head = results[first.name]
    weak = config.weak.pseudo_labels is not None
    return {
        "miou": float(np.mean([r["miou"] for r in results.values()])),
        "best_miou": best["val_miou"],
        "best_iteration": best["iteration"],
        # one domain: its per-class scores; several: "<domain>/<class>"
        "per_class_iou": head["per_class_iou"]
        if not several
        else {f"{name}/{c}": v for name, r in results.items() for c, v in r["per_class_iou"].items()},
        "pixel_accuracy": head["pixel_accuracy"]
        if not several
        else float(np.mean([r["pixel_accuracy"] for r in results.values()])),
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
        "domains": {
            name: {k: v for k, v in entry.items() if k != "confusion_matrix"} for name, entry in per_domain.items()
        },
        "history": history,
        "confusion_matrix": head["confusion_matrix"]
        if not several
        else {n: e["confusion_matrix"] for n, e in per_domain.items()},
    }
