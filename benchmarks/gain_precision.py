"""How precise is a paired gain? For runs of a baseline and of a method paired by training seed, the
method's gain in mIoU on the runs' validation split, its standard deviation over bootstrap
resamples of the validation images (the measurement's own noise, not the seeds'), and, for the
embedded dataset, the gain on fresh scenes of the same domain that no run has seen (another draw
of the validation set).

    python benchmarks/gain_precision.py \\
        --baseline results/runs/embedded/label_fraction/supervised/20/split0/seed* \\
        --method results/runs/embedded/label_fraction/cct/20/split0/seed* --fresh 1000

Run it from the workflow's directory (a run's config names its data relative to it). Each run is a
directory holding the ``checkpoint.pt`` of ``cct train``; the models are evaluated again, on the
first domain of their checkpoint, single scale and full image as in training (the gain on the
validation split is the runs' own figure, recomputed).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _fresh_source(val, domain: str, n: int, seed: int):
    """``n`` scenes of embedded ``domain`` drawn with generation seed ``seed`` (the dataset's own
    splits use seed 0): the validation Source ``val`` with other scenes."""
    from cct.data import embedded

    data = embedded.generate("val", domain, seed=seed, n=n)
    return dataclasses.replace(val, name=f"embedded-{domain}/fresh{seed}", ids=list(data.ids),
                               arrays=(data.images, data.masks), image_labels=None)


def _miou(cm: np.ndarray) -> float:
    from cct.evaluate import iou_from_confusion, miou_from_iou

    return miou_from_iou(iou_from_confusion(cm))


def confusions(run: str, fresh: int, fresh_seed: int) -> tuple[int, np.ndarray, np.ndarray | None]:
    """(training seed, per-image confusions (N, K, K) on the validation split, on fresh scenes or None)."""
    import torch

    from cct.data.base import load_source
    from cct.engine import load_checkpoint
    from cct.evaluate import image_confusions

    model, config = load_checkpoint(Path(run) / "checkpoint.pt", run)
    domain, data = config.domain_names()[0], config.domains[0]
    val = load_source(data, "val")
    cpu = torch.device("cpu")
    on_val = image_confusions(model, val, cpu, domain=domain)
    on_fresh = None
    if fresh and data.dataset == "embedded":
        on_fresh = image_confusions(model, _fresh_source(val, data.domain, fresh, fresh_seed), cpu, domain=domain)
    return config.train.seed, on_val, on_fresh


def bootstrap_sd(base: np.ndarray, method: np.ndarray, draws: int, rng: np.random.Generator) -> float:
    """Standard deviation of the paired gain over resamples (with replacement) of the images."""
    n = len(base)
    gains = []
    for _ in range(draws):
        pick = rng.integers(0, n, n)
        gains.append(_miou(method[pick].sum(0)) - _miou(base[pick].sum(0)))
    return float(np.std(gains))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--baseline", nargs="+", required=True, help="run directories of the baseline")
    p.add_argument("--method", nargs="+", required=True, help="run directories of the method")
    p.add_argument("--fresh", type=int, default=0, help="fresh scenes to score the gain on (embedded only; 0: none)")
    p.add_argument("--fresh-seed", type=int, default=7,
                   help="generation seed of the fresh scenes (not 0: the dataset's own)")
    p.add_argument("--draws", type=int, default=300, help="bootstrap resamples")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    if args.fresh_seed == 0:
        p.error("--fresh-seed 0 draws the dataset's own scenes; choose another")

    import torch

    torch.set_num_threads(args.threads)

    def by_seed(runs: list[str]) -> dict[int, tuple[np.ndarray, np.ndarray | None]]:
        return {s: (v, f) for s, v, f in (confusions(r, args.fresh, args.fresh_seed) for r in runs)}

    base, meth = by_seed(args.baseline), by_seed(args.method)
    seeds = sorted(set(base) & set(meth))
    if not seeds:
        p.error(f"no training seed is in both --baseline ({sorted(base)}) and --method ({sorted(meth)})")
    rng = np.random.default_rng(0)
    header = f"{'seed':>4} {'baseline':>9} {'method':>7} {'gain':>6} {'boot sd':>7}"
    print(header + ("   fresh gain" if args.fresh else ""))
    gains, sds, fresh_gains = [], [], []
    for s in seeds:
        (bv, bf), (mv, mf) = base[s], meth[s]
        b, m = _miou(bv.sum(0)), _miou(mv.sum(0))
        gains.append(m - b)
        sds.append(bootstrap_sd(bv, mv, args.draws, rng))
        line = f"{s:>4} {b:9.2f} {m:7.2f} {m - b:+6.2f} {sds[-1]:7.2f}"
        if bf is not None and mf is not None:
            fresh_gains.append(_miou(mf.sum(0)) - _miou(bf.sum(0)))
            line += f"   {fresh_gains[-1]:+10.2f}"
        print(line)

    def summary(v: list[float]) -> str:
        spread = f" ± {statistics.stdev(v):.2f}" if len(v) > 1 else ""
        return f"{statistics.mean(v):+.2f}{spread}, positive on {sum(x > 0 for x in v)} of {len(v)}"

    n_val = len(next(iter(base.values()))[0])
    print(f"gain on the validation split ({n_val} images): {summary(gains)}; "
          f"bootstrap sd of a seed's gain: mean {statistics.mean(sds):.2f}")
    if fresh_gains:
        corr = f", correlation with the split's {np.corrcoef(gains, fresh_gains)[0, 1]:.2f}" if len(seeds) > 2 else ""
        print(f"gain on {args.fresh} fresh scenes (seed {args.fresh_seed}): {summary(fresh_gains)}{corr}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
