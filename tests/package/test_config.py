"""The run config (cct/config.py): merging, typing, overrides and validation, errors naming the key."""

from __future__ import annotations

import pytest

from cct.config import ConfigError, RunConfig, from_dict, load_config, parse_override, save_config


def error_of(tree=None, overrides=()):
    with pytest.raises(ConfigError) as info:
        from_dict(tree, overrides)
    return str(info.value)


def test_defaults_are_valid_and_round_trip_through_a_dict():
    config = from_dict(None)
    assert config == RunConfig().validate()
    assert from_dict(config.to_dict()) == config
    assert config.model.perturbation.vat_xi == 1e-6 and config.model.perturbation.vat_eps == 2.0
    assert config.loss.unsupervised_w == 30.0 and config.loss.rampup == 0.1 and config.loss.consistency == "mse"


def test_unknown_key_error_names_the_full_key():
    message = error_of({"train": {"iterationz": 5}})
    assert "train.iterationz" in message and "iterations" in message  # and lists the valid ones
    assert "model.aux.vatt" in error_of(overrides=["model.aux.vatt=1"])
    assert "'bogus'" in error_of({"bogus": 1})


@pytest.mark.parametrize("tree,key", [
    ({"train": {"iterations": "abc"}}, "train.iterations"),
    ({"train": {"iterations": 2.5}}, "train.iterations"),
    ({"train": {"iterations": True}}, "train.iterations"),  # a bool is not an integer
    ({"optim": {"lr": "fast"}}, "optim.lr"),
    ({"data": {"flip": "yes"}}, "data.flip"),
    ({"data": {"scale_range": [0.5]}}, "data.scale_range"),
    ({"data": {"scale_range": [0.5, "x"]}}, "data.scale_range[1]"),
    ({"data": {"background_classes": 0}}, "data.background_classes"),
    ({"data": {"base_size": "big"}}, "data.base_size"),
    ({"model": {"pretrained": 3}}, "model.pretrained"),
    ({"model": {"aux": 3}}, "model.aux"),
])
def test_wrong_type_error_names_the_key(tree, key):
    assert key in error_of(tree)


def test_values_are_coerced_where_lossless():
    config = from_dict({"optim": {"lr": 1}, "data": {"scale_range": [1, 2]}})
    assert config.optim.lr == 1.0 and isinstance(config.optim.lr, float)
    assert config.data.scale_range == (1.0, 2.0)


def test_overrides_parse_yaml_values():
    config = from_dict(None, [
        "optim.lr=0.1", "train.progress=false", "data.scale_range=[0.5, 2]", "data.background_classes=[0, 2]",
        "model.pretrained=true", "data.base_size=80", "loss.consistency=kl", "train.iterations=12",
        "data.labeled_list=l.txt", "data.unlabeled_list=u.txt",
    ])
    assert config.optim.lr == 0.1
    assert config.train.progress is False
    assert config.data.scale_range == (0.5, 2.0)
    assert config.data.background_classes == [0, 2]
    assert config.model.pretrained is True
    assert config.data.base_size == 80
    assert config.loss.consistency == "kl"
    assert config.train.iterations == 12
    assert from_dict(None, ["model.pretrained=/w/r50.pth"]).model.pretrained == "/w/r50.pth"
    assert from_dict({"data": {"base_size": 80}}, ["data.base_size=null"]).data.base_size is None
    # later overrides win
    assert from_dict(None, ["train.seed=1", "train.seed=2"]).train.seed == 2


def test_parse_override_shapes():
    assert parse_override("a.b.c=3") == {"a": {"b": {"c": 3}}}
    assert parse_override("a=x=y") == {"a": "x=y"}
    assert parse_override("a=") == {"a": None}
    with pytest.raises(ConfigError, match="train.iterations"):
        parse_override("train.iterations")
    with pytest.raises(ConfigError, match="not valid YAML"):
        parse_override("a=[1, 2")


@pytest.mark.parametrize("overrides,key", [
    (["train.iterations=0"], "train.iterations"),
    (["train.batch_size_labeled=0"], "train.batch_size_labeled"),
    (["data.n_labeled=-1"], "data.n_labeled"),
    (["model.aux.dropout=-1"], "model.aux.dropout"),
    (["model.perturbation.dropout_p=1.0"], "model.perturbation.dropout_p"),
    (["model.perturbation.feature_drop_range=[0.9, 0.7]"], "model.perturbation.feature_drop_range"),
    (["model.perturbation.feature_drop_range=[0, 0.7]"], "model.perturbation.feature_drop_range"),
    (["data.crop_size=30"], "data.crop_size"),  # not a multiple of the output stride 4
    (["data.labeled_list=l.txt"], "data.labeled_list"),  # without the unlabelled list
    (["loss.consistency=l1"], "loss.consistency"),
    (["train.mode=weak"], "train.mode"),
    (["model.encoder=vgg"], "model.encoder"),
    (["data.dataset=coco"], "data.dataset"),
    (["model.output_stride=2"], "model.output_stride"),
])
def test_validate_range_and_choice_errors_name_the_key(overrides, key):
    message = error_of(overrides=overrides)
    assert key in message


def test_load_config_from_a_file_with_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("train:\n  iterations: 7\n  mode: supervised\nmodel:\n  aux: {vat: 0}\n")
    config = load_config(path, ["train.iterations=9"])
    assert config.train.iterations == 9 and config.train.mode == "supervised" and config.model.aux.vat == 0
    assert config.model.aux.dropout == 6
    saved = tmp_path / "saved.yaml"
    save_config(config, saved)
    assert load_config(saved) == config


def test_load_config_errors_name_the_file_and_key(tmp_path):
    with pytest.raises(ConfigError, match="config file not found: .*missing.yaml"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {iterations: [1,\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_config(bad)
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("train:\n  iterationz: 3\n")
    with pytest.raises(ConfigError, match=r"unknown.yaml: unknown config key 'train.iterationz'"):
        load_config(unknown)
    listing = tmp_path / "list.yaml"
    listing.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(listing)
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    with pytest.raises(ConfigError, match="empty.yaml: the file holds no keys"):  # not the defaults, silently
        load_config(empty)


@pytest.mark.parametrize("override,key", [
    ("data.scale_range=[1.5, 0.75]", "data.scale_range"),
    ("optim.lr=-0.01", "optim.lr"),
    ("loss.softmax_temp=0", "loss.softmax_temp"),
])
def test_validate_rejects_values_that_cannot_train(override, key):
    assert key in error_of(overrides=[override])


def test_decoder_choice_is_validated():
    assert from_dict(None, ["model.decoder=pixelshuffle"]).model.decoder == "pixelshuffle"
    assert "model.decoder" in error_of(overrides=["model.decoder=deconv"])
