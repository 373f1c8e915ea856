"""The ``cct`` command (cct/cli.py): bad inputs exit non-zero with one line naming the culprit;
``cct predict`` writes palette PNGs; ``cct splits`` writes nested lists."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from cct.cli import main
from cct.data import embedded
from cct.data.base import default_palette
from cct.data.splits import make_split, read_list

from .conftest import TINY, run_cct


def one_error_line(result, command: str) -> str:
    """The run failed with status 2 and exactly one non-empty stderr line, which is returned."""
    assert result.returncode == 2, (result.returncode, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"cct {command}: error: ")
    assert "Traceback" not in result.stderr
    return lines[0]


def test_missing_config_file(tmp_path):
    line = one_error_line(
        run_cct("train", "--config", str(tmp_path / "nope.yaml"), "--out", str(tmp_path / "r")), "train"
    )
    assert "config file not found" in line and str(tmp_path / "nope.yaml") in line
    assert not (tmp_path / "r").exists()


def test_unknown_config_key_in_a_file(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("train:\n  iterations: 5\n  lerning_rate: 0.1\n")
    line = one_error_line(run_cct("train", "--config", str(config), "--out", str(tmp_path / "r")), "train")
    assert str(config) in line and "'train.lerning_rate'" in line


def test_wrong_type_in_an_override(tmp_path):
    line = one_error_line(run_cct("train", "--out", str(tmp_path / "r"), "--set", "train.iterations=many"), "train")
    assert "train.iterations" in line and "'many'" in line


def test_override_without_equals_sign(tmp_path):
    line = one_error_line(run_cct("train", "--out", str(tmp_path / "r"), "--set", "train.iterations"), "train")
    assert "'train.iterations'" in line and "key=value" in line


def test_labelled_list_naming_an_unknown_image(tmp_path):
    labeled, unlabeled = tmp_path / "labeled.txt", tmp_path / "unlabeled.txt"
    labeled.write_text("a_train_00000\nghost_00042\n")
    unlabeled.write_text("a_train_00001\na_train_00002\n")
    result = run_cct(
        "train",
        "--out",
        str(tmp_path / "r"),
        "--set",
        *TINY,
        "train.iterations=1",
        f"data.labeled_list={labeled}",
        f"data.unlabeled_list={unlabeled}",
    )
    line = one_error_line(result, "train")
    assert "'ghost_00042'" in line and str(labeled) in line
    assert not (tmp_path / "r" / "metrics.json").exists()


def test_predict_with_a_missing_images_folder(tiny_checkpoint, tmp_path):
    result = run_cct(
        "predict",
        "--checkpoint",
        str(tiny_checkpoint),
        "--images",
        str(tmp_path / "no_such_dir"),
        "--out",
        str(tmp_path / "masks"),
    )
    line = one_error_line(result, "predict")
    assert "--images" in line and str(tmp_path / "no_such_dir") in line


def test_predict_with_a_missing_checkpoint(tmp_path):
    (tmp_path / "imgs").mkdir()
    result = run_cct(
        "predict",
        "--checkpoint",
        str(tmp_path / "none.pt"),
        "--images",
        str(tmp_path / "imgs"),
        "--out",
        str(tmp_path / "masks"),
    )
    line = one_error_line(result, "predict")
    assert "--checkpoint" in line and str(tmp_path / "none.pt") in line


def write_pngs(folder, sizes=((64, 64), (50, 45))):
    """Validation images of domain a, the second cropped to a size that is not a multiple of the stride."""
    folder.mkdir(parents=True, exist_ok=True)
    images = embedded.generate("val", "a").images
    arrays = []
    for i, (h, w) in enumerate(sizes):
        array = np.ascontiguousarray(images[i][:h, :w])
        Image.fromarray(array).save(folder / f"scene{i}.png")
        arrays.append(array)
    (folder / "notes.txt").write_text("not an image")
    return arrays


def test_predict_writes_one_palette_png_per_image_of_the_same_size(tiny_checkpoint, tmp_path):
    from cct.data.transforms import normalize, to_tensors
    from cct.engine import load_checkpoint
    from cct.evaluate import predict_image

    arrays = write_pngs(tmp_path / "imgs")
    result = run_cct(
        "predict",
        "--checkpoint",
        str(tiny_checkpoint),
        "--images",
        str(tmp_path / "imgs"),
        "--out",
        str(tmp_path / "masks"),
    )
    assert result.returncode == 0, result.stderr
    written = sorted(p.name for p in (tmp_path / "masks").iterdir())
    assert written == ["scene0.png", "scene1.png"]
    model = load_checkpoint(str(tiny_checkpoint))[0]
    palette = default_palette()
    for i, array in enumerate(arrays):
        mask = Image.open(tmp_path / "masks" / f"scene{i}.png")
        assert mask.mode == "P"
        assert mask.size == (array.shape[1], array.shape[0])
        assert np.array(mask.getpalette()[: 3 * 9]).reshape(9, 3).tolist() == palette[:9].tolist()
        values = np.array(mask)
        assert values.max() < 9
        image, _ = to_tensors(array, np.zeros(array.shape[:2], dtype=np.int64))
        expected = predict_image(model, normalize()(image).as_subclass(torch.Tensor)[None], model.stride)[0]
        assert np.array_equal(values, expected.numpy())


# --- further bad inputs, run in-process (the same main(), without the start-up cost) ---------------------


def in_process_error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1
    return lines[0]


def test_a_file_that_is_not_a_checkpoint(capsys, tmp_path):
    bogus = tmp_path / "bogus.pt"
    torch.save({"something": torch.zeros(2)}, bogus)
    line = in_process_error(capsys, ["evaluate", "--checkpoint", str(bogus)])
    assert str(bogus) in line and "not a cct checkpoint" in line


def test_a_text_file_given_as_checkpoint(capsys, tmp_path):
    bogus = tmp_path / "notes.pt"
    bogus.write_text("these are notes, not weights\n")
    line = in_process_error(capsys, ["evaluate", "--checkpoint", str(bogus)])
    assert str(bogus) in line


def test_predict_with_an_empty_folder_or_a_broken_image(capsys, tiny_checkpoint, tmp_path):
    (tmp_path / "empty").mkdir()
    line = in_process_error(
        capsys,
        [
            "predict",
            "--checkpoint",
            str(tiny_checkpoint),
            "--images",
            str(tmp_path / "empty"),
            "--out",
            str(tmp_path / "m"),
        ],
    )
    assert "no .png/.jpg images" in line and str(tmp_path / "empty") in line
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "x.png").write_bytes(b"\x89PNG not really")
    line = in_process_error(
        capsys,
        [
            "predict",
            "--checkpoint",
            str(tiny_checkpoint),
            "--images",
            str(tmp_path / "broken"),
            "--out",
            str(tmp_path / "m"),
        ],
    )
    assert "cannot read" in line and "x.png" in line


def test_splits_command_writes_the_nested_split_and_validates_user_lists(capsys, tmp_path):
    assert main(["splits", "--n-labeled", "10", "--split-seed", "2", "--out", str(tmp_path / "s10")]) == 0
    data = embedded.generate("train", "a")
    expected = make_split(list(data.ids), 10, 2, data.image_labels())
    assert read_list(tmp_path / "s10" / "labeled.txt", "l") == expected[0]
    assert read_list(tmp_path / "s10" / "unlabeled.txt", "u") == expected[1]
    assert (
        main(
            [
                "splits",
                "--from-lists",
                str(tmp_path / "s10" / "labeled.txt"),
                str(tmp_path / "s10" / "unlabeled.txt"),
                "--out",
                str(tmp_path / "copy"),
            ]
        )
        == 0
    )
    assert read_list(tmp_path / "copy" / "labeled.txt", "l") == expected[0]
    capsys.readouterr()
    dup = tmp_path / "dup.txt"
    dup.write_text("a_train_00001\na_train_00001\n")
    line = in_process_error(
        capsys,
        ["splits", "--from-lists", str(dup), str(tmp_path / "s10" / "unlabeled.txt"), "--out", str(tmp_path / "bad")],
    )
    assert "'a_train_00001'" in line and "dup.txt" in line
    line = in_process_error(capsys, ["splits", "--n-labeled", "5000", "--out", str(tmp_path / "bad")])
    assert "data.n_labeled" in line and "5000" in line
