"""The ``cct`` command: ``train``, ``evaluate``, ``predict``, ``splits``, and for the weak-label setting
``cam train``, ``cam infer`` and ``pseudo-labels``. Every bad input exits with status 2 and one line
naming the file, key or value at fault."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from cct.config import CamRunConfig, ConfigError, from_dict, load_config


def _add_config_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument(
        "--config",
        required=required,
        help="YAML run config (nested keys, see config/README.md); defaults: the embedded benchmark",
    )
    p.add_argument(
        "--set",
        dest="overrides",
        nargs="+",
        action="extend",
        default=[],
        metavar="KEY=VALUE",
        help="override config keys, e.g. --set train.mode=supervised model.aux.vat=0",
    )


def cmd_train(args: argparse.Namespace) -> int:
    from cct.engine import Interrupted
    from cct.train import train

    config = load_config(args.config, args.overrides)
    try:
        metrics = train(config, args.out, args.resume_dir)
    except Interrupted as exc:
        print(f"cct train: {exc}", file=sys.stderr)
        return 143
    if not metrics:  # a torchrun rank other than 0: rank 0 reports
        return 0
    print(
        f"mIoU {metrics['miou']:.2f} (best {metrics['best_miou']:.2f} at {metrics['best_iteration']}) -> "
        f"{args.out}/metrics.json"
    )
    return 0


def _domain(model, config, name: str | None) -> tuple[str, object]:
    """(domain name, its DataConfig) of a checkpoint: ``name`` or its first domain."""
    names = config.domain_names()
    name = name or names[0]
    if name not in names or name not in model.heads:
        raise ConfigError(f"--domain: {name!r} is not a domain of this checkpoint (its domains: {names})")
    return name, config.domains[names.index(name)]


def cmd_evaluate(args: argparse.Namespace) -> int:
    import torch

    from cct.data.base import load_source
    from cct.engine import load_checkpoint
    from cct.evaluate import PROTOCOL, evaluate
    from cct.io import atomic_write_json

    model, config = load_checkpoint(args.checkpoint)
    name, data = _domain(model, config, args.domain)
    if args.config or args.overrides:  # the data section to evaluate on (a file's, or the checkpoint's with overrides)
        data = (
            load_config(args.config, args.overrides).data
            if args.config
            else from_dict(
                {**config.to_dict(), "data": vars(data) | {"name": None}, "extra_domains": []}, args.overrides
            ).data
        )
    source = load_source(data, args.split)
    result = evaluate(model, source, torch.device("cpu"), domain=name)
    result.update(eval_protocol=PROTOCOL, split=args.split, checkpoint=str(args.checkpoint), domain=name)
    if args.out:
        atomic_write_json(args.out, result)
    print(f"mIoU {result['miou']:.2f} on {source.name} ({len(source)} images)")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    import numpy as np
    from PIL import Image

    from cct.data.base import default_palette
    from cct.data.transforms import normalize, to_tensors
    from cct.engine import load_checkpoint
    from cct.evaluate import predict_image

    model, config = load_checkpoint(args.checkpoint)
    name, _ = _domain(model, config, args.domain)
    images = Path(args.images)
    if not images.is_dir():
        raise ConfigError(f"--images: not a directory: {images}")
    files = sorted(p for p in images.iterdir() if p.suffix.lower() in {".png", ".jpg", ".jpeg", ".bmp"})
    if not files:
        raise ConfigError(f"--images: no .png/.jpg images in {images}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    palette = default_palette().flatten().tolist()
    norm = normalize()
    for path in files:
        try:
            array = np.asarray(Image.open(path).convert("RGB"))
        except OSError as exc:
            raise ConfigError(f"--images: cannot read {path} ({exc})") from exc
        image, _ = to_tensors(array, np.zeros(array.shape[:2], dtype=np.int64))
        pred = predict_image(model, norm(image)[None], model.stride, name)[0]
        mask = Image.fromarray(pred.numpy().astype(np.uint8), mode="P")
        mask.putpalette(palette)
        mask.save(out / f"{path.stem}.png")
    print(f"{len(files)} masks -> {out}")
    return 0


def cmd_splits(args: argparse.Namespace) -> int:
    from cct.data.base import load_source
    from cct.data.splits import make_split, read_list, validate_split, write_split

    config = load_config(args.config, args.overrides)
    source = load_source(config.data, "train")
    if args.from_lists:
        lab_path, unl_path = args.from_lists
        labeled, unlabeled = read_list(lab_path, "--from-lists"), read_list(unl_path, "--from-lists")
        validate_split(labeled, unlabeled, source.ids, f"{lab_path} / {unl_path}")
    else:
        n = args.n_labeled if args.n_labeled is not None else config.data.n_labeled
        seed = args.split_seed if args.split_seed is not None else config.data.split_seed
        labeled, unlabeled = make_split(source.ids, n, seed, source.image_labels, source.labeled_first)
    write_split(args.out, labeled, unlabeled)
    print(f"{len(labeled)} labelled, {len(unlabeled)} unlabelled -> {args.out}")
    return 0


def cmd_embedded(args: argparse.Namespace) -> int:
    from cct.data import embedded

    if args.domain not in embedded.DOMAINS:
        raise ConfigError(f"--domain: {args.domain!r} is not one of {sorted(embedded.DOMAINS)}")
    paths = embedded.write(args.out, args.domain)
    print(f"embedded domain {args.domain}: {', '.join(str(p) for p in paths)}")
    return 0


def cmd_cam_train(args: argparse.Namespace) -> int:
    from cct.engine import Interrupted
    from cct.weak.cam import train_cam

    config = load_config(args.config, args.overrides, kind=CamRunConfig)
    try:
        metrics = train_cam(config, args.out, args.resume_dir)
    except Interrupted as exc:
        print(f"cct cam train: {exc}", file=sys.stderr)
        return 143
    print(f"image-level accuracy {metrics['val_label_accuracy']:.1f}% on val -> {args.out}/checkpoint.pt")
    return 0


def cmd_cam_infer(args: argparse.Namespace) -> int:
    from cct.weak.cam import infer_cams

    summary = infer_cams(args.checkpoint, args.out, args.overrides)
    print(f"CAMs of {summary['n_images']} images -> {args.out}")
    return 0


def cmd_pseudo_labels(args: argparse.Namespace) -> int:
    from cct.weak.cam import load_cam
    from cct.weak.pseudo import make_pseudo_labels

    if args.config is None and args.checkpoint is None:
        raise ConfigError("give --config (a CAM config) or --checkpoint (the CAM checkpoint, whose config is used)")
    if args.config is not None:
        config = load_config(args.config, args.overrides, kind=CamRunConfig)
    else:
        config = from_dict(load_cam(args.checkpoint)[1].to_dict(), args.overrides, kind=CamRunConfig)
    summary = make_pseudo_labels(config, args.cams, args.out)
    if args.summary:
        from cct.io import atomic_write_json

        atomic_write_json(args.summary, summary)
    print(
        f"pseudo labels of {summary['n_images']} images: mIoU {summary['miou']:.2f} on the "
        f"{100 - summary['ignored_fraction']:.1f}% of pixels they label -> {args.out}"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cct", description="Cross-Consistency Training for semi-supervised segmentation"
    )
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train and evaluate one run")
    _add_config_args(p, required=False)
    p.add_argument("--out", required=True, help="run directory (config.yaml, checkpoint.pt, metrics.json, tb/)")
    p.add_argument(
        "--resume-dir", default=None, help="resume state folder (default OUT/resume); keep it outside Snakemake outputs"
    )
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="evaluate a checkpoint on a split")
    p.add_argument("--checkpoint", required=True)
    _add_config_args(p, required=False)
    p.add_argument("--split", default="val")
    p.add_argument(
        "--domain", default=None, help="the domain to evaluate (a multi-domain checkpoint; default: its first)"
    )
    p.add_argument("--out", default=None, help="write scores as JSON")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("predict", help="colour-coded PNG masks for a folder of images")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--images", required=True)
    p.add_argument(
        "--domain", default=None, help="whose decoder predicts (a multi-domain checkpoint; default: its first)"
    )
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("splits", help="write labelled/unlabelled lists (nested across label counts)")
    _add_config_args(p, required=False)
    p.add_argument("--n-labeled", type=int, default=None)
    p.add_argument("--split-seed", type=int, default=None)
    p.add_argument("--from-lists", nargs=2, metavar=("LABELED", "UNLABELED"), help="validate and copy user lists")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_splits)

    p = sub.add_parser("embedded", help="generate the embedded dataset's scenes once, for runs to read (data.root)")
    p.add_argument("--domain", default="a", help="visual domain (a | b)")
    p.add_argument("--out", required=True, help="folder of embedded-<domain>-<split>.npz")
    p.set_defaults(func=cmd_embedded)

    cam = sub.add_parser("cam", help="the CAM classifier of the weak-label setting").add_subparsers(
        dest="cam_command", required=True
    )
    p = cam.add_parser("train", help="train the CAM classifier on the training set's image-level labels")
    p.add_argument(
        "--config", default=None, help="YAML CAM config (data, model, train, infer, pseudo; see config/README.md)"
    )
    p.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE")
    p.add_argument("--out", required=True, help="folder for config.yaml, checkpoint.pt, metrics.json")
    p.add_argument("--resume-dir", default=None, help="resume state folder (default OUT/resume)")
    p.set_defaults(func=cmd_cam_train, command="cam train")
    p = cam.add_parser("infer", help="multi-scale, flipped CAMs of every training image for its known classes")
    p.add_argument("--checkpoint", required=True, help="checkpoint.pt of `cct cam train`")
    p.add_argument(
        "--set",
        dest="overrides",
        nargs="+",
        action="extend",
        default=[],
        metavar="KEY=VALUE",
        help="override keys of the checkpoint's config, e.g. infer.scales=[1.0] train.device=cpu",
    )
    p.add_argument("--out", required=True, help="folder of <id>.npz CAMs and cams.json")
    p.set_defaults(func=cmd_cam_infer, command="cam infer")

    p = sub.add_parser("pseudo-labels", help="threshold CAMs into pseudo pixel labels (PNG) and score them")
    p.add_argument("--cams", required=True, help="folder written by `cct cam infer`")
    p.add_argument("--config", default=None, help="YAML CAM config (its data and pseudo sections are used)")
    p.add_argument("--checkpoint", default=None, help="or: the CAM checkpoint, whose config is used")
    p.add_argument(
        "--set",
        dest="overrides",
        nargs="+",
        action="extend",
        default=[],
        metavar="KEY=VALUE",
        help="e.g. pseudo.fg_threshold=0.3 pseudo.bg_threshold=0.05",
    )
    p.add_argument("--out", required=True, help="folder of <id>.png pseudo labels and summary.json")
    p.add_argument("--summary", default=None, help="also write summary.json here (outside OUT)")
    p.set_defaults(func=cmd_pseudo_labels)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(name)s: %(message)s"
    )
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"cct {args.command}: error: {exc}", file=sys.stderr)
        return 2
