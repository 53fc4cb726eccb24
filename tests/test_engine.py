"""The training loop: learning, early stopping with best weights, checkpoints, resume, probe fitting."""

from __future__ import annotations

import pytest
import torch

from graft.api import fit
from graft.config import DataConfig, EvalConfig, RunConfig, StrategyConfig, TrainConfig
from graft.engine import Callback, Engine, LengthGroupedShuffle, resolve_precision
from graft.errors import ConfigError
from graft.serialization import load_tensors
from tests.conftest import killed_then_resumed


class Interrupt(Callback):
    """Simulates Ctrl-C after a given epoch (its checkpoint is already on disk)."""

    def __init__(self, after_epoch: int) -> None:
        self.after_epoch = after_epoch

    def on_epoch_end(self, record, history) -> None:
        if record.epoch == self.after_epoch:
            raise KeyboardInterrupt


def _config(epochs: int = 3, folds: int = 5) -> RunConfig:
    return RunConfig(
        data=DataConfig(folds=folds, estimate="holdout"),  # a 20% test split: one recipe run, not 6
        evaluation=EvalConfig(baselines="none"),
        strategy=StrategyConfig(kind="full"),
        train=TrainConfig(epochs=epochs, batch_size=8, lr=5e-3, head_lr=5e-3, patience=epochs, seed=1),
    )


def _weights(model):
    return {k: v.detach().clone() for k, v in model.network_.state_dict().items()}


def test_fine_tuning_learns_the_tiny_task(tiny_source, sentiment_csv, tmp_path):
    """Small data: epochs chosen by 5-fold cross-validation, then a refit on every training example."""
    model = fit(sentiment_csv, backbone=tiny_source, config=_config(epochs=4), progress=False)
    assert model.report_.test.metrics["accuracy"] >= 0.8
    history, strategy = model.report_.history, model.report_.strategy
    assert "5-fold cross-validation" in model.report_.validation["selection"]
    assert len(history) == strategy["settings"]["epochs"] >= 1
    assert model.report_.data["train"] == 64 and model.report_.data["validation"] == 0
    assert all(h["val_metric"] is None for h in history)  # the refit has no validation data


def _history_without_times(model) -> list[dict]:
    return [{k: v for k, v in h.items() if k != "seconds"} for h in model.report_.history]


@pytest.mark.parametrize("after_epoch", [1, 2])
def test_resume_after_interruption_matches_an_uninterrupted_run(
    tiny_source, sentiment_csv, val_csv, tmp_path, after_epoch
):
    def run(out, **kw):
        return fit(
            sentiment_csv, backbone=tiny_source, config=_config(), out=out, val=val_csv, progress=False, **kw
        )

    straight = run(tmp_path / "a")
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "b", callbacks=[Interrupt(after_epoch=after_epoch)])
    last = tmp_path / "b" / "checkpoints" / "full" / "last"
    assert sorted(p.name for p in last.iterdir()) == [
        "model.safetensors",
        "optimizer.safetensors",
        "state.json",
    ]
    assert not (tmp_path / "b" / "bundle").exists()

    resumed = run(tmp_path / "b", resume=True)
    # Every epoch after the interruption, not only the best one (which may predate it), must match:
    # losses and metrics to the last bit, and the final weights bit for bit.
    assert _history_without_times(resumed) == _history_without_times(straight)
    assert len(resumed.report_.history) == 3
    a, b = _weights(straight), _weights(resumed)
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0, msg=name)
    assert (tmp_path / "b" / "bundle" / "graft.json").is_file()
    assert not (tmp_path / "b" / "checkpoints").exists()


def test_a_resume_that_finds_no_checkpoint_says_so(tiny_source, sentiment_csv, val_csv, tmp_path, capsys):
    """A run stopped before its training wrote a checkpoint (here: the checkpoint removed) restarts that
    training from its first epoch, and says so instead of restarting silently."""
    import shutil

    out, cfg = tmp_path / "r", _config(epochs=2)
    with pytest.raises(KeyboardInterrupt):
        fit(sentiment_csv, backbone=tiny_source, config=cfg, out=out, val=val_csv, progress=False,
            callbacks=[Interrupt(after_epoch=1)])  # fmt: skip
    shutil.rmtree(out / "checkpoints" / "full")
    capsys.readouterr()
    model = fit(
        sentiment_csv, backbone=tiny_source, config=cfg, out=out, val=val_csv, resume=True, progress=True
    )
    err = capsys.readouterr().err
    folder = out / "checkpoints" / "full"
    assert f"resume: no checkpoint in {folder}; starting training from its first epoch" in err
    assert "resuming after epoch" not in err
    assert len(model.report_.history) == 2


KILLED_RUN = """
import os, sys
from graft.api import fit
from graft.config import DataConfig, EvalConfig, RunConfig, StrategyConfig, TrainConfig
from graft.engine import Callback

class Kill(Callback):
    def on_epoch_end(self, record, history):
        if record.epoch == 1:
            os._exit(137)  # as abrupt as kill -9: no clean-up, no exception handlers

cfg = RunConfig(data=DataConfig(folds=2, estimate="holdout"), strategy=StrategyConfig(kind="full"),
                evaluation=EvalConfig(baselines="none"),
                train=TrainConfig(epochs=3, batch_size=8, lr=5e-3, head_lr=5e-3, patience=3, seed=1))
fit(sys.argv[1], backbone=sys.argv[2], config=cfg, out=sys.argv[3], progress=False,
    callbacks=[Kill()] if sys.argv[4] == "kill" else [], resume=sys.argv[4] == "resume")
"""


@pytest.mark.slow
def test_resume_in_a_new_process_after_a_kill(tiny_source, sentiment_csv, tmp_path):
    """The order of every epoch is a function of (seed, epoch): a new process resuming after a kill
    (where Accelerate's own epoch counter starts again at 0) trains exactly as the uninterrupted run.
    Here the killed training is the refit after a k-fold choice: the folds are chosen again, the same."""

    cfg = _config(folds=2)
    straight = fit(sentiment_csv, backbone=tiny_source, config=cfg, out=tmp_path / "a", progress=False)
    killed_then_resumed(
        KILLED_RUN, str(sentiment_csv), tiny_source, str(tmp_path / "b"), folder=tmp_path / "b"
    )
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


def test_resume_refuses_other_settings(tiny_source, sentiment_csv, val_csv, tmp_path):
    out = tmp_path / "r"
    with pytest.raises(KeyboardInterrupt):
        fit(sentiment_csv, backbone=tiny_source, config=_config(), out=out, val=val_csv, progress=False,
            callbacks=[Interrupt(after_epoch=1)])  # fmt: skip
    other = _config().replace("strategy", kind="partial")
    with pytest.raises(ConfigError, match=r"settings differ .*strategy.kind: 'full' -> 'partial'"):
        fit(
            sentiment_csv,
            backbone=tiny_source,
            config=other,
            out=out,
            val=val_csv,
            resume=True,
            progress=False,
        )
    with pytest.raises(ConfigError, match="already holds a running run; pass --resume"):
        fit(sentiment_csv, backbone=tiny_source, config=_config(), out=out, val=val_csv, progress=False)


def test_best_weights_are_restored(tiny_source, sentiment_csv, val_csv, tmp_path):
    cfg = _config(epochs=3)
    model = fit(sentiment_csv, backbone=tiny_source, config=cfg, out=tmp_path / "r", val=val_csv,
                progress=False)  # fmt: skip
    history, validation = model.report_.history, model.report_.validation
    curve = [validation["probe_val_metric"]] + [h["val_metric"] for h in history]  # epoch 0: the probe
    assert validation["epoch_curve"] == curve
    assert validation["best"] == max(curve) and validation["best_epoch"] == curve.index(max(curve))
    assert model.report_.strategy["shipped"] == ("linear_probe" if validation["best_epoch"] == 0 else "full")


def test_checkpoint_optimizer_state_is_stored_by_parameter_name(
    tiny_source, sentiment_csv, val_csv, tmp_path
):
    with pytest.raises(KeyboardInterrupt):
        fit(sentiment_csv, backbone=tiny_source, config=_config(), out=tmp_path / "r", val=val_csv,
            progress=False, callbacks=[Interrupt(after_epoch=1)])  # fmt: skip
    tensors = load_tensors(tmp_path / "r" / "checkpoints" / "full" / "last" / "optimizer.safetensors")
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


def test_engine_without_checkpoint_dir_keeps_nothing(tiny_source, sentiment_csv, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fit(sentiment_csv, backbone=tiny_source, config=_config(epochs=1), progress=False)
    assert not list(tmp_path.rglob("checkpoints")) and not list(tmp_path.rglob("*.safetensors"))
    assert Engine(TrainConfig(), metric="accuracy").checkpoint_dir is None


def test_length_grouped_batches_are_a_seeded_permutation_that_pads_little():
    lengths = [int(x) for x in torch.randint(1, 400, (1000,), generator=torch.Generator().manual_seed(0))]
    sampler = LengthGroupedShuffle(lengths, batch_size=32, seed=3)
    order = list(sampler)
    assert sorted(order) == list(range(1000)) and order == list(sampler)  # one permutation per epoch
    sampler.start_epoch(1)
    assert list(sampler) != order
    batches = [order[i : i + 32] for i in range(0, 1000, 32)]
    padded = sum(max(lengths[i] for i in b) * len(b) for b in batches)
    assert padded < 1.1 * sum(lengths)  # random batches of 32 from 1..400 pad to ~1.9x
    assert len(batches[-1]) == 1000 % 32  # the one short batch is the last: cuts fall on batch bounds
    assert LengthGroupedShuffle(lengths, 32, seed=3).__iter__().__next__() == order[0]


def test_text_fine_tuning_groups_batches_by_length_on_request(
    tiny_source, sentiment_csv, val_csv, monkeypatch
):
    seen = []
    original = Engine.fit

    def spy(self, *args, **kwargs):
        seen.append(kwargs.get("lengths"))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Engine, "fit", spy)
    cfg = RunConfig(
        train=TrainConfig(epochs=1, batching="by_length"), evaluation=EvalConfig(baselines="none")
    )
    fit(sentiment_csv, backbone=tiny_source, strategy="full", val=str(val_csv), config=cfg, progress=False)
    assert seen and all(lengths is not None and len(lengths) >= 60 for lengths in seen)
    seen.clear()
    cfg = cfg.replace("train", batching="random")  # the default
    fit(sentiment_csv, backbone=tiny_source, strategy="full", val=str(val_csv), config=cfg, progress=False)
    assert seen and all(lengths is None for lengths in seen)
