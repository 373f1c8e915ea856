"""Training step time of `semi` (CCT) vs `supervised`, and the share of a CCT step spent in the
auxiliary decoders (perturbations, the 30 decoders and the consistency loss).

    python benchmarks/step_time.py                 # both configurations, 2 threads
    python benchmarks/step_time.py --only embedded --threads 1

Two configurations: the paper's (ResNet-50 + PSP at output stride 8, pixel-shuffle decoders,
21 classes, batch 2 labelled + 2 unlabelled, crop 320, the 30 default auxiliary decoders) and the
embedded default (config/config.yaml's model on 48 px crops, batch 8 + 8). Inputs are random
tensors: a step's cost does not depend on the pixels. For reference, the official implementation
measured on the 2-core development machine: semi step 9.0 s (batch 2+2, crop 320), supervised
step 3.95 s (batch 2), median.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from cct import losses
from cct.config import from_dict
from cct.model.cct import CCT

CONFIGS = {
    "paper": dict(
        overrides=["model.encoder=resnet50", "model.output_stride=8", "model.decoder=pixelshuffle"],
        classes=21, batch=2, crop=320, warmup=2, steps=5,
    ),
    "embedded": dict(overrides=["data.crop_size=48"], classes=9, batch=8, crop=48, warmup=3, steps=20),
}


def measure(name: str, threads: int, steps: int | None = None) -> dict[str, float]:
    spec = CONFIGS[name]
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    config = from_dict(None, spec["overrides"])
    model = CCT(config.model, {"main": spec["classes"]}, {"main": [0]}).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    b, crop, k = spec["batch"], spec["crop"], spec["classes"]
    x_l, x_u = torch.randn(b, 3, crop, crop), torch.randn(b, 3, crop, crop)
    y_l = torch.randint(0, k, (b, crop, crop))

    def step(mode: str) -> float:
        start = time.perf_counter()
        loss = losses.cross_entropy(model(x_l), y_l)
        if mode != "supervised":
            z = model.encoder(x_u)
            logits_u = model.decode(z)
            if mode == "semi":
                target = torch.softmax(model.to_native(logits_u.detach()), 1).unsqueeze(1)

                def terms(aux, rows):
                    total, count = losses.consistency_sums(aux, target[..., rows, :])
                    return total[None], count[None]

                loss = loss + model.auxiliary_objective(z, logits_u, terms)[0]
            else:  # the unlabelled pass without auxiliary decoders, to isolate their cost
                loss = loss + 0.0 * logits_u.mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return time.perf_counter() - start

    n = steps or spec["steps"]
    result = {}
    for mode in ("supervised", "semi-no-aux", "semi"):
        for _ in range(spec["warmup"]):
            step(mode)
        result[mode] = statistics.median(step(mode) for _ in range(n))
    result["aux_share"] = (result["semi"] - result["semi-no-aux"]) / result["semi"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=sorted(CONFIGS), default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=None)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {args.threads} thread(s), CPU; median seconds per step")
    print(f"{'config':<10} {'supervised':>11} {'semi':>8} {'semi/sup':>9} {'aux share':>10}")
    for name in [args.only] if args.only else list(CONFIGS):
        r = measure(name, args.threads, args.steps)
        print(f"{name:<10} {r['supervised']:>11.3f} {r['semi']:>8.3f} {r['semi'] / r['supervised']:>9.2f} {r['aux_share']:>9.0%}")
    print("official implementation (same machine, 2 threads, paper config): supervised 3.95 s, semi 9.0 s")


if __name__ == "__main__":
    main()
