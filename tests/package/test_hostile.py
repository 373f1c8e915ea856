"""Hostile input and faults (issue #16): every bad input of a careless or hostile user gets one line
naming the file, key or value and what would be valid (exit 2), as early as possible; no traceback
for a user's mistake, no silent wrong number, no user file overwritten; faults of the machine (a full
disk, a read-only folder) get one line saying what to do (exit 74) and a rerun resumes.

Each test's name says the class of input or fault it covers."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cct.cli import main, one_line
from cct.config import ConfigError, from_dict, load_config
from cct.data import embedded

from .conftest import TINY, cct_env, popen_cct, run_cct


def one_error_line(result, command: str, status: int = 2) -> str:
    """The run failed with ``status`` and exactly one non-empty stderr line (log lines of the run
    aside), which is returned; no traceback anywhere."""
    assert result.returncode == status, (result.returncode, result.stderr[-3000:])
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    errors = [line for line in result.stderr.splitlines() if line.startswith(f"cct {command}: error: ")]
    assert len(errors) == 1, result.stderr
    others = [line for line in result.stderr.splitlines()
              if line.strip() and not line.startswith(f"cct {command}: error: ") and " cct." not in line
              and "Warning" not in line and "warnings.warn" not in line]
    assert not others, others
    return errors[0]


def in_process(capsys, *argv: str) -> tuple[int, str]:
    """``cct ARGV`` in this process: (status, its one error line)."""
    status = main(list(argv))
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("cct ")]
    assert "Traceback" not in err
    return status, (lines[-1] if lines else "")


# ------------------------------------------------------------------------------------------------
# Config values: types, ranges, NaN/inf, huge values, empty strings, paths (at the door, exit 2)

BAD_VALUES = [
    ("loss.unsupervised_w=-1", "loss.unsupervised_w", ">= 0"),
    ("loss.rampup=-0.1", "loss.rampup", "[0.0, 1.0]"),
    ("loss.rampup=2", "loss.rampup", "[0.0, 1.0]"),
    ("optim.poly_power=-0.9", "optim.poly_power", ">= 0"),
    ("optim.momentum=1.5", "optim.momentum", "[0.0, 1.0)"),
    ("optim.momentum=-0.1", "optim.momentum", "[0.0, 1.0)"),
    ("optim.weight_decay=-1.0e-4", "optim.weight_decay", ">= 0"),
    ("optim.lr=.nan", "optim.lr", "finite"),
    ("optim.lr=.inf", "optim.lr", "finite"),
    ("loss.unsupervised_w=-.inf", "loss.unsupervised_w", "finite"),
    ("optim.lr=1e-2", "optim.lr", "1.0e-3"),  # YAML reads 1e-2 as text: the hint says how to write it
    ("optim.lr=1" + "0" * 400, "optim.lr", "too large"),
    ("train.seed=-1", "train.seed", "[0, "),
    ("train.seed=99999999999999999999999", "train.seed", "[0, "),
    ("data.split_seed=-3", "data.split_seed", "[0, "),
    ("model.width=0", "model.width", "[1, 256]"),
    ("model.width=100000", "model.width", "[1, 256]"),
    ("data.crop_size=4000", "data.crop_size", "[1, 2048]"),
    ("data.crop_size=0", "data.crop_size", "[1, 2048]"),
    ("data.base_size=0", "data.base_size", "[1, 8192]"),
    ("data.base_size=-400", "data.base_size", "[1, 8192]"),
    ("data.scale_range=[0.5, 1000]", "data.scale_range", "hi <= 4.0"),
    ("data.scale_range=[0, 1]", "data.scale_range", "0 < lo"),
    ("data.num_workers=-1", "data.num_workers", "[0, 64]"),
    ("data.num_workers=100000", "data.num_workers", "[0, 64]"),
    ("model.aux.vat=100000", "model.aux.vat", "[0, 64]"),
    ("model.aux.dropout=-2", "model.aux.dropout", "[0, 64]"),
    ("model.perturbation.vat_iterations=-1", "model.perturbation.vat_iterations", "[0, 10]"),
    ("model.perturbation.feature_noise_range=-0.3", "model.perturbation.feature_noise_range", ">= 0"),
    ("model.perturbation.feature_drop_draw=pixel", "model.perturbation.feature_drop_draw", "['sample', 'batch']"),
    ("model.perturbation.cutout_min_size=-1", "model.perturbation.cutout_min_size", ">= 0"),
    ("loss.pairwise_decoders=1", "loss.pairwise_decoders", "0 (all) or >= 2"),
    ("loss.pairwise_w=-1", "loss.pairwise_w", ">= 0"),
    ("loss.abce_final_threshold=0", "loss.abce_final_threshold", "(0.0, 1.0]"),
    ("train.threads=0", "train.threads", "[1, 1024]"),
    ("train.threads=100000", "train.threads", "[1, 1024]"),
    ("train.batch_size_labeled=1", "train.batch_size_labeled", "batch norm"),
    ("train.batch_size_unlabeled=10000000", "train.batch_size_unlabeled", "[2, 1024]"),
    ("train.iterations=0", "train.iterations", ">= 1"),
    ("train.eval_interval=-5", "train.eval_interval", ">= 1"),
    ("weak.loss_w=-0.4", "weak.loss_w", ">= 0"),
    ("data.root=''", "data.root", "not a path"),
    ("data.root='   '", "data.root", "not a path"),
    ("data.labeled_list=''", "data.labeled_list", "not a path"),
    ("model.pretrained=''", "model.pretrained", "not a path"),
    ("data.domain=''", "data.domain", "not a domain name"),
    ("data.pad_fill=grey", "data.pad_fill", "['zero', 'mean']"),
    ("data.background_classes=[-1]", "data.background_classes", "0..254"),
    ("data.n_labeled=0", "data.n_labeled", ">= 1"),
    ("train.iterations=1e3", "train.iterations", "integer"),
    ("train.iterations=true", "train.iterations", "integer"),
    ("data=5", "data", "mapping"),
    ("a..b=1", "a..b", "not a config key"),
]


@pytest.mark.parametrize("override, key, valid", BAD_VALUES, ids=[b[0][:40] for b in BAD_VALUES])
def test_out_of_range_or_ill_typed_config_values_are_refused_naming_the_key(capsys, tmp_path, override, key, valid):
    status, line = in_process(capsys, "train", "--out", str(tmp_path / "r"), "--set", override)
    assert status == 2
    assert line.startswith("cct train: error: ") and key in line and valid in line, line
    assert not (tmp_path / "r").exists()  # nothing created


def test_cam_config_values_are_range_checked_too(capsys, tmp_path):
    for override, key in [("train.momentum=2", "train.momentum"), ("train.crop_size=5000", "train.crop_size"),
                          ("train.seed=-1", "train.seed"), ("infer.scales=[100]", "infer.scales"),
                          ("train.lr=.nan", "train.lr"), ("model.width=0", "model.width")]:
        status, line = in_process(capsys, "cam", "train", "--out", str(tmp_path / "c"), "--set", override)
        assert status == 2 and key in line, line


def test_a_bad_value_fails_before_torch_is_imported(tmp_path):
    """The door is cheap: a bad config exits before the seconds of importing torch."""
    out = str(tmp_path / "x")
    code = (f"import sys; from cct.cli import main; rc = main(['train', '--out', {out!r}, '--set', 'optim.lr=-1']); "
            "print('torch' in sys.modules); sys.exit(rc)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=cct_env(), timeout=60)
    assert result.returncode == 2 and result.stdout.strip() == "False", result.stderr


# ------------------------------------------------------------------------------------------------
# Config files: empty, comments only, not UTF-8, duplicate keys, a folder, a device, huge, not YAML


@pytest.mark.parametrize("content, message", [
    (b"", "holds no keys"),
    (b"# only a comment\n\n", "holds no keys"),
    (b"train:\n  iterations: 5\n\xff\xfe bad\n", "not UTF-8 text (byte 0xff"),
    (b"train:\n  iterations: 5\n  iterations: 6\n", "key 'iterations' is given twice"),
    (b"train: {iterations: [1,\n", "not valid YAML"),
    (b"- 1\n- 2\n", "mapping"),
    (b"!!python/object/apply:os.system ['echo hacked']\n", "not valid YAML"),
    (b"[" * 5000 + b"]" * 5000, "not valid YAML"),
], ids=["empty", "comments", "latin1", "duplicate", "broken", "list", "python-tag", "deep"])
def test_bad_config_files_are_refused_naming_the_file(capsys, tmp_path, content, message):
    path = tmp_path / "run.yaml"
    path.write_bytes(content)
    status, line = in_process(capsys, "train", "--config", str(path), "--out", str(tmp_path / "r"))
    assert status == 2 and message in line and str(path) in line, line
    assert not (tmp_path / "r").exists()


def test_config_paths_that_are_not_files_are_refused(capsys, tmp_path):
    (tmp_path / "folder.yaml").mkdir()
    for path, message in [(tmp_path / "folder.yaml", "is a folder"), (Path("/dev/null"), "not a regular file"),
                          (tmp_path / "missing.yaml", "not found")]:
        status, line = in_process(capsys, "train", "--config", str(path), "--out", str(tmp_path / "r"))
        assert status == 2 and message in line, line
    huge = tmp_path / "huge.yaml"
    huge.write_bytes(b"# " + b"x" * (2 << 20) + b"\n")
    status, line = in_process(capsys, "train", "--config", str(huge), "--out", str(tmp_path / "r"))
    assert status == 2 and "too many for a YAML config file" in line, line


def test_config_file_with_a_bom_and_non_ascii_comment_loads(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_bytes("\ufeff# réglages\ntrain:\n  iterations: 7\n".encode())
    assert load_config(path).train.iterations == 7


def test_arguments_that_are_not_utf8_give_one_line(tmp_path):
    """A path given as bytes that are not UTF-8 (argv on Linux) is named, escaped, in the one line."""
    bad = os.fsencode(str(tmp_path)) + b"/\xff.yaml"
    result = subprocess.run([sys.executable, "-m", "cct", "train", "--config", bad, "--out", str(tmp_path / "r")],
                            capture_output=True, env=cct_env(), timeout=60)
    assert result.returncode == 2, result.stderr
    err = result.stderr.decode("utf-8", "replace")
    assert "Traceback" not in err and "config file not found" in err and "\\udcff" in err


def test_argument_errors_are_one_line(tmp_path):
    result = run_cct("train", "--stale-resume", "maybe", "--out", str(tmp_path / "x"))
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1 and "--stale-resume" in lines[0] and "--help" in lines[0]


# ------------------------------------------------------------------------------------------------
# Output paths: of the wrong kind, unwritable, or an input of the command (nothing overwritten)


def test_train_refuses_out_or_resume_dir_that_is_a_file(capsys, tmp_path):
    (tmp_path / "file").write_text("mine")
    status, line = in_process(capsys, "train", "--out", str(tmp_path / "file"), "--set", *TINY)
    assert status == 2 and "--out" in line and "is a file" in line
    status, line = in_process(capsys, "train", "--out", str(tmp_path / "file" / "sub"), "--set", *TINY)
    assert status == 2 and "--out" in line and "is a file, not a folder" in line
    status, line = in_process(capsys, "train", "--out", str(tmp_path / "r"), "--resume-dir", str(tmp_path / "file"),
                              "--set", *TINY)
    assert status == 2 and "--resume-dir" in line
    assert (tmp_path / "file").read_text() == "mine"


def test_train_refuses_out_that_would_overwrite_its_config_file(capsys, tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("train: {iterations: 2}\n")
    status, line = in_process(capsys, "train", "--config", str(config), "--out", str(tmp_path), "--set", *TINY)
    assert status == 2 and "its input" in line and str(config) in line
    assert config.read_text() == "train: {iterations: 2}\n"


def test_train_refuses_a_stop_with_process_that_does_not_exist(capsys, tmp_path):
    status, line = in_process(capsys, "train", "--out", str(tmp_path / "r"), "--stop-with", "999999999",
                              "--set", *TINY)
    assert status == 2 and "--stop-with" in line


def test_evaluate_refuses_out_that_is_its_checkpoint_or_a_folder(capsys, tiny_checkpoint, tmp_path):
    before = tiny_checkpoint.read_bytes()
    status, line = in_process(capsys, "evaluate", "--checkpoint", str(tiny_checkpoint), "--out", str(tiny_checkpoint))
    assert status == 2 and "also an input" in line
    assert tiny_checkpoint.read_bytes() == before
    status, line = in_process(capsys, "evaluate", "--checkpoint", str(tiny_checkpoint), "--out", str(tmp_path))
    assert status == 2 and "is a folder" in line


def write_photos(folder: Path, names: list[str]) -> dict[str, bytes]:
    folder.mkdir(parents=True, exist_ok=True)
    images = embedded.generate("val", "a").images
    for i, name in enumerate(names):
        Image.fromarray(images[i]).save(folder / name)
    return {name: (folder / name).read_bytes() for name in names}


def test_predict_refuses_out_equal_to_images(tiny_checkpoint, tmp_path):
    photos = write_photos(tmp_path / "photos", ["a.png", "b.jpg"])
    for out in (tmp_path / "photos", tmp_path / "photos" / ".." / "photos"):
        line = one_error_line(run_cct("predict", "--checkpoint", str(tiny_checkpoint), "--images",
                                      str(tmp_path / "photos"), "--out", str(out)), "predict")
        assert "--out" in line and "overwrite the images" in line
    assert {n: (tmp_path / "photos" / n).read_bytes() for n in photos} == photos  # untouched
    (tmp_path / "link").symlink_to(tmp_path / "photos")
    status = main(["predict", "--checkpoint", str(tiny_checkpoint), "--images", str(tmp_path / "photos"),
                   "--out", str(tmp_path / "link")])
    assert status == 2
    assert {n: (tmp_path / "photos" / n).read_bytes() for n in photos} == photos


def test_predict_refuses_two_images_of_one_stem(capsys, tiny_checkpoint, tmp_path):
    write_photos(tmp_path / "photos", ["x.png", "x.jpg", "y.png"])
    status, line = in_process(capsys, "predict", "--checkpoint", str(tiny_checkpoint), "--images",
                              str(tmp_path / "photos"), "--out", str(tmp_path / "masks"))
    assert status == 2 and "x.jpg" in line and "x.png" in line
    assert not (tmp_path / "masks").exists() or not any((tmp_path / "masks").iterdir())


def test_predict_refuses_out_that_is_a_file_and_images_that_are_not_images(capsys, tiny_checkpoint, tmp_path):
    write_photos(tmp_path / "photos", ["a.png"])
    (tmp_path / "file").write_text("mine")
    status, line = in_process(capsys, "predict", "--checkpoint", str(tiny_checkpoint), "--images",
                              str(tmp_path / "photos"), "--out", str(tmp_path / "file"))
    assert status == 2 and "is a file" in line and (tmp_path / "file").read_text() == "mine"
    for name, data in [("empty.png", b""), ("text.jpg", b"not an image"), ("cut.png", (tmp_path / "photos" /
                                                                                      "a.png").read_bytes()[:60])]:
        bad = tmp_path / f"bad_{name}"
        bad.mkdir()
        (bad / name).write_bytes(data)
        status, line = in_process(capsys, "predict", "--checkpoint", str(tiny_checkpoint), "--images", str(bad),
                                  "--out", str(tmp_path / "m"))
        assert status == 2 and name in line, line


# ------------------------------------------------------------------------------------------------
# Checkpoints: empty, truncated, foreign, of another kind, in every command that reads one


@pytest.mark.parametrize("content", [b"", b"\x80\x04", b"PK\x03\x04garbage", b"hello"], ids=["empty", "pickle",
                                                                                            "zip", "text"])
def test_a_broken_checkpoint_gives_one_line_in_every_command(capsys, tmp_path, content):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(content)
    (tmp_path / "imgs").mkdir()
    (tmp_path / "cams").mkdir()
    for argv in (["evaluate", "--checkpoint", str(bad)],
                 ["predict", "--checkpoint", str(bad), "--images", str(tmp_path / "imgs"), "--out",
                  str(tmp_path / "m")],
                 ["cam", "infer", "--checkpoint", str(bad), "--out", str(tmp_path / "c")],
                 ["pseudo-labels", "--checkpoint", str(bad), "--cams", str(tmp_path / "cams"), "--out",
                  str(tmp_path / "p")],
                 ["train", "--out", str(tmp_path / "r"), "--set", *TINY, f"model.pretrained={bad}"]):
        status, line = in_process(capsys, *argv)
        assert status == 2, argv
        assert str(bad) in line and ("--checkpoint" in line or "model.pretrained" in line), line


def test_a_foreign_or_unsafe_file_is_named_in_a_few_words(capsys, tmp_path):
    """Not torch.save's format, or a pickle of Python objects: one short reason, not torch's paragraph."""
    text, unsafe = tmp_path / "metrics.json", tmp_path / "unsafe.pt"
    text.write_text('{"miou": 1.0}')
    import pickle

    unsafe.write_bytes(pickle.dumps({"f": print}))
    status, line = in_process(capsys, "evaluate", "--checkpoint", str(text))
    assert status == 2 and "not a file written by torch.save" in line, line
    status, line = in_process(capsys, "evaluate", "--checkpoint", str(unsafe))
    assert status == 2 and "only weights-only files are read" in line and "PyTorch 2.6" not in line, line


def test_a_pretrained_encoder_of_another_width_names_the_shapes(capsys, tiny_checkpoint, tmp_path):
    trained = yaml_width(tiny_checkpoint)
    status, line = in_process(capsys, "train", "--out", str(tmp_path / "r"), "--set", *TINY,
                              f"model.pretrained={tiny_checkpoint}", f"model.width={trained * 2}")
    assert status == 2 and "does not fit this encoder" in line and "model.width" in line, line
    assert f"torch.Size([{trained}, 3, 3, 3]) from checkpoint" in line, line
    assert f"current model is torch.Size([{trained * 2}, 3, 3, 3])" in line, line


def yaml_width(checkpoint: Path) -> int:
    import yaml

    return int(yaml.safe_load((checkpoint.parent / "config.yaml").read_text())["model"]["width"])


@pytest.mark.parametrize("text", ["nan", "inf", "-inf", ".nan", "-.inf"])
def test_a_non_finite_number_is_refused_as_such(capsys, tmp_path, text):
    status, line = in_process(capsys, "train", "--out", str(tmp_path / "r"), "--set", *TINY, f"optim.lr={text}")
    assert status == 2 and "optim.lr: must be a finite number" in line, line


def test_a_checkpoint_of_another_kind_is_named_as_such(capsys, tiny_checkpoint, tmp_path):
    status, line = in_process(capsys, "cam", "infer", "--checkpoint", str(tiny_checkpoint), "--out",
                              str(tmp_path / "c"))
    assert status == 2 and "not a cct CAM checkpoint" in line
    state = tiny_checkpoint.parent / "resume" / "state.pt"
    status, line = in_process(capsys, "evaluate", "--checkpoint", str(state))
    assert status == 2 and "is a resume state" in line and "checkpoint.pt" in line


def test_a_diverging_loss_is_one_line_naming_the_key(tmp_path):
    line = one_error_line(run_cct("train", "--out", str(tmp_path), "--set", *TINY, "train.iterations=30",
                                  "optim.lr=1000000"), "train")
    assert "loss became" in line and "lower optim.lr" in line


# ------------------------------------------------------------------------------------------------
# Silent wrong numbers: evaluating on other classes, an unknown split


def test_evaluate_refuses_a_domain_with_other_classes(capsys, tiny_checkpoint, tmp_path):
    """The issue's case: a domain-a checkpoint scored on domain b (other classes) gave mIoU 1.70, exit 0."""
    status, line = in_process(capsys, "evaluate", "--checkpoint", str(tiny_checkpoint), "--set", "data.domain=b")
    assert status == 2 and "--set" in line and "embedded-b/val" in line and "'main' was trained on" in line, line
    config = tmp_path / "b.yaml"
    config.write_text("data: {dataset: embedded, domain: b}\n")
    status, line = in_process(capsys, "evaluate", "--checkpoint", str(tiny_checkpoint), "--config", str(config),
                              "--out", str(tmp_path / "s.json"))
    assert status == 2 and "--config" in line and not (tmp_path / "s.json").exists()
    status, _ = in_process(capsys, "evaluate", "--checkpoint", str(tiny_checkpoint), "--set", "data.domain=a")
    assert status == 0


def test_evaluate_refuses_a_split_the_dataset_does_not_have(capsys, tiny_checkpoint):
    status, line = in_process(capsys, "evaluate", "--checkpoint", str(tiny_checkpoint), "--split", "test")
    assert status == 2 and "'test'" in line and "['train', 'val']" in line


# ------------------------------------------------------------------------------------------------
# Data checked before the first iteration: a bad validation mask, an all-ignored val set


def embedded_root(tmp_path: Path, fix=None) -> Path:
    root = tmp_path / "data"
    embedded.write(root, "a")
    if fix is not None:
        path = embedded.cache_file(root, "val", "a")
        with np.load(path) as f:
            arrays = {k: f[k] for k in f.files}
        fix(arrays)
        np.savez(path, **arrays)
    return root


def test_a_bad_validation_mask_is_found_before_the_first_iteration(tmp_path):
    def poison(arrays):
        arrays["masks"] = arrays["masks"].copy()
        arrays["masks"][137, 5, 5] = 42

    root = embedded_root(tmp_path, poison)
    result = run_cct("train", "--out", str(tmp_path / "r"), "--set", *TINY, f"data.root={root}",
                     "train.iterations=5000", "train.eval_interval=4000")
    line = one_error_line(result, "train")
    assert "validation set" in line and "a_val_00137" in line and "mask value 42" in line
    assert "iteration" not in result.stderr.replace("eval_interval", "")  # no step was taken
    assert not (tmp_path / "r" / "metrics.json").exists()


def test_a_validation_set_without_labelled_pixels_is_refused(tmp_path):
    def blank(arrays):
        arrays["masks"] = np.full_like(arrays["masks"], 255)

    root = embedded_root(tmp_path, blank)
    line = one_error_line(run_cct("train", "--out", str(tmp_path / "r"), "--set", *TINY, f"data.root={root}",
                                  "train.iterations=2"), "train")
    assert "no labelled pixel" in line


def test_one_line_of_a_dataloader_worker_error():
    wrapped = ConfigError("Caught ConfigError in DataLoader worker process 0.\nOriginal Traceback (most recent call "
                          "last):\n  File \"x.py\", line 1, in f\ncct.config.ConfigError: data: mask value 9 is bad\n")
    assert one_line(wrapped) == "data: mask value 9 is bad"
    assert one_line(ConfigError("")) == "ConfigError"


# ------------------------------------------------------------------------------------------------
# Resume: a state of other numbers (threads, config), a corrupt or tampered state, a second process

SHORT = TINY + ["train.iterations=12", "train.eval_interval=6", "train.checkpoint_interval=2"]


def numbers(run_dir: Path) -> dict:
    m = json.loads((run_dir / "metrics.json").read_text())
    return {k: m[k] for k in ("miou", "best_miou", "per_class_iou", "confusion_matrix", "history")}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("reference")
    result = run_cct("train", "--out", str(out), "--set", *SHORT, timeout=300)
    assert result.returncode == 0, result.stderr
    return out


def test_resume_with_other_threads_is_refused(reference, tmp_path):
    """The issue's case: 1 vs 2 threads give other CPU numbers; a resume across them matched neither."""
    shutil.copytree(reference / "resume", tmp_path / "resume")
    state = (tmp_path / "resume" / "state.pt").read_bytes()
    line = one_error_line(run_cct("train", "--out", str(tmp_path), "--set", *SHORT, "train.threads=2"), "train")
    assert "train.threads: 1 -> 2" in line and "--stale-resume restart" in line
    assert (tmp_path / "resume" / "state.pt").read_bytes() == state  # refused, not touched
    assert not (tmp_path / "metrics.json").exists()


def test_resume_with_other_numeric_keys_is_refused_naming_each(reference, tmp_path):
    shutil.copytree(reference / "resume", tmp_path / "resume")
    line = one_error_line(run_cct("train", "--out", str(tmp_path), "--set", *SHORT, "optim.lr=0.01",
                                  "train.compile=true"), "train")
    assert "optim.lr: 0.05 -> 0.01" in line and "train.compile: False -> True" in line


def test_stale_resume_restart_discards_the_state_and_starts_over(reference, tmp_path):
    shutil.copytree(reference / "resume", tmp_path / "resume")
    result = run_cct("train", "--out", str(tmp_path), "--stale-resume", "restart", "--set", *SHORT,
                     "train.iterations=14")
    assert result.returncode == 0, result.stderr
    assert "discarding" in result.stderr and "train.iterations: 12 -> 14" in result.stderr
    history = json.loads((tmp_path / "metrics.json").read_text())["history"]
    assert [h["iteration"] for h in history] == [6, 12, 14]


def test_execution_keys_may_differ_on_resume(reference, tmp_path):
    shutil.copytree(reference / "resume", tmp_path / "resume")
    result = run_cct("train", "--out", str(tmp_path), "--set", *SHORT, "train.progress=true", "data.num_workers=1",
                     "train.device=cpu")
    assert result.returncode == 0 and "resuming from" in result.stderr, result.stderr
    assert numbers(tmp_path) == numbers(reference)


LONG = TINY + ["train.iterations=40", "train.eval_interval=20", "train.checkpoint_interval=2"]


@pytest.fixture(scope="module")
def reference_long(tmp_path_factory):
    out = tmp_path_factory.mktemp("reference_long")
    result = run_cct("train", "--out", str(out), "--set", *LONG, timeout=600)
    assert result.returncode == 0, result.stderr
    return out


@pytest.mark.parametrize("damage", ["truncated", "garbage", "flipped", "empty"])
def test_corrupt_resume_state_is_moved_aside_and_the_run_resumes_from_the_previous_one(reference_long, tmp_path,
                                                                                       damage):
    """A SIGTERM mid-run leaves state.pt and state.prev.pt; state.pt is then damaged: the rerun moves it
    aside with a warning, resumes from state.prev.pt and reaches the uninterrupted run's numbers."""
    proc = popen_cct("train", "--out", str(tmp_path), "--set", *LONG)
    deadline = time.time() + 300
    while not (tmp_path / "resume" / "state.prev.pt").exists() and time.time() < deadline:
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    state = tmp_path / "resume" / "state.pt"
    data = state.read_bytes()
    if damage == "truncated":
        state.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        state.write_bytes(os.urandom(len(data)))
    elif damage == "flipped":  # one byte inside the file: the checksum tells
        flipped = bytearray(data)
        flipped[len(data) // 2] ^= 0xFF
        state.write_bytes(bytes(flipped))
    else:
        state.write_bytes(b"")
    result = run_cct("train", "--out", str(tmp_path), "--set", *LONG)
    assert result.returncode == 0, result.stderr
    assert "cannot resume from" in result.stderr and "moved it to" in result.stderr
    assert "state.prev.pt at iteration" in result.stderr  # resumed from the previous state
    assert (tmp_path / "resume" / "state.pt.corrupt").exists()
    assert numbers(tmp_path) == numbers(reference_long)


def test_corrupt_resume_state_without_a_previous_one_starts_over(reference, tmp_path):
    (tmp_path / "resume").mkdir()
    (tmp_path / "resume" / "state.pt").write_bytes(b"\x00" * 100)
    result = run_cct("train", "--out", str(tmp_path), "--set", *SHORT)
    assert result.returncode == 0 and "cannot resume from" in result.stderr, result.stderr
    assert numbers(tmp_path) == numbers(reference)
    # a rerun does not stumble on the moved file either
    result = run_cct("train", "--out", str(tmp_path), "--set", *SHORT)
    assert result.returncode == 0 and "resuming from" in result.stderr


def test_a_second_training_into_the_same_resume_folder_is_refused(tmp_path):
    from cct.engine import ResumeState

    first = ResumeState(tmp_path, {"a": 1})
    first.acquire()
    second = ResumeState(tmp_path, {"a": 1}, lock_wait_s=0.3)
    with pytest.raises(ConfigError, match=f"in use by cct pid {os.getpid()}"):
        second.acquire()
    first.release()
    second.acquire()  # free again once the first is done
    second.release()


def test_resume_identity_keeps_threads_and_compile_and_drops_execution_keys():
    from cct.train import _numeric_config

    base = from_dict(None).to_dict()
    for key, value in (("threads", 2), ("compile", True)):
        other = from_dict(None, [f"train.{key}={str(value).lower()}"]).to_dict()
        assert _numeric_config(other) != _numeric_config(base), key
    for override in ("train.progress=false", "data.num_workers=3", "train.device=cpu"):
        assert _numeric_config(from_dict(None, [override]).to_dict()) == _numeric_config(base), override


# ------------------------------------------------------------------------------------------------
# Orphaned trainings: --stop-with


def test_a_training_stops_and_saves_when_its_workflow_process_ends(tmp_path):
    """What a killed Snakemake leaves: its trainings notice that the process they watch is gone, save
    their state and exit 143 instead of running on."""
    watched = subprocess.Popen(["sleep", "600"])
    proc = popen_cct("train", "--out", str(tmp_path), "--stop-with", str(watched.pid), "--set", *TINY,
                     "train.iterations=100000", "train.eval_interval=100000", "train.checkpoint_interval=100000")
    try:
        deadline = time.time() + 300
        while not (tmp_path / "resume" / "lock").exists() and time.time() < deadline:  # past the door
            time.sleep(0.1)
        watched.kill()
        watched.wait()
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
        if watched.poll() is None:
            watched.kill()
    assert proc.returncode == 143, err
    assert f"process {watched.pid} (--stop-with) ended" in err and "Traceback" not in err
    assert (tmp_path / "resume" / "state.pt").exists()


# ------------------------------------------------------------------------------------------------
# Folder outputs replaced as a whole: a folder of the user's is never deleted


def test_cam_infer_refuses_to_replace_a_folder_it_did_not_write(capsys, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    (tmp_path / "cam.pt").write_bytes(b"")  # never reached: the folder is checked first
    status, line = in_process(capsys, "cam", "infer", "--checkpoint", str(tmp_path / "cam.pt"), "--out", str(mine))
    assert status == 2 and "did not write" in line
    assert (mine / "thesis.tex").read_text() == "years of work"


def test_pseudo_labels_refuses_out_equal_to_cams_and_a_summary_inside_out(capsys, tmp_path):
    cams = tmp_path / "cams"
    cams.mkdir()
    (cams / "cams.json").write_text("{}")
    config = tmp_path / "cam.yaml"
    config.write_text("data: {dataset: embedded}\n")
    status, line = in_process(capsys, "pseudo-labels", "--config", str(config), "--cams", str(cams), "--out",
                              str(cams))
    assert status == 2 and "--cams folder" in line, line
    status, line = in_process(capsys, "pseudo-labels", "--config", str(config), "--cams", str(cams), "--out",
                              str(tmp_path / "p"), "--summary", str(tmp_path / "p" / "s.json"))
    assert status == 2 and "--summary" in line and "replaced as a whole" in line, line
    status, line = in_process(capsys, "pseudo-labels", "--config", str(config), "--cams", str(cams), "--out",
                              str(tmp_path / "p"), "--summary", str(config))
    assert status == 2 and "also an input" in line, line
    assert (cams / "cams.json").read_text() == "{}" and config.read_text() == "data: {dataset: embedded}\n"


# ------------------------------------------------------------------------------------------------
# Faults of the machine: a full disk, a read-only folder (a private mount namespace with a tmpfs)


def _mount_namespace_works() -> bool:
    if shutil.which("unshare") is None or os.geteuid() != 0:
        return False
    probe = subprocess.run(["unshare", "-m", "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /mnt && umount /mnt"],
                           capture_output=True, timeout=30)
    return probe.returncode == 0


needs_mounts = pytest.mark.skipif(not _mount_namespace_works(), reason="needs root and unshare -m (private mounts)")


def in_namespace(script: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """``script`` (sh) in a private mount namespace: its mounts vanish with it."""
    return subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, env=cct_env(),
                          timeout=timeout)


@needs_mounts
def test_full_disk_gives_one_line_and_the_rerun_resumes_to_identical_metrics(reference, tmp_path):
    """A disk with room for one resume state: the second save (state.pt kept as state.prev.pt, a new
    state.pt) runs out of space mid-run. One line, exit 74, no partial file; after space is freed the
    same command resumes from the saved state and reaches the uninterrupted run's numbers."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    state_size = (reference / "resume" / "state.pt").stat().st_size
    size_k = (state_size * 3 // 2) // 1024
    cct = f"{sys.executable} -m cct train --out {tmp_path / 'run'} --resume-dir {mnt}/resume --set {' '.join(SHORT)}"
    script = (f"mount -t tmpfs -o size={size_k}k tmpfs {mnt} && ({cct} > {tmp_path}/full.out 2> {tmp_path}/full.err;"
              f" echo $? > {tmp_path}/full.rc; ls -a {mnt}/resume > {tmp_path}/left.txt); "
              f"mount -o remount,size=64m {mnt} && {cct} > /dev/null 2> {tmp_path}/again.err; "
              f"echo $? > {tmp_path}/again.rc")
    in_namespace(script)
    err = (tmp_path / "full.err").read_text()
    assert (tmp_path / "full.rc").read_text().strip() == "74", err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("cct train: error: ")]
    assert len(lines) == 1 and "No space left on device" in lines[0] and "free space" in lines[0], err
    left = (tmp_path / "left.txt").read_text().split()
    assert "state.prev.pt" in left and not [n for n in left if n.endswith(".tmp")], left  # no partial file
    again = (tmp_path / "again.err").read_text()
    assert (tmp_path / "again.rc").read_text().strip() == "0", again
    assert "state.prev.pt at iteration 2" in again  # resumed, not started over
    assert numbers(tmp_path / "run") == numbers(reference)


@needs_mounts
def test_read_only_folder_is_refused_before_any_work(tmp_path):
    mnt = tmp_path / "ro"
    mnt.mkdir()
    script = (f"mount -t tmpfs -o size=1m,ro tmpfs {mnt} && {sys.executable} -m cct train --out {mnt}/run --set "
              f"{' '.join(TINY)} 2> {tmp_path}/err; echo $? > {tmp_path}/rc")
    in_namespace(script, timeout=120)
    err = (tmp_path / "err").read_text()
    assert (tmp_path / "rc").read_text().strip() == "2", err
    assert "Traceback" not in err and "--out" in err and "read-only file system" in err


def test_folder_turned_read_only_during_a_run_gives_one_line(capsys, monkeypatch, tmp_path):
    """A file system that turns read-only mid-run (a remount after disk errors; cannot be staged while
    the run holds files open for writing, so the failing write is simulated at the engine's save):
    one line naming the file, exit 74, and the run's earlier state kept."""
    import errno

    from cct import engine

    calls = []
    real = engine.atomic_torch_save

    def save(obj, path):
        calls.append(path)
        if len(calls) > 2:
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real(obj, path)

    monkeypatch.setattr(engine, "atomic_torch_save", save)
    status, line = in_process(capsys, "train", "--out", str(tmp_path), "--set", *SHORT)
    assert status == 74
    assert "state.pt: Read-only file system" in line and "remount it read-write" in line, line
    assert (tmp_path / "resume" / "state.prev.pt").exists()


# ------------------------------------------------------------------------------------------------
# Real datasets: a missing mask does not shrink the training set; bad masks are found at the start


def test_a_missing_segmentationclassaug_mask_is_refused_not_a_smaller_training_set(tmp_path, monkeypatch):
    from cct.data import voc
    from cct.data.base import load_source

    from .layouts import voc_tree

    tree = voc_tree(tmp_path / "voc")
    n_train = len(tree["train"]) + len(tree["extra"])
    # this tree stands for the official release: its lists and train_aug have the official sizes
    monkeypatch.setattr(voc, "TRAIN_LIST_SIZE", len(tree["train"]))
    monkeypatch.setattr(voc, "VAL_LIST_SIZE", len(tree["val"]))
    monkeypatch.setattr(voc, "TRAIN_AUG_SIZE", n_train)
    data = from_dict(None, ["data.dataset=voc", f"data.root={tree['root']}"]).data
    assert len(load_source(data, "train")) == n_train
    gone = tree["base"] / "SegmentationClassAug" / f"{tree['extra'][1]}.png"
    gone.unlink()
    with pytest.raises(ConfigError, match=f"holds the masks of {n_train - 1} training images, but train_aug"):
        load_source(data, "train")
    # with a train_aug list, the list is the authority and the missing mask is named
    (tree["base"] / "ImageSets/Segmentation/train_aug.txt").write_text(
        "".join(f"{i}\n" for i in tree["train"] + tree["extra"]))
    with pytest.raises(ConfigError, match=str(gone)):
        load_source(data, "train")


@pytest.mark.parametrize("defect", ["value", "size"])
def test_a_bad_validation_mask_of_a_real_dataset_is_found_before_training(capsys, tmp_path, defect):
    from .layouts import voc_tree

    tree = voc_tree(tmp_path / "voc")
    path = tree["base"] / "SegmentationClass" / f"{tree['val'][1]}.png"
    mask = np.array(Image.open(path))
    if defect == "value":
        mask[3, 3] = 77
        image = Image.fromarray(mask, mode="L")
    else:
        image = Image.fromarray(mask[:-2], mode="L")
    image.save(path)
    status, line = in_process(capsys, "train", "--out", str(tmp_path / "r"), "--set", *TINY, "data.dataset=voc",
                              f"data.root={tree['root']}", "data.n_labeled=4", "train.iterations=4000",
                              "train.eval_interval=4000")
    assert status == 2 and "validation set" in line and str(path) in line, line
    assert ("mask value 77" in line) if defect == "value" else ("but its image" in line)
    assert not (tmp_path / "r" / "metrics.json").exists()
