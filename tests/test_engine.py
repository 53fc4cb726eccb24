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


def _history_without_times(model) -> list[dict]:
    return [{k: v for k, v in h.items() if k != "seconds"} for h in model.report_.history]


@pytest.mark.parametrize("after_epoch", [1, 2])
def test_resume_after_interruption_matches_an_uninterrupted_run(
    tiny_source, sentiment_csv, tmp_path, after_epoch
):
    straight = fit(sentiment_csv, backbone=tiny_source, config=_config(), out=tmp_path / "a", progress=False)

    with pytest.raises(KeyboardInterrupt):
        fit(sentiment_csv, backbone=tiny_source, config=_config(), out=tmp_path / "b", progress=False,
            callbacks=[Interrupt(after_epoch=after_epoch)])  # fmt: skip
    last = tmp_path / "b" / "checkpoints" / "last"
    assert sorted(p.name for p in last.iterdir()) == [
        "model.safetensors",
        "optimizer.safetensors",
        "state.json",
    ]
    assert not (tmp_path / "b" / "bundle").exists()

    resumed = fit(sentiment_csv, backbone=tiny_source, config=_config(), out=tmp_path / "b", resume=True,
                  progress=False)  # fmt: skip
    # Every epoch after the interruption, not only the best one (which may predate it), must match:
    # losses and metrics to the last bit, and the final weights bit for bit.
    assert _history_without_times(resumed) == _history_without_times(straight)
    assert len(resumed.report_.history) == 3
    a, b = _weights(straight), _weights(resumed)
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0, msg=name)
    assert (tmp_path / "b" / "bundle" / "graft.json").is_file()
    assert not (tmp_path / "b" / "checkpoints").exists()


KILLED_RUN = """
import os, sys
from graft.api import fit
from graft.config import RunConfig, StrategyConfig, TrainConfig
from graft.engine import Callback

class Kill(Callback):
    def on_epoch_end(self, record, history):
        if record.epoch == 1:
            os._exit(137)  # as abrupt as kill -9: no clean-up, no exception handlers

cfg = RunConfig(strategy=StrategyConfig(kind="full"),
                train=TrainConfig(epochs=3, batch_size=8, lr=5e-3, head_lr=5e-3, patience=3, seed=1))
fit(sys.argv[1], backbone=sys.argv[2], config=cfg, out=sys.argv[3], progress=False,
    callbacks=[Kill()] if sys.argv[4] == "kill" else [], resume=sys.argv[4] == "resume")
"""


@pytest.mark.slow
def test_resume_in_a_new_process_after_a_kill(tiny_source, sentiment_csv, tmp_path):
    """The order of every epoch is a function of (seed, epoch): a new process resuming after a kill
    (where Accelerate's own epoch counter starts again at 0) trains exactly as the uninterrupted run."""
    import subprocess
    import sys

    straight = fit(sentiment_csv, backbone=tiny_source, config=_config(), out=tmp_path / "a", progress=False)
    run = [sys.executable, "-c", KILLED_RUN, str(sentiment_csv), tiny_source, str(tmp_path / "b")]
    killed = subprocess.run([*run, "kill"], capture_output=True, text=True, timeout=300)
    assert killed.returncode == 137, killed.stderr
    assert not (tmp_path / "b" / "bundle").exists()
    resumed = subprocess.run([*run, "resume"], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    b = load_tensors(tmp_path / "b" / "bundle" / "model.safetensors")
    a = _weights(straight)
    assert set(a) == set(b)
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0, msg=name)
    assert not (tmp_path / "b" / "checkpoints").exists()


def test_epoch_order_ignores_accelerates_own_counter():
    """A prepared DataLoader calls ``sampler.set_epoch(<its passes in this process>)``; the order must
    follow the epoch graft sets, so epoch 3 in a fresh loader equals epoch 3 after two passes."""
    from graft.engine import EpochShuffle, make_accelerator

    accelerator = make_accelerator("no", 1)

    def order_of_epoch(epoch: int, passes_before: int) -> list[int]:
        sampler = EpochShuffle(20, seed=7)
        data = torch.utils.data.DataLoader(list(range(20)), batch_size=20, sampler=sampler)
        loader = accelerator.prepare(data)
        for earlier in range(1, passes_before + 1):
            sampler.start_epoch(earlier)
            list(loader)
        sampler.start_epoch(epoch)
        return next(iter(loader)).tolist()

    assert order_of_epoch(3, passes_before=2) == order_of_epoch(3, passes_before=0)
    assert order_of_epoch(3, passes_before=0) != order_of_epoch(1, passes_before=0)


def test_probe_leaves_no_gradients():
    """Leftover gradients of the probe would be added to the first fine-tuning step (and only in a
    process that fitted the probe: a resumed one would train differently)."""
    torch.manual_seed(0)
    x, y = torch.randn(40, 4), torch.randint(0, 2, (40,))
    head = torch.nn.Linear(4, 2)
    acc = lambda out, t: float((out.argmax(1) == t).float().mean())  # noqa: E731
    fit_probe(head, x[:30], y[:30], x[30:], y[30:], loss_fn=torch.nn.functional.cross_entropy, metric_fn=acc)
    assert all(p.grad is None for p in head.parameters())


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
