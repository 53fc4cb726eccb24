"""Linear-probe speed: graft.probe (scikit-learn solvers, warm starts, k-fold CV) vs the old
former graft.engine.fit_probe (copied below; full-batch torch L-BFGS, L2 chosen on one validation
split), same features, one run.

Cases (all multiclass, 384 features):
  * trec-100: real MiniLM features of 100 TREC training questions (6 classes, the closest real
    set to the "100 examples x 10 classes" case), tested on 400 further training questions. Features
    go through graft's feature cache, so a second run skips the extraction.
  * blobs-100: 100 synthetic examples x 10 classes (the spec's size), tested on 2,000 more.
  * blobs-10k: 10,000 synthetic examples x 77 classes, hold-out 8,000 / 2,000, tested on 2,000 more.

The synthetic features are NOT real embeddings: Gaussian class means plus Gaussian noise, both drawn
with the covariance of the real MiniLM features of TREC questions, so their conditioning (what
makes L-BFGS slow) resembles real features. Extracting 10,000 real embeddings costs minutes on a
laptop CPU, and no 77-class data set is at hand.

For each case, printed with wall and CPU seconds (the machine may be shared: CPU time is the
fairer measure of work; the old probe's torch uses every core, the new one a single BLAS thread):
  * the old probe on a hold-out split, and the new one on the same split (selection, then a fit on
    the training part at the chosen L2): the same work, so old/new is the solver's speed-up;
  * the new one as callers will run it: selection (5-fold CV over every example for the small
    cases, the hold-out split for the large one), then the final refit on every example.
Accuracy on the test part is printed beside each, so a speed-up bought with a worse model would
show.

Usage:  .venv/bin/python benchmarks/probe_speed.py [--skip-large] [--old-large-grid N]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from _shared import find_shared_data  # the script's folder is on sys.path
from torch import nn


def trec_features(n_fit: int, n_test: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Real MiniLM features of TREC questions: ``n_fit`` with at least 5 of each class, then ``n_test``."""
    from graft.backbones import create_backbone
    from graft.data.dataset import examples_fingerprint
    from graft.features import FeatureCache

    rows = [json.loads(line) for line in (find_shared_data() / "text/trec/train.jsonl").open()]
    rows = [rows[i] for i in np.random.default_rng(0).permutation(len(rows))]
    classes = sorted({r["label"] for r in rows})
    # ABBR is 1.6% of TREC: a plain random 100 could hold one, too few for 5-fold cross-validation
    fit = [i for c in classes for i in [j for j, r in enumerate(rows) if r["label"] == c][:5]]
    fit += [i for i in range(len(rows)) if i not in set(fit)][: n_fit - len(fit)]
    test = [i for i in range(len(rows)) if i not in set(fit)][:n_test]
    texts = [rows[i]["text"] for i in fit + test]
    y = torch.tensor([classes.index(rows[i]["label"]) for i in fit + test])
    x, cached = FeatureCache().get_or_extract(
        create_backbone("minilm"), texts, examples_fingerprint("text", texts), progress=False
    )
    print(f"TREC MiniLM features: {tuple(x.shape)} ({'from the cache' if cached else 'extracted'})")
    return x[:n_fit], y[:n_fit], x[n_fit:], y[n_fit:]


def blobs(
    n: int, classes: int, n_test: int, covariance: np.ndarray, seed: int = 0, separation: float = 0.3
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Synthetic features: class means and noise drawn with the real features' covariance."""
    rng = np.random.default_rng(seed)
    root = np.linalg.cholesky(covariance + 1e-6 * np.eye(len(covariance)))
    means = separation * rng.standard_normal((classes, len(covariance))) @ root.T
    y = np.concatenate([rng.permutation(np.arange(n) % classes), rng.integers(0, classes, n_test)])
    x = means[y] + rng.standard_normal((n + n_test, len(covariance))) @ root.T
    x, y = torch.tensor(x, dtype=torch.float32), torch.tensor(y)
    return x[:n], y[:n], x[n:], y[n:]


def accuracy(head: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((head.eval()(x).argmax(1) == y).float().mean())


class Timed:
    """Wall and CPU seconds of a block. On a shared machine the wall time includes waiting for a
    core; the CPU time (all threads of this process) does not."""

    def __enter__(self) -> Timed:
        self._wall, self._cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self._wall
        self.cpu = time.process_time() - self._cpu

    def __str__(self) -> str:
        return f"{self.wall:7.2f} s wall, {self.cpu:7.2f} s cpu"


def run_case(
    name: str,
    x: torch.Tensor,
    y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    *,
    cv: bool,
    old_grid: tuple[float, ...] | None = None,
) -> None:
    from graft.heads import make_head
    from graft.probe import L2_GRID, fit_linear_head, select_l2, stratified_folds

    classes = int(y.max()) + 1
    print(f"\n== {name}: {len(y)} examples x {x.shape[1]} features, {classes} classes; test {len(test_y)}")
    # one hold-out split, used by the old probe and by the new one for the same-work comparison
    folds = stratified_folds("multiclass", y.numpy(), k=5, seed=0)
    train_idx, val_idx = folds[0]
    tr, va = torch.as_tensor(train_idx), torch.as_tensor(val_idx)
    split = f"hold-out {len(tr)}/{len(va)}"
    grid = old_grid or L2_GRID
    if old_grid is not None:
        split += f", first {len(grid)} of {len(L2_GRID)} grid values"

    head = make_head("multiclass", x.shape[1], classes)
    head.set_input_stats(x[tr])
    with Timed() as old_t:
        old = fit_probe(
            head, x[tr], y[tr], x[va], y[va], loss_fn=head.loss,
            metric_fn=lambda out, target: float((out.argmax(1) == target).float().mean()), grid=grid,
        )  # fmt: skip
    print(f"  old fit_probe ({split}):  {old_t}  l2 {old.l2:g}  val acc {old.val_metric:.3f}  "
          f"test acc {accuracy(head, test_x, test_y):.3f}")  # fmt: skip

    with Timed() as new_t:
        sel = select_l2("multiclass", x, y, folds=[(train_idx, val_idx)], grid=grid)
        head = make_head("multiclass", x.shape[1], classes)
        fit_linear_head(head, x[tr], y[tr], sel.l2)
    print(f"  new probe     ({split}):  {new_t}  l2 {sel.l2:g}  val acc {sel.score:.3f}  "
          f"test acc {accuracy(head, test_x, test_y):.3f}")  # fmt: skip
    print(f"  -> same work: new is {old_t.wall / new_t.wall:.1f}x faster in wall time, "
          f"{old_t.cpu / new_t.cpu:.1f}x in cpu time")  # fmt: skip

    with Timed() as sel_t:
        sel = select_l2("multiclass", x, y, folds=folds if cv else [(train_idx, val_idx)])
    with Timed() as refit_t:
        head = make_head("multiclass", x.shape[1], classes)
        fit_linear_head(head, x, y, sel.l2)
    how = f"{len(folds)}-fold CV over all {len(y)}" if cv else f"{split.split(',')[0]}, full grid"
    print(f"  new probe as callers will run it: selection ({how}) {sel_t}; refit on all {len(y)} "
          f"{refit_t}; l2 {sel.l2:g}  score {sel.score:.3f}  "
          f"test acc {accuracy(head, test_x, test_y):.3f}")  # fmt: skip
    print(f"  -> new selection + refit vs the old hold-out: {old_t.wall / (sel_t.wall + refit_t.wall):.1f}x "
          f"faster in wall time, {old_t.cpu / (sel_t.cpu + refit_t.cpu):.1f}x in cpu time")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--skip-large", action="store_true", help="leave out the 10,000 x 77 case")
    parser.add_argument(
        "--old-large-grid", type=int, default=None,
        help="run the old probe on only the first N grid values of the large case (it can take "
        "many minutes); the same-work comparison then runs the same N",
    )  # fmt: skip
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from graft.probe import L2_GRID

    print(f"CPU threads: torch {torch.get_num_threads()}, os {os.cpu_count()}; "
          f"load average at start {os.getloadavg()[0]:.1f} (a shared machine slows both sides)")  # fmt: skip
    x, y, test_x, test_y = trec_features(100, 400)
    covariance = np.cov(torch.cat([x, test_x]).double().numpy(), rowvar=False)
    run_case("trec-100 (real MiniLM features)", x, y, test_x, test_y, cv=True)
    run_case("blobs-100 (synthetic, see docstring)", *blobs(100, 10, 2000, covariance), cv=True)
    if not args.skip_large:
        grid = None if args.old_large_grid is None else L2_GRID[: args.old_large_grid]
        run_case("blobs-10k (synthetic, see docstring)", *blobs(10_000, 77, 2000, covariance, seed=1),
                 cv=False, old_grid=grid)  # fmt: skip
    print(f"\nload average at end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()


# --------------------------------------------------------------------------------------------------
# the baseline: graft's probe before issue 8 (full-batch torch L-BFGS over the grid), kept here verbatim


LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
MetricFn = Callable[[torch.Tensor, torch.Tensor], float]


@dataclass
class ProbeResult:
    l2: float
    val_metric: float
    val_loss: float
    grid: list[dict[str, float]]


def fit_probe(
    module: nn.Module,
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    val_x: torch.Tensor,
    val_y: torch.Tensor,
    *,
    loss_fn: LossFn,
    metric_fn: MetricFn,
    grid: Sequence[float] = (1.0, 3e-1, 1e-1, 3e-2, 1e-2, 3e-3, 1e-3, 3e-4, 1e-4, 1e-5),
    max_iter: int = 200,
) -> ProbeResult:
    """Full-batch L-BFGS on features, L2 strength chosen on validation (metric, then loss).

    The grid runs from strong to weak regularisation, each fit warm-started from the previous one.
    ``module`` ends with the chosen solution. Only weight matrices are penalised, not biases.
    """
    params = [p for p in module.parameters() if p.requires_grad]
    weights = [p for p in params if p.ndim > 1]
    best: tuple[tuple[float, float], float, dict[str, torch.Tensor]] | None = None
    table = []
    module.train()
    for l2 in grid:
        optimizer = torch.optim.LBFGS(
            params, lr=1.0, max_iter=max_iter, history_size=20, line_search_fn="strong_wolfe"
        )

        def closure(l2: float = l2, optimizer: torch.optim.Optimizer = optimizer) -> torch.Tensor:
            optimizer.zero_grad()
            loss = loss_fn(module(train_x), train_y) + 0.5 * l2 * sum(w.pow(2).sum() for w in weights)
            loss.backward()
            return loss

        optimizer.step(closure)
        with torch.no_grad():
            module.eval()
            outputs = module(val_x)
            module.train()
            metric, loss = float(metric_fn(outputs, val_y)), float(loss_fn(outputs, val_y))
        table.append({"l2": l2, "val_metric": metric, "val_loss": loss})
        key = (metric, -loss)
        if best is None or key > best[0]:
            best = (key, l2, {k: v.detach().clone() for k, v in module.state_dict().items()})
    module.load_state_dict(best[2])
    module.zero_grad(set_to_none=True)
    module.eval()
    return ProbeResult(l2=best[1], val_metric=best[0][0], val_loss=-best[0][1], grid=table)


# --------------------------------------------------------------------------------------------------
# a plain step loop, for objectives that couple the examples of a batch (contrastive body tuning)
