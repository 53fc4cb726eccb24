"""Configs: validation at the boundary and the YAML round trip."""

from __future__ import annotations

import dataclasses
import math
import typing

import pytest

from graft.config import (
    BackboneConfig,
    DataConfig,
    EvalConfig,
    RunConfig,
    StrategyConfig,
    TrainConfig,
)
from graft.errors import ConfigError


def test_yaml_round_trip(tmp_path):
    cfg = RunConfig(
        data=DataConfig(text_col="body", label_sep="|"),
        strategy=StrategyConfig(kind="partial", unfreeze_top=3, layer_lr_decay=0.8),
        train=TrainConfig(epochs=7, grad_clip=None),
    )
    cfg.to_yaml(tmp_path / "c.yaml")
    assert RunConfig.from_yaml(tmp_path / "c.yaml") == cfg


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: TrainConfig(lr=0), "lr must be a finite number > 0, got 0"),
        (lambda: TrainConfig(patience=0), "patience must be an integer >= 1, got 0"),
        (lambda: StrategyConfig(kind="full", unfreeze_top=2), "unfreeze_top applies to the partial"),
        (lambda: StrategyConfig(layer_lr_decay=1.5), "layer_lr_decay"),
        (lambda: DataConfig(val_fraction=0.5, test_fraction=0.5), "leave data to train on"),
        (lambda: DataConfig(task="regression", label_sep="|"), "label_sep splits multilabel"),
    ],
)
def test_invalid_values_are_refused(build, message):
    with pytest.raises(ConfigError, match=message):
        build()


def test_yaml_errors_name_the_field(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  epochs: many\n")
    with pytest.raises(ConfigError, match=r"train.epochs: 'many' is not a valid value \(expected int\)"):
        RunConfig.from_yaml(path)
    path.write_text("trian:\n  epochs: 3\n")
    with pytest.raises(ConfigError, match=r"unknown section\(s\) \['trian'\]"):
        RunConfig.from_yaml(path)
    path.write_text("strategy:\n  kind: magic\n")
    with pytest.raises(ConfigError, match=r"strategy\.kind: 'magic'"):
        RunConfig.from_yaml(path)


NAN, INF = math.nan, math.inf


@pytest.mark.parametrize(
    ("build", "message"),
    [  # issue 19: each was accepted, or failed later with a traceback
        (lambda: TrainConfig(seed=-1), r"seed must be an integer from 0 to 4294967295, got -1"),
        (lambda: TrainConfig(seed=2**64), r"seed must be an integer from 0 to 4294967295, got 1844"),
        (lambda: TrainConfig(lr=NAN), r"lr must be a finite number > 0, got nan"),
        (lambda: TrainConfig(head_lr=INF), r"head_lr must be a finite number > 0, got inf"),
        (lambda: TrainConfig(weight_decay=NAN), r"weight_decay must be a finite number >= 0"),
        (lambda: TrainConfig(grad_clip=NAN), r"grad_clip must be a finite number > 0"),
        (lambda: TrainConfig(epochs=2.5), r"epochs must be an integer >= 1, got 2.5"),
        (lambda: TrainConfig(batch_size=True), r"batch_size must be an integer >= 1, got True"),
        (lambda: StrategyConfig(lora_alpha=0.0), r"lora_alpha must be a finite number > 0"),
        (lambda: StrategyConfig(budget="9" * 400 + "h"), r"is not a duration"),
        (lambda: DataConfig(val_fraction=NAN), r"val_fraction must be a number from 0.01 to 0.9, got nan"),
        (lambda: DataConfig(encoding="no-such-codec"), r"encoding 'no-such-codec' is not a text encoding"),
        (lambda: DataConfig(text_col=""), r"text_col must not be empty"),
        (lambda: BackboneConfig(max_length=1), r"max_length must be an integer >= 2"),
        (lambda: EvalConfig(target_precision=NAN), r"target_precision must be a number in \(0, 1\)"),
    ],
)
def test_out_of_range_values_are_refused_naming_the_option_and_range(build, message):
    with pytest.raises(ConfigError, match=message):
        build()


def test_the_largest_seed_is_accepted():
    assert TrainConfig(seed=2**32 - 1).seed == 2**32 - 1


def test_every_numeric_field_declares_its_allowed_values():
    """A numeric option without bounds would accept NaN, inf and negatives: each must say what it takes."""
    unbounded = []
    for section in (DataConfig, BackboneConfig, StrategyConfig, TrainConfig, EvalConfig):
        hints = typing.get_type_hints(section)
        for f in dataclasses.fields(section):
            kinds = set(typing.get_args(hints[f.name])) | {hints[f.name]}
            if kinds & {int, float} and "bounds" not in f.metadata:
                unbounded.append(f"{section.__name__}.{f.name}")
    assert unbounded == []


def test_yaml_values_are_checked_like_options(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  lr: .nan\n")
    with pytest.raises(ConfigError, match="lr must be a finite number > 0, got nan"):
        RunConfig.from_yaml(path)
