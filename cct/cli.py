"""The ``cct`` command: ``train``, ``evaluate``, ``predict``, ``splits``, and for the weak-label setting
``cam train``, ``cam infer`` and ``pseudo-labels``.

Exit status (docs/operations.md): 0 done; 2 a bad input (an argument, a config key or value, a file
of the wrong kind or content), with one line naming the file, key or value at fault and what would
be valid; 74 the machine refused (a full disk, a read-only folder, a permission, memory), with one
line saying what to do, nothing written half; 130 interrupted before training started; 143 a
training stopped by a signal (or by ``--stop-with``) after saving its resume state. Anything else,
with a traceback, is a bug."""

from __future__ import annotations

import argparse
import errno
import logging
import os
import re
import sys
from pathlib import Path

from cct.config import CamRunConfig, ConfigError, from_dict, load_config
from cct.io import FAULTS, OutputError, check_output_dir, check_output_file, same_path

EXIT_INPUT, EXIT_SYSTEM, EXIT_INTERRUPTED, EXIT_STOPPED = 2, 74, 130, 143
# errors of the machine (exit 74) rather than of a path the user gave (exit 2)
_SYSTEM_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO, errno.EMFILE}


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``cct train: error: ... (see cct train --help)``, exit 2."""

    def error(self, message: str):
        self.exit(EXIT_INPUT, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


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


def _training_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--stale-resume",
        choices=("refuse", "restart"),
        default="refuse",
        help="a resume state written by a run with other numbers (another config, thread count, device): refuse "
        "it with a message (default), or discard it and start over (the workflow, which reruns a changed run)",
    )
    p.add_argument(
        "--stop-with",
        type=int,
        default=None,
        metavar="PID",
        help="save and stop when process PID ends (the workflow passes its own, so that no training outlives a "
        "killed Snakemake)",
    )


def _check_run_paths(args: argparse.Namespace, config, outputs: tuple[str, ...]) -> Path:
    """Before any work: --out and --resume-dir are folders that can be written, --stop-with names a
    live process, and no file the run writes is one it reads. Returns the resume folder."""
    out = check_output_dir(args.out, "--out", create=True)
    resume = check_output_dir(args.resume_dir if args.resume_dir is not None else out / "resume", "--resume-dir",
                              create=True)
    if args.stop_with is not None:
        from cct.engine import process_alive

        if args.stop_with < 1 or not process_alive(args.stop_with):
            raise ConfigError(f"--stop-with: no process {args.stop_with} is running")
    inputs = [args.config] if args.config else []
    for data in getattr(config, "domains", [config.data]):
        inputs += [data.labeled_list, data.unlabeled_list]
    if isinstance(config.model.pretrained, str):
        inputs.append(config.model.pretrained)
    for name in outputs:
        for source in filter(None, inputs):
            if same_path(out / name, source):
                raise OutputError(
                    f"--out: the run writes {out / name}, which is its input {source}; give another --out"
                )
    return resume


def _count_cpu_from_process_start(args: argparse.Namespace) -> None:
    """A training started from the command line counts its process's CPU time from the start, its
    imports included, as its job's wall time does (:func:`cct.engine.own_process`)."""
    if args.own_process:
        from cct.engine import own_process

        own_process()


def cmd_train(args: argparse.Namespace) -> int:
    config = load_config(args.config, args.overrides)  # before importing torch: a bad config fails in a blink
    resume = _check_run_paths(args, config, ("config.yaml", "checkpoint.pt", "metrics.json"))
    from cct.engine import Interrupted
    from cct.train import train

    _count_cpu_from_process_start(args)

    try:
        metrics = train(config, args.out, resume, stale=args.stale_resume, watch_pid=args.stop_with)
    except Interrupted as exc:
        print(f"cct train: {exc}", file=sys.stderr)
        return EXIT_STOPPED
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
    from cct.engine import check_classes, load_checkpoint
    from cct.evaluate import PROTOCOL, evaluate
    from cct.io import atomic_write_json

    if args.out:
        check_output_file(args.out, "--out", [args.checkpoint, *([args.config] if args.config else [])])
    model, config = load_checkpoint(args.checkpoint)
    name, data = _domain(model, config, args.domain)
    what = "--checkpoint"
    if args.config or args.overrides:  # the data section to evaluate on (a file's, or the checkpoint's with overrides)
        what = "--config" if args.config else "--set"
        data = (
            load_config(args.config, args.overrides).data
            if args.config
            else from_dict(
                {**config.to_dict(), "data": vars(data) | {"name": None}, "extra_domains": []}, args.overrides
            ).data
        )
    source = load_source(data, args.split)
    check_classes(model, name, source.class_names, source.name, what)
    result = evaluate(model, source, torch.device("cpu"), domain=name)
    result.update(eval_protocol=PROTOCOL, split=args.split, checkpoint=str(args.checkpoint), domain=name)
    if args.out:
        atomic_write_json(args.out, result)
    print(f"mIoU {result['miou']:.2f} on {source.name} ({len(source)} images)")
    return 0


IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp"}


def cmd_predict(args: argparse.Namespace) -> int:
    import io

    import numpy as np
    from PIL import Image

    from cct.data.base import default_palette, read_image
    from cct.data.transforms import normalize, to_tensors
    from cct.engine import load_checkpoint
    from cct.evaluate import predict_image
    from cct.io import atomic_write_bytes

    model, config = load_checkpoint(args.checkpoint)
    name, _ = _domain(model, config, args.domain)
    images, out = Path(args.images), Path(args.out)
    if not images.is_dir():
        raise ConfigError(f"--images: not a directory: {images}")
    check_output_dir(args.out, "--out")
    if same_path(out, images):
        raise OutputError(
            f"--out: {out} is the --images folder: the masks would overwrite the images; give another folder"
        )
    files = sorted(p for p in images.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise ConfigError(f"--images: no .png/.jpg images (nor .jpeg/.bmp) in {images}")
    # one mask <stem>.png per image: two images of one stem (x.png, x.jpg) would write one mask
    by_stem: dict[str, Path] = {}
    for path in files:
        if path.stem in by_stem:
            raise ConfigError(
                f"--images: {by_stem[path.stem].name} and {path.name} would both be predicted into {path.stem}.png; "
                "rename or move one of them"
            )
        by_stem[path.stem] = path
    targets = {path: out / f"{path.stem}.png" for path in files}
    if out.is_dir():
        for target in targets.values():  # a target that is a file of the input folder (a link)
            for path in files:
                if target.exists() and same_path(target, path):
                    raise OutputError(f"--out: writing {target} would overwrite the input image {path}")
    palette = default_palette().flatten().tolist()
    norm = normalize()
    for path, target in targets.items():
        array = read_image(path)
        image, _ = to_tensors(array, np.zeros(array.shape[:2], dtype=np.int64))
        pred = predict_image(model, norm(image)[None], model.stride, name)[0]
        mask = Image.fromarray(pred.numpy().astype(np.uint8), mode="P")
        mask.putpalette(palette)
        buffer = io.BytesIO()
        mask.save(buffer, format="PNG")
        atomic_write_bytes(target, buffer.getvalue())
    print(f"{len(files)} masks -> {out}")
    return 0


def cmd_splits(args: argparse.Namespace) -> int:
    from cct.data.base import load_source
    from cct.data.splits import make_split, read_list, validate_split, write_split

    overrides = list(args.overrides)  # the command's numbers pass the config's range checks
    if args.n_labeled is not None:
        overrides.append(f"data.n_labeled={args.n_labeled}")
    if args.split_seed is not None:
        overrides.append(f"data.split_seed={args.split_seed}")
    try:
        config = load_config(args.config, overrides)
    except ConfigError as exc:  # name the option the user gave
        message = str(exc)
        if args.n_labeled is not None:
            message = message.replace("data.n_labeled", "--n-labeled")
        if args.split_seed is not None:
            message = message.replace("data.split_seed", "--split-seed")
        raise ConfigError(message) from None
    out = check_output_dir(args.out, "--out")
    if args.from_lists:
        for path in args.from_lists:
            for name in ("labeled.txt", "unlabeled.txt"):
                if same_path(out / name, path) and Path(path).name != name:
                    raise OutputError(f"--out: writing {out / name} would overwrite the input list {path}")
    source = load_source(config.data, "train")
    if args.from_lists:
        lab_path, unl_path = args.from_lists
        labeled, unlabeled = read_list(lab_path, "--from-lists"), read_list(unl_path, "--from-lists")
        validate_split(labeled, unlabeled, source.ids, f"{lab_path} / {unl_path}")
    else:
        labeled, unlabeled = make_split(
            source.ids, config.data.n_labeled, config.data.split_seed, source.image_labels, source.labeled_first
        )
    write_split(out, labeled, unlabeled)
    print(f"{len(labeled)} labelled, {len(unlabeled)} unlabelled -> {out}")
    return 0


def cmd_embedded(args: argparse.Namespace) -> int:
    from cct.data import embedded

    if args.domain not in embedded.DOMAINS:
        raise ConfigError(f"--domain: {args.domain!r} is not one of {sorted(embedded.DOMAINS)}")
    check_output_dir(args.out, "--out")
    paths = embedded.write(args.out, args.domain)
    print(f"embedded domain {args.domain}: {', '.join(str(p) for p in paths)}")
    return 0


def cmd_cam_train(args: argparse.Namespace) -> int:
    config = load_config(args.config, args.overrides, kind=CamRunConfig)
    resume = _check_run_paths(args, config, ("config.yaml", "checkpoint.pt", "metrics.json"))
    from cct.engine import Interrupted
    from cct.weak.cam import train_cam

    _count_cpu_from_process_start(args)

    try:
        metrics = train_cam(config, args.out, resume, stale=args.stale_resume, watch_pid=args.stop_with)
    except Interrupted as exc:
        print(f"cct cam train: {exc}", file=sys.stderr)
        return EXIT_STOPPED
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
    if args.summary:
        inputs = [p for p in (args.config, args.checkpoint) if p]
        check_output_file(args.summary, "--summary", inputs)
        if Path(args.summary).absolute().is_relative_to(Path(args.out).absolute()):
            raise OutputError(f"--summary: {args.summary} is inside --out {args.out}, which is replaced as a whole")
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
    parser = _Parser(prog="cct", description="Cross-Consistency Training for semi-supervised segmentation")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train and evaluate one run")
    _add_config_args(p, required=False)
    p.add_argument("--out", required=True, help="run directory (config.yaml, checkpoint.pt, metrics.json, tb/)")
    p.add_argument(
        "--resume-dir", default=None, help="resume state folder (default OUT/resume); keep it outside Snakemake outputs"
    )
    _training_args(p)
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
    _training_args(p)
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
    for stream in (sys.stdout, sys.stderr):  # paths that are not UTF-8 print as escapes, not a crash
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    args = build_parser().parse_args(argv)
    args.own_process = argv is None  # this process's command line, not an in-process call
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(name)s: %(message)s"
    )
    prefix = f"cct {args.command}: error:"
    _quiet_thread_faults()
    try:
        return args.func(args)
    except (ConfigError, OutputError) as exc:
        print(f"{prefix} {one_line(exc)}", file=sys.stderr)
        return EXIT_INPUT
    except FloatingPointError as exc:  # the loss diverged (LossLog's guard): the config's learning rate
        print(f"{prefix} {one_line(exc)}", file=sys.stderr)
        return EXIT_INPUT
    except KeyboardInterrupt:
        print(f"cct {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `cct ... | head`
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (Python flushes stdout at exit)
        return 0
    except OSError as exc:
        message = os_fault(exc)
        if message is None:
            raise
        print(f"{prefix} {message}", file=sys.stderr)
        return EXIT_SYSTEM if exc.errno in _SYSTEM_ERRNOS else EXIT_INPUT
    except (MemoryError, RuntimeError) as exc:
        if not out_of_memory(exc):
            raise
        print(
            f"{prefix} out of memory ({one_line(exc)[:160]}): lower train.batch_size_labeled/unlabeled, "
            "data.crop_size or model.width, or run on a machine with more memory; the run resumes from its "
            "last saved state",
            file=sys.stderr,
        )
        return EXIT_SYSTEM


def _quiet_thread_faults() -> None:
    """A worker thread (TensorBoard's event writer) that hits a full disk or a read-only folder would
    print its traceback; the main thread meets the same error at its next write and reports it in
    one line, so the thread's is dropped. Any other error of a thread is printed as before."""
    import threading

    default = threading.excepthook

    def hook(args) -> None:
        if isinstance(args.exc_value, OSError) and os_fault(args.exc_value) is not None:
            return
        default(args)

    threading.excepthook = hook


def one_line(exc: BaseException) -> str:
    """An error's message on one line. A DataLoader worker re-raises an error as "Caught X in
    DataLoader worker process N. Original Traceback ..." with the original's message last."""
    text = str(exc).strip()
    if text.startswith("Caught ") and "Original Traceback" in text:
        last = [line for line in text.splitlines() if line.strip()][-1]
        text = re.sub(r"^[\w.]+(Error|Exception): ", "", last.strip())
    return " ".join(text.split()) or type(exc).__name__


def os_fault(exc: OSError) -> str | None:
    """The one line of an OSError that is not a bug (a full disk, a read-only folder, a permission,
    a wrong kind of path), naming the file and what to do; None for any other."""
    from cct.io import os_error_in

    found = os_error_in(exc)
    if found is None or found.errno not in FAULTS:
        return None
    where = found.filename if found.filename is not None else ""
    if found.filename2 is not None:
        where = f"{where} -> {found.filename2}"
    reason = found.strerror or os.strerror(found.errno)
    return f"{where + ': ' if where else ''}{reason}: {FAULTS[found.errno]}"


def out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is an allocation failure (torch's CPU or CUDA allocator, or Python's)."""
    if isinstance(exc, MemoryError):
        return True
    name = type(exc).__name__
    text = str(exc)
    return name == "OutOfMemoryError" or "can't allocate memory" in text or "not enough memory" in text or (
        "CUDA out of memory" in text
    )
