"""Training step time of `semi` (CCT) vs `supervised`: median seconds per step, the share of a CCT
step spent in the auxiliary decoders, images per second and peak memory, as a table and as JSON.

    python benchmarks/step_time.py                          # CPU: paper + embedded, 2 threads
    python benchmarks/step_time.py --only embedded --threads 1
    python benchmarks/step_time.py --device cuda --baseline --json out.json   # a GPU

The step timed is the trainer's own (:func:`cct.train.step_loss`, then backward and an SGD step),
on random tensors: a step's cost does not depend on the pixels. Configurations:

* ``paper``: config/paper/voc.yaml's model (ResNet-50 + PSP at output stride 8, pixel-shuffle
  decoders, the 30 auxiliary decoders, MSE consistency), 21 classes, crop 320; batch 2 + 2 in
  float32 on CPU, batch 10 + 10 with bf16 autocast and channels_last on CUDA (the paper's batch).
* ``embedded``: config/config.yaml's model on the embedded dataset's 48 px crops, batch 8 + 8.

Rows: ``supervised`` (labelled batch only), ``semi`` (CCT), and ``semi-no-aux`` (the unlabelled pass
without the auxiliary decoders, its steps alternating with semi's; ``aux share`` = the median over
those pairs of (semi - semi-no-aux), over the median semi step: pairing cancels the drifts of the
machine's speed, which on a shared CPU are larger than the share itself). ``--baseline`` adds
``semi-1by1-fp32``: the auxiliary decoders run one after another on full-resolution outputs with the
loss on the materialised stack, in float32 (the official implementation's path, inside this code).
Each row runs in a fresh process, so ``peak mem`` is that row's own: the process's peak resident
set on CPU, ``torch.cuda.max_memory_allocated`` on CUDA. ``paper run`` projects the wall time of the
paper's 1464-label VOC run (50 epochs of 912 iterations = 45,600 steps) at this step time.

For reference, the official implementation on the 2-core development machine (issue 8; CPU speed
varies between such machines, so compare within one run of this script): semi 9.0 s at batch 2+2,
crop 320, peak 6.2 GB; supervised 3.95 s at batch 2.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import multiprocessing
import os
import resource
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
PAPER_RUN_STEPS = 50 * 912  # the 1464-label VOC run: 50 epochs of ceil(9118 unlabelled / 10) iterations


def _configs(device: str, precision: str = "auto") -> dict[str, dict]:
    gpu = device == "cuda"
    bf16 = gpu if precision == "auto" else precision == "bf16"
    paper = yaml.safe_load((ROOT / "config/paper/voc.yaml").read_text())["cct"]
    embedded = yaml.safe_load((ROOT / "config/config.yaml").read_text())["cct"]
    return {
        "paper": dict(tree={"model": paper["model"] | {"pretrained": False}, "loss": paper["loss"]},
                      classes=21, background=[0], batch=10 if gpu else 2, crop=320, warmup=3 if gpu else 2,
                      steps=20 if gpu else 5, bf16=bf16),
        "embedded": dict(tree={"model": embedded["model"]}, classes=9, background=[0], batch=8, crop=48,
                         warmup=3, steps=20, bf16=bf16),
    }


def _one_by_one(model):
    """An ``auxiliary_objective`` that runs the decoders one after another on full-resolution
    outputs and reduces the materialised stack."""

    def objective(z, main_logits, terms, domain=None):
        inputs = model.auxiliary_inputs(z, main_logits, domain)
        bank = model._head(domain).aux
        outs = [bank.decode_one(x, k, native=True) for k, x in enumerate(inputs.chunk(bank.count, dim=1))]
        sums, counts = terms(torch.stack(outs, dim=1), slice(None))
        return sums / counts.clamp_min(1)

    return objective


def measure(name: str, row: str, device_name: str, threads: int, steps: int | None, precision: str) -> list[dict]:
    """Row ``row`` in this (fresh) process: median step seconds, images/s and peak memory. Row
    ``semi`` also gives ``semi-no-aux``, its steps interleaved with semi's so that drifts of the
    machine's speed cancel in the aux share (peak memory: semi's; the other's is not separable)."""
    from cct import engine
    from cct.config import from_dict
    from cct.model.cct import build_model
    from cct.optim import SGD
    from cct.train import step_loss

    spec = _configs(device_name, precision)[name]
    device = engine.setup(device_name, threads).device  # as the trainer: threads, allocator, determinism
    bf16 = spec["bf16"] and row != "semi-1by1-fp32"
    mode = "supervised" if row == "supervised" else "semi"
    config = from_dict(spec["tree"], [f"train.mode={mode}", f"train.amp={str(bf16).lower()}"])
    model = (
        build_model(config.model, {"main": spec["classes"]}, {"main": spec["background"]}, seed=0).to(device).train()
    )
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    variants = {row: None}
    if row == "semi":  # the unlabelled pass without the decoders' objective (the paper's: one term)
        variants["semi-no-aux"] = lambda z, logits, terms, domain=None: (0.0 * logits.float().sum()).expand(1)
    elif row == "semi-1by1-fp32":
        variants[row] = _one_by_one(model)
    optimizer = SGD([{"params": model.parameters()}], lr=1e-3, momentum=0.9)
    b, crop, k = spec["batch"], spec["crop"], spec["classes"]
    x_l, x_u = torch.randn(b, 3, crop, crop, device=device), torch.randn(b, 3, crop, crop, device=device)
    y_l = torch.randint(0, k, (b, crop, crop), device=device)
    batches = [(x_l, y_l, None if mode == "supervised" else x_u, None)]
    domains = [SimpleNamespace(name="main", train=SimpleNamespace(num_classes=k))]
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)
    w_u = config.loss.unsupervised_w
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def step(i: int, variant: str) -> float:
        if variants[variant] is None:
            model.__dict__.pop("auxiliary_objective", None)  # the model's own
        else:
            model.auxiliary_objective = variants[variant]
        sync()
        start = time.perf_counter()
        with amp:
            loss, _ = step_loss(model, batches, i, w_u, 0.0, config=config, domains=domains)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        sync()
        return time.perf_counter() - start

    for i in range(spec["warmup"]):
        for v in variants:
            step(i, v)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times: dict[str, list[float]] = {v: [] for v in variants}
    for i in range(steps or spec["steps"]):
        for v in variants:
            times[v].append(step(i, v))
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated()
    else:  # ru_maxrss is in KiB on Linux
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    images = b * (1 if mode == "supervised" else 2)
    out = []
    for v, ts in times.items():
        seconds = statistics.median(ts)
        out.append(
            {
                "config": name,
                "row": v,
                "device": device_name,
                "threads": threads,
                "batch": f"{b}+{b if mode == 'semi' else 0}",
                "crop": crop,
                "bf16": bf16,
                "step_s": seconds,
                "images_per_s": images / seconds,
                "peak_mem_gb": peak / 1e9 if v == row else None,
                "paper_run_h": seconds * PAPER_RUN_STEPS / 3600 if name == "paper" and v == row else None,
            }
        )
    if row == "semi":
        paired = statistics.median(a - b for a, b in zip(times["semi"], times["semi-no-aux"], strict=True))
        out[0]["aux_share"] = paired / out[0]["step_s"]
    return out


def _in_fresh_process(*args) -> dict:
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=ctx) as pool:
        return pool.submit(measure, *args).result()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=["paper", "embedded"], default=None)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2)")
    parser.add_argument(
        "--steps", type=int, default=None, help="timed steps per row (default: 5 paper on CPU, else 20)"
    )
    parser.add_argument(
        "--precision",
        choices=["auto", "fp32", "bf16"],
        default="auto",
        help="autocast dtype of the step (auto: bf16 on CUDA, fp32 on CPU); the baseline row is fp32",
    )
    parser.add_argument("--baseline", action="store_true", help="add the one-by-one float32 decoders row")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows to this JSON file")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device is visible to torch")
    rows = ["supervised", "semi"] + (["semi-1by1-fp32"] if args.baseline else [])
    device_label = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU, {args.threads} thread(s)"
    print(f"torch {torch.__version__}, {device_label}; median over the timed steps")
    print(
        f"{'config':<9} {'row':<15} {'batch':>6} {'prec':>5} {'step s':>8} {'img/s':>7} {'peak GB':>8} "
        f"{'aux share':>9} {'paper run':>10}"
    )
    results = []
    for name in [args.only] if args.only else ["paper", "embedded"]:
        got = {}
        for row in rows:
            for r in _in_fresh_process(name, row, args.device, args.threads, args.steps, args.precision):
                got[r["row"]] = r
                share = f"{r['aux_share']:.0%}" if "aux_share" in r else ""
                run = f"{r['paper_run_h']:.1f} h" if r["paper_run_h"] is not None else ""
                peak = f"{r['peak_mem_gb']:.2f}" if r["peak_mem_gb"] is not None else ""
                print(
                    f"{name:<9} {r['row']:<15} {r['batch']:>6} {'bf16' if r['bf16'] else 'fp32':>5} "
                    f"{r['step_s']:>8.3f} "
                    f"{r['images_per_s']:>7.2f} {peak:>8} {share:>9} {run:>10}",
                    flush=True,
                )
                results.append(r)
        if "semi-1by1-fp32" in got:
            print(
                f"{name}: semi is {got['semi']['images_per_s'] / got['semi-1by1-fp32']['images_per_s']:.2f}x the "
                "images/s of the one-by-one float32 decoders"
            )
    print(json.dumps(results))
    if args.json:
        tmp = args.json.with_suffix(args.json.suffix + ".tmp")
        tmp.write_text(json.dumps({"torch": torch.__version__, "device": device_label, "rows": results}, indent=1))
        os.replace(tmp, args.json)


if __name__ == "__main__":
    main()
