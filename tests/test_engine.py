"""The training loop: learning, early stopping with best weights, checkpoints, resume, probe fitting."""

from __future__ import annotations

import pytest
import torch

from graft.api import fit
from graft.config import RunConfig, StrategyConfig, TrainConfig
from graft.engine import Callback, Engine, fit_probe, resolve_precision
from graft.errors import ConfigError
from graft.serialization import load_tensors


class Interrupt(Callback):
    """Simulates Ctrl-C after a given epoch (its checkpoint is already on disk)."""

    def __init__(self, after_epoch: int) -> None:
        self.after_epoch = after_epoch

    def on_epoch_end(self, record, history) -> None:
        if record.epoch == self.after_epoch:
            raise KeyboardInterrupt


def _config(epochs: int = 3) -> RunConfig:
    return RunConfig(
        strategy=StrategyConfig(kind="full"),
        train=TrainConfig(epochs=epochs, batch_size=8, lr=5e-3, head_lr=5e-3, patience=epochs, seed=1),
    )


def _weights(model):
    return {k: v.detach().clone() for k, v in model.network_.state_dict().items()}


def test_fine_tuning_learns_the_tiny_task(tiny_source, sentiment_csv, tmp_path):
    model = fit(sentiment_csv, backbone=tiny_source, config=_config(epochs=4), progress=False)
    assert model.report_.test.metrics["accuracy"] >= 0.8
    history = model.report_.history
    assert len(history) == 4 and history[-1]["train_loss"] < history[0]["train_loss"]


def test_resume_after_interruption_matches_an_uninterrupted_run(tiny_source, sentiment_csv, tmp_path):
    straight = fit(sentiment_csv, backbone=tiny_source, config=_config(), out=tmp_path / "a", progress=False)

    with pytest.raises(KeyboardInterrupt):
        fit(sentiment_csv, backbone=tiny_source, config=_config(), out=tmp_path / "b", progress=False,
            callbacks=[Interrupt(after_epoch=2)])  # fmt: skip
    last = tmp_path / "b" / "checkpoints" / "last"
    assert sorted(p.name for p in last.iterdir()) == [
        "model.safetensors",
        "optimizer.safetensors",
        "state.json",
    ]
    assert not (tmp_path / "b" / "bundle").exists()

    resumed = fit(sentiment_csv, backbone=tiny_source, config=_config(), out=tmp_path / "b", resume=True,
                  progress=False)  # fmt: skip
    assert resumed.report_.history[0]["epoch"] == 1 and len(resumed.report_.history) == 3
    a, b = _weights(straight), _weights(resumed)
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0, msg=name)
    assert (tmp_path / "b" / "bundle" / "graft.json").is_file()
    assert not (tmp_path / "b" / "checkpoints").exists()


def test_resume_refuses_other_settings(tiny_source, sentiment_csv, tmp_path):
    with pytest.raises(KeyboardInterrupt):
        fit(sentiment_csv, backbone=tiny_source, config=_config(), out=tmp_path, progress=False,
            callbacks=[Interrupt(after_epoch=1)])  # fmt: skip
    other = _config().replace("strategy", kind="partial")
    with pytest.raises(ConfigError, match=r"settings differ .*strategy.kind: 'full' -> 'partial'"):
        fit(sentiment_csv, backbone=tiny_source, config=other, out=tmp_path, resume=True, progress=False)
    with pytest.raises(ConfigError, match="already holds a running run; pass --resume"):
        fit(sentiment_csv, backbone=tiny_source, config=_config(), out=tmp_path, progress=False)


def test_best_weights_are_restored(tiny_source, sentiment_csv, tmp_path):
    model = fit(sentiment_csv, backbone=tiny_source, config=_config(epochs=3), out=tmp_path, progress=False)
    history = model.report_.history
    best = max(history, key=lambda h: h["val_metric"])
    assert model.report_.validation["best"] == best["val_metric"]
    assert model.report_.validation["best_epoch"] == best["epoch"]


def test_checkpoint_optimizer_state_is_stored_by_parameter_name(tiny_source, sentiment_csv, tmp_path):
    with pytest.raises(KeyboardInterrupt):
        fit(sentiment_csv, backbone=tiny_source, config=_config(), out=tmp_path, progress=False,
            callbacks=[Interrupt(after_epoch=1)])  # fmt: skip
    tensors = load_tensors(tmp_path / "checkpoints" / "last" / "optimizer.safetensors")
    assert "state.head.linear.weight.exp_avg" in tensors
    assert any(k.startswith("state.backbone.model.encoder.layer.1.") for k in tensors)


def test_fp16_needs_cuda():
    if torch.cuda.is_available():
        assert resolve_precision("fp16") == "fp16"
        assert resolve_precision("auto") in ("bf16", "no")
        return
    with pytest.raises(ConfigError, match="fp16 needs a CUDA GPU"):
        resolve_precision("fp16")
    assert resolve_precision("auto") == "no"


def test_engine_knows_nothing_of_models():
    import ast
    import inspect

    import graft.engine

    tree = ast.parse(inspect.getsource(graft.engine))
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert not {m for m in imported if m and ("backbones" in m or "heads" in m or "strategies" in m)}
    assert "requires_grad_" not in inspect.getsource(graft.engine)


def test_probe_picks_regularisation_on_validation():
    torch.manual_seed(0)
    x = torch.randn(200, 5)
    y = (x[:, 0] > 0).long()
    head = torch.nn.Linear(5, 2)
    loss = torch.nn.functional.cross_entropy
    acc = lambda out, t: float((out.argmax(1) == t).float().mean())  # noqa: E731
    result = fit_probe(head, x[:150], y[:150], x[150:], y[150:], loss_fn=loss, metric_fn=acc)
    assert result.val_metric >= 0.95
    assert len(result.grid) == 10 and result.l2 in [g["l2"] for g in result.grid]


def test_engine_without_checkpoint_dir_keeps_nothing(tiny_source, sentiment_csv, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fit(sentiment_csv, backbone=tiny_source, config=_config(epochs=1), progress=False)
    assert not list(tmp_path.rglob("checkpoints")) and not list(tmp_path.rglob("*.safetensors"))
    assert Engine(TrainConfig(), metric="accuracy").checkpoint_dir is None
