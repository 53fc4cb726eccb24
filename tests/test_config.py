"""Configs: validation at the boundary and the YAML round trip."""

from __future__ import annotations

import pytest

from graft.config import DataConfig, RunConfig, StrategyConfig, TrainConfig
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
        (lambda: TrainConfig(lr=0), "lr must be > 0"),
        (lambda: TrainConfig(patience=0), "patience must be >= 1"),
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
