"""What the workflow prepares once for many runs (workflow/planner/prepare.py): the embedded scenes
every embedded run reads, and encoders pretrained by the workflow (the stand-in for ImageNet)."""

from __future__ import annotations

import copy

import pytest
from snakemake.utils import validate
from workflow_helpers import ROOT

from cct.config import from_dict
from planner import configs, grid, prepare, weak_labels
from planner.configs import GridError
from planner.layout import Layout, Run

SCHEMA = str(ROOT / "workflow" / "schemas" / "config.schema.yaml")
ENCODER = {"cct": {"data": {"dataset": "embedded", "domain": "p", "n_labeled": 1000},
                   "train": {"mode": "supervised", "iterations": 50}}}


def grid_config(**extra) -> dict:
    config = {
        "results": "out",
        "cct": {"model": {"width": 8}, "train": {"iterations": 4}},
        "datasets": {"tiny": {"cct": {"data": {"dataset": "embedded", "domain": "a"}}, "label_counts": [10],
                              "pretrained": "textures"}},
        "pretrained": {"textures": copy.deepcopy(ENCODER)},
        "seeds": [0],
        "settings": {"perturbation_ablation": {"enabled": False}},
    }
    config.update(extra)
    validate(config, SCHEMA)
    return config


def test_embedded_runs_read_the_scenes_written_once_and_real_datasets_do_not():
    config = grid_config()
    run = Run("tiny", "label_fraction", "cct", 10, 0, 0)
    tree = grid.workflow_run_config(config, run)
    layout = Layout.of(config)
    assert tree["data"]["root"] == layout.embedded_dir()
    needed = prepare.inputs(config, tree)
    assert set(layout.embedded_files("a")) <= set(needed)
    assert all(f.endswith(".npz") for f in layout.embedded_files("a"))
    # a root the user sets is theirs: nothing is prepared for it
    config["datasets"]["tiny"]["cct"]["data"]["root"] = "/data/mine"
    tree = grid.workflow_run_config(config, run)
    assert tree["data"]["root"] == "/data/mine" and not any(f.endswith(".npz") for f in prepare.inputs(config, tree))


def test_a_dataset_naming_a_pretrained_encoder_starts_its_runs_and_its_cam_from_that_checkpoint():
    config = grid_config()
    checkpoint = Layout.of(config).pretrained_file("checkpoint.pt", "textures")
    tree = grid.workflow_run_config(config, Run("tiny", "label_fraction", "supervised", 10, 0, 0))
    assert tree["model"]["pretrained"] == checkpoint
    assert checkpoint in prepare.inputs(config, tree)
    assert weak_labels.cam_config(config, "tiny", 0)["model"]["pretrained"] == checkpoint
    # without the key, no encoder
    del config["datasets"]["tiny"]["pretrained"]
    tree = grid.workflow_run_config(config, Run("tiny", "label_fraction", "supervised", 10, 0, 0))
    assert "pretrained" not in tree.get("model", {})


def test_the_encoders_config_takes_the_runs_architecture_and_reads_the_prepared_scenes():
    config = grid_config()
    tree = prepare.encoder_config(config, "textures")
    assert tree["model"] == {"width": 8}  # cct.model, not cct.train (its own schedule)
    assert tree["train"] == {"mode": "supervised", "iterations": 50}
    assert tree["data"]["root"] == Layout.of(config).embedded_dir()
    from_dict(tree)  # a valid cct config
    assert set(Layout.of(config).embedded_files("p")) <= set(prepare.inputs(config, tree))


def test_an_unknown_encoder_name_fails_the_dry_run():
    config = grid_config()
    config["datasets"]["tiny"]["pretrained"] = "imagenet"
    with pytest.raises(GridError, match=r"datasets\.tiny\.pretrained: 'imagenet' is not a key of pretrained"):
        grid.check_config(config, from_dict)


def test_an_encoder_of_another_architecture_fails_the_dry_run():
    config = grid_config()
    config["pretrained"]["textures"]["cct"]["model"] = {"width": 16}
    with pytest.raises(GridError, match=r"pretrained\.textures\.cct\.model\.width: 16, but the runs of dataset 'tiny'"):
        grid.check_config(config, from_dict)


def test_an_invalid_encoder_config_fails_the_dry_run():
    config = grid_config()
    config["pretrained"]["textures"]["cct"]["train"]["iterations"] = 0
    with pytest.raises(GridError, match=r"pretrained\.textures\.cct: .*train\.iterations"):
        grid.check_config(config, from_dict)


def test_split_configs_read_the_prepared_scenes_too():
    config = grid_config()
    split = configs.split_config(config, "tiny")
    assert split["data"]["root"] == Layout.of(config).embedded_dir()
    assert set(Layout.of(config).embedded_files("a")) <= set(prepare.inputs(config, split))


def test_an_encoder_without_a_top_level_model_section_is_checked_on_its_own_keys():
    """No cct.model at the top: the encoder's config is its own section, and its bad key is named."""
    config = grid_config(cct={"train": {"iterations": 4}})
    config["pretrained"]["textures"]["cct"]["train"]["iterations"] = -5
    with pytest.raises(GridError, match=r"pretrained\.textures\.cct: train\.iterations: must be >= 1, got -5"):
        grid.check_config(config, from_dict)


def test_a_cam_classifier_of_another_width_than_its_pretrained_encoder_fails_the_dry_run():
    config = grid_config(settings={"perturbation_ablation": {"enabled": False},
                                   "weak_labels": {"enabled": True, "cam": {"model": {"width": 16}}}})
    with pytest.raises(GridError, match=r"settings\.weak_labels\.cam\.model\.width .*16, but the CAM classifier "
                                        r"starts from the pretrained encoder of dataset 'tiny', whose width is 8"):
        grid.check_config(config, from_dict)
    config["settings"]["weak_labels"]["cam"]["model"]["width"] = 8
    grid.check_config(config, from_dict)
