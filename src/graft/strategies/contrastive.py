"""``contrastive``: the embedding body is tuned with a supervised contrastive loss, then a linear probe
is fitted on the tuned embeddings (what SetFit does with sampled pairs, in O(batch) per step)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import numpy as np

from graft.strategies import register_strategy
from graft.strategies.base import Strategy

if TYPE_CHECKING:
    from graft.data import Dataset
    from graft.recipe import Selection, Trained, Workbench

# The learning-rate schedule spans --contrastive-steps (default 40); cross-validation picks how many of
# them to keep, among these fractions (0 = the pretrained body: the plain probe). Measured in
# benchmarks/contrastive_sweep.py.
STEP_FRACTIONS = (0, 1 / 8, 1 / 4, 1 / 2, 1)
LR = 2e-5
# Each fold tunes a body: at most this many folds, the first ones of the protocol's (so that auto
# compares contrastive with the other candidates fold by fold, on the same validation examples).
MAX_FOLDS = 3
TEMPERATURE = 0.1
BATCH_SIZE = 64


def steps_choice(scores: np.ndarray) -> int:
    """Which column of ``scores`` (folds x step counts, fewest steps first) to keep: the full schedule
    unless a shorter one beats it by more than one standard error of their paired fold differences.

    The full schedule is the measured default (benchmarks/contrastive_sweep.py, 8 per class: mean test
    accuracy rises with the steps, through 40 to 80, on TREC and SST-2); its snapshots part-way through
    the schedule are not annealed runs. On 3 folds of 3-7 validation examples the arg-max chased noise
    (TREC at 8 per class: 5 of 40 steps kept once, 0.64 on test where SetFit scored 0.82); where folds
    are large enough to tell, a shorter count or the pretrained body (0 steps) still wins. On one
    hold-out: the arg-max, ties to the fewest steps."""
    full = scores.shape[1] - 1
    if scores.shape[0] < 2:
        return int(np.argmax(scores.mean(0)))
    diffs = scores - scores[:, [full]]
    gain, se = diffs.mean(0), diffs.std(0, ddof=1) / np.sqrt(scores.shape[0])
    wins = [j for j in range(full) if gain[j] > se[j] + 1e-12]
    return max(wins, key=lambda j: gain[j]) if wins else full


class Contrastive(Strategy):
    """Helps most with a handful of labels per class on an embedding backbone (sentence encoders,
    image embedders): the supervised contrastive loss (Khosla et al. 2020) pulls same-class examples
    together and pushes the rest apart, over every pair of a label-aware batch at once, so the linear
    probe fitted afterwards sees well-separated classes (TREC at 8 per class: +20 points over the frozen
    probe). How many steps to keep is chosen by cross-validation, with 0 steps (the plain probe) among
    the candidates, so a body that the loss would collapse is never shipped. Multiclass only."""

    name = "contrastive"
    frozen_backbone = False
    tasks = ("multiclass",)
    summary = "the body tuned with a supervised contrastive loss (steps chosen by CV), then a linear probe"

    max_folds = MAX_FOLDS

    def examples_per_training(self, bench: Workbench, n_train: int) -> float:
        """Examples passed forward and backward by one training (for auto's cost estimate)."""
        return bench.cfg.strategy.contrastive_steps * min(n_train, BATCH_SIZE)

    @staticmethod
    def step_grid(schedule: int) -> tuple[int, ...]:
        """The step counts cross-validation chooses among, for a schedule of ``schedule`` steps."""
        return tuple(dict.fromkeys(round(f * schedule) for f in STEP_FRACTIONS))

    def select(self, bench: Workbench, data: Dataset, folds: list[Any]) -> Selection:
        from graft.recipe import Selection, oof_from

        t = time.perf_counter()
        n_protocol, folds = len(folds), folds[:MAX_FOLDS]
        grid = self.step_grid(bench.cfg.strategy.contrastive_steps)
        scores = np.zeros((len(folds), len(grid)))
        outputs: list[list[Any]] = [[None] * len(grid) for _ in folds]
        for i, (train_idx, val_idx) in enumerate(folds):
            if len(folds) > 1:
                bench.say(f"contrastive: fold {i + 1} of {len(folds)}")
            train, val = data.subset(train_idx), data.subset(val_idx)
            backbone = bench.fresh_backbone()
            snapshots = self._tune(bench, backbone, train, snapshot_at=grid[1:])
            for j, steps in enumerate(grid):
                if steps:
                    backbone.load_state_dict(snapshots[steps])
                trained = self._probe(bench, backbone if steps else None, train, steps)
                scores[i, j], outputs[i][j] = bench.scored_outputs(trained, val)
        mean, std = scores.mean(0), scores.std(0)
        best = steps_choice(scores)
        table = [
            {"steps": s, "score": float(m), "score_std": float(d)}
            for s, m, d in zip(grid, mean, std, strict=True)
        ]
        how = "hold-out validation" if len(folds) == 1 else f"{len(folds)}-fold cross-validation"
        if len(folds) < n_protocol:
            how = f"the first {len(folds)} of the {n_protocol} cross-validation folds"
        return Selection(
            self.name, {"steps": grid[best]}, float(mean[best]), float(std[best]), how,
            time.perf_counter() - t, fold_scores=scores[:, best].tolist(), detail={"steps_grid": table},
            oof=oof_from([(np.asarray(va), outputs[i][best]) for i, (_, va) in enumerate(folds)]),
        )  # fmt: skip

    def train(
        self, bench: Workbench, train: Dataset, val: Dataset | None, settings: dict[str, Any]
    ) -> Trained:
        steps = settings.get("steps", bench.cfg.strategy.contrastive_steps)
        backbone = None
        if steps:
            backbone = bench.fresh_backbone()
            self._tune(bench, backbone, train, snapshot_at=(steps,), checkpoint=True)
        trained = self._probe(bench, backbone, train, steps)
        if val is not None:
            trained.val_metric = bench.score(trained, val)
        return trained

    def _tune(
        self,
        bench: Workbench,
        backbone: Any,
        train: Dataset,
        snapshot_at: tuple[int, ...],
        checkpoint: bool = False,
    ) -> dict:
        """Tune ``backbone`` in place; ``checkpoint``: this is the training of the run's model (not a fold's),
        which checkpoints and resumes where the workbench says (see ``Workbench.checkpointing``)."""
        from graft.contrastive import tune_body

        folder = bench.checkpoint_dir(self.name) if checkpoint else None
        return tune_body(
            backbone, train.examples, train.targets.tolist(), lr=LR, batch_size=BATCH_SIZE,
            steps=bench.cfg.strategy.contrastive_steps, temperature=TEMPERATURE, seed=bench.cfg.train.seed,
            snapshot_at=snapshot_at, progress=bench.progress, checkpoint_dir=folder,
            resume=bench.resume and folder is not None, callbacks=bench.run_callbacks if checkpoint else (),
        )  # fmt: skip

    def _probe(self, bench: Workbench, backbone: Any, train: Dataset, steps: int) -> Trained:
        """A linear probe on the tuned body's embeddings (``backbone`` ``None``: the pretrained one)."""
        from graft.features import extract_features
        from graft.heads import TaskModel
        from graft.probe import fit_linear_head
        from graft.recipe import Trained

        if backbone is None:
            x = bench.features(train)
        else:
            x = extract_features(backbone, train.examples, progress=False)
        head = bench.new_head(train)
        l2 = bench.choose_l2(x, train.targets)
        fit_linear_head(head, x, train.targets, l2)
        network = TaskModel(backbone if backbone is not None else bench.backbone, head)
        trained = Trained(
            network, self.name, frozen_backbone=backbone is None, record={"steps": steps, "l2": l2}
        )
        if not steps:
            trained.shipped = "linear_probe"
            trained.shipped_reason = (
                "cross-validation preferred 0 steps of contrastive tuning: the probe on the pretrained "
                "body shipped"
            )
        return trained


register_strategy(Contrastive())
