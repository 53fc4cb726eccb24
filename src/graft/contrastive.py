"""Contrastive tuning of a backbone's body before its head is fitted (SetFit's idea, one pass per step).

With a handful of labels per class, a sentence-embedding body tuned so that same-class examples sit
together, followed by a linear head on its embeddings, beats a head on frozen embeddings by a wide
margin (SetFit, Tunstall et al. 2022). SetFit trains on sampled sentence pairs; the supervised
contrastive loss used here (Khosla et al. 2020) uses every pair of a batch at once, so a step costs
one forward and backward pass over the batch, O(batch) examples.

Three pieces: :func:`supcon_loss` (the objective), :func:`label_batches` (batches where every class
present has positives) and :func:`tune_body` (the loop, through :func:`graft.engine.train_steps`,
returning weight snapshots at chosen steps so that one run is scored at several step counts).

The body is tuned for a single-label (multiclass) task only: "same class" has no meaning for
regression, and several labels per example would need another notion of positives. Callers refuse
other tasks with a :class:`~graft.errors.ConfigError` before calling :func:`tune_body`.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Hashable, Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from graft.engine import Callback, save_weights, train_steps
from graft.errors import ConfigError, DataError, GraftError
from graft.features import default_device
from graft.serialization import load_tensors

__all__ = ["label_batches", "supcon_loss", "tune_body"]

# A checkpointed tuning writes this many checkpoints over its schedule (and one after its last step).
# Steps, not passes over the data: with a few labels per class every step is a pass, so a checkpoint
# per pass would be one per step (MiniLM's body with its AdamW moments is 271 MB, 0.45 s to write on a
# 2-core CPU where a step of 64 SST-2 texts took 15 s; a GPU step is far shorter than the write), while
# on a large set the schedule ends before its first pass. So an interruption loses at most an eighth
# of the schedule, for at most 9 writes whatever the schedule's length.
CHECKPOINTS_PER_SCHEDULE = 8


def supcon_loss(embeddings: torch.Tensor, labels: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """Supervised contrastive loss (Khosla et al. 2020, the L_out form) of one batch.

    Embeddings are L2-normalised; for each anchor i, every other example of its class is a positive
    and the loss is the mean over positives p of ``-log softmax_j(z_i . z_j / temperature)[p]``, the
    softmax running over every example but i. Anchors without a positive in the batch are skipped;
    the result is the mean over the remaining anchors (0, still attached to the graph, if none is left).

    Args:
        embeddings: ``[n, d]``.
        labels: ``[n]`` integer class ids.
        temperature: smaller values weigh the hardest negatives more.

    Example:
        >>> z = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
        >>> supcon_loss(z, torch.tensor([0, 0, 1, 1])) < supcon_loss(z, torch.tensor([0, 1, 0, 1]))
        tensor(True)
    """
    z = nn.functional.normalize(embeddings.float(), dim=-1)
    n = z.shape[0]
    self_mask = torch.eye(n, dtype=torch.bool, device=z.device)
    logits = (z @ z.T / temperature).masked_fill(self_mask, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    positives = (labels[:, None] == labels[None, :]) & ~self_mask
    n_pos = positives.sum(1)
    anchors = n_pos > 0
    if not bool(anchors.any()):
        return embeddings.sum() * 0.0
    # where(), not a product with the mask: the diagonal of log_prob is -inf and -inf * 0 is nan
    per_anchor = torch.where(positives, log_prob, 0.0).sum(1)[anchors] / n_pos[anchors]
    return -per_anchor.mean()


def label_batches(targets: Sequence[Hashable], batch_size: int, seed: int = 0) -> Iterator[list[int]]:
    """An endless stream of batches of indices into ``targets`` in which every class present has >= 2 members.

    When every example fits in one batch, each batch is the whole set, shuffled. Otherwise each pass
    over the data shuffles every class and cuts it into pairs (an odd class's last three stay
    together); the pairs of all classes are interleaved in proportion to the classes' sizes, at
    random offsets, and the sequence is cut into ``ceil(n / (batch_size - 2))`` near-equal runs. So
    every batch mixes the classes about as the data does, never holds more than ``batch_size``
    examples, and every example appears once per pass. A class with a single example cannot have a
    positive; it still serves as a negative. With a batch of only a few pairs (``batch_size`` under
    about 16) a batch may hold a single class. Deterministic for a seed.

    Example:
        >>> targets = ["a"] * 10 + ["b"] * 6 + ["c"] * 5
        >>> batches = label_batches(targets, batch_size=10, seed=0)
        >>> ["".join(sorted(targets[i] for i in next(batches))) for _ in range(3)]  # one pass
        ['aaaabb', 'aaaabbcc', 'aabbccc']

    Raises:
        ConfigError: ``batch_size`` < 4 (a pair plus a triple must fit the bound above).
    """
    if batch_size < 4:
        raise ConfigError(f"contrastive batch_size must be at least 4, got {batch_size}")
    n = len(targets)
    if n == 0:
        raise DataError("no examples to make batches of")
    rng = random.Random(seed)
    if n <= batch_size:
        order = list(range(n))
        while True:
            rng.shuffle(order)
            yield list(order)
    by_class: dict[Hashable, list[int]] = {}
    for i, label in enumerate(targets):
        by_class.setdefault(label, []).append(i)
    n_batches = -(-n // (batch_size - 2))
    while True:
        keyed: list[tuple[float, float, list[int]]] = []
        for members in by_class.values():
            members = rng.sample(members, len(members))
            pairs = [members[i : i + 2] for i in range(0, len(members), 2)]
            if len(pairs) > 1 and len(pairs[-1]) == 1:
                single = pairs.pop()
                pairs[-1] += single
            offset = rng.random()
            keyed += [((i + offset) / len(pairs), rng.random(), pair) for i, pair in enumerate(pairs)]
        keyed.sort(key=lambda k: k[:2])
        # A batch closes once the examples dealt so far reach its share k * n / n_batches; it started
        # at or after the previous share, so it holds at most n / n_batches + 2 <= batch_size.
        batches: list[list[int]] = [[]]
        dealt = 0
        for _, _, chunk in keyed:
            batches[-1] += chunk
            dealt += len(chunk)
            if dealt * n_batches >= n * len(batches) and dealt < n:
                batches.append([])
        rng.shuffle(batches)
        yield from batches


def tune_body(
    backbone: nn.Module,
    examples: Sequence[Any],
    targets: Sequence[Hashable],
    *,
    steps: int,
    lr: float,
    batch_size: int = 64,
    temperature: float = 0.1,
    seed: int = 0,
    snapshot_at: Sequence[int] = (),
    progress: bool = False,
    checkpoint_dir: Path | None = None,
    resume: bool = False,
    callbacks: Sequence[Callback] = (),
) -> dict[int, dict[str, torch.Tensor]]:
    """Tune every parameter of ``backbone`` with :func:`supcon_loss` on its outputs; snapshot weights.

    ``backbone`` is a graft backbone (``preprocess(list) -> batch``, ``forward(batch) -> [n, d]``);
    it trains in place, in train mode (dropout on, as sentence-transformers trains), on the default
    device, with AdamW (no weight decay on biases and norms) and a schedule that warms up over 10% of
    ``steps`` then decays linearly to 0 at ``steps``. Every parameter is set to require gradients for
    the run; the previous flags and train/eval mode are restored on return.

    Training stops after the last step in ``snapshot_at`` (``steps`` when it is empty); the schedule
    still spans ``steps``. So a snapshot at step k of a run with ``steps=K`` is what a later run with
    the same ``steps=K, snapshot_at=(k,)`` reproduces, at the cost of k steps: choose k by
    cross-validation over the snapshots of one run, then refit with the same K.

    With ``checkpoint_dir`` the tuning writes a checkpoint (``last/``, the engine's format) every
    ``steps / CHECKPOINTS_PER_SCHEDULE`` steps and after its last one, and each snapshot before the
    last beside it; with ``resume`` it continues from there and the weights come out bit for bit as an
    uninterrupted tuning's: the batches are a function of (seed, step), and the optimizer, schedule and
    dropout's random state are restored.

    Args:
        backbone: the body to tune.
        examples: raw examples as ``backbone.preprocess`` takes them.
        targets: one class label per example (a single-label task; see the module docstring).
        steps: length of the learning-rate schedule, in optimiser steps of one batch each.
        lr: peak learning rate.
        batch_size: examples per step; a training set this small or smaller is one batch.
        temperature: of :func:`supcon_loss`.
        seed: fixes batches and dropout (the global random state is left as it was).
        snapshot_at: steps after which to keep a copy of the weights.
        progress: show a progress bar and resume messages on stderr.
        checkpoint_dir: where checkpoints go (the run's model only; ``None``: none are written).
        resume: continue from the checkpoint in ``checkpoint_dir``, or say that there is none.
        callbacks: their ``on_step_end`` runs after each step (and its checkpoint).

    Returns:
        ``{step: state_dict}`` with CPU copies of the backbone's weights after each requested step
        (``{steps: ...}`` when ``snapshot_at`` is empty). The backbone holds the last of them.

    Raises:
        ConfigError: a setting out of range.
        DataError: examples and targets differ in length, fewer than 2 classes, or no class with 2 examples.
        GraftError: the checkpoint to resume from belongs to another tuning.

    Example:
        >>> snaps = tune_body(create_backbone("minilm"), texts, labels, steps=80, lr=2e-5,
        ...                   snapshot_at=(20, 40, 80))  # doctest: +SKIP
        >>> backbone.load_state_dict(snaps[40])  # doctest: +SKIP
    """
    _check(examples, targets, steps=steps, lr=lr, temperature=temperature, snapshot_at=snapshot_at)
    wanted = set(snapshot_at) or {steps}
    last = max(wanted)
    ids = {label: i for i, label in enumerate(dict.fromkeys(targets))}
    labels = torch.tensor([ids[t] for t in targets])

    def batches(done: int) -> Iterator[tuple[Any, torch.Tensor]]:
        # a resumed tuning skips the index lists of the steps done, preprocessing none of them
        for index in itertools.islice(label_batches(targets, batch_size, seed), done, last):
            yield backbone.preprocess([examples[i] for i in index]), labels[index]

    device = default_device()
    backbone.to(device)
    params = list(backbone.parameters())
    # weight decay on matrices only, as BERT and sentence-transformers train: decaying a LayerNorm's
    # gain pulls it towards 0
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "lr": lr, "group": "decay"},
        {"params": [p for p in params if p.ndim < 2], "lr": lr, "weight_decay": 0.0, "group": "no_decay"},
    ]
    snapshots: dict[int, dict[str, torch.Tensor]] = {}

    def snapshot(step: int) -> None:
        if step in wanted:
            snapshots[step] = {k: v.detach().to("cpu", copy=True) for k, v in backbone.state_dict().items()}
            if checkpoint_dir is not None and step != last:  # on disk before the step's checkpoint
                _save_snapshot(snapshots[step], checkpoint_dir / f"snapshot-{step}.safetensors")

    flags = [p.requires_grad for p in params]
    was_training = backbone.training
    cuda = [device.index or 0] if device.type == "cuda" else []
    try:
        for p in params:
            p.requires_grad_(True)
        backbone.train()
        with torch.random.fork_rng(devices=cuda):
            torch.manual_seed(seed)
            losses = train_steps(
                backbone, groups, batches, partial(supcon_loss, temperature=temperature), steps=steps,
                on_step=snapshot, callbacks=callbacks, progress=progress, desc="contrastive body tuning",
                checkpoint_dir=checkpoint_dir, resume=resume,
                checkpoint_every=math.ceil(steps / CHECKPOINTS_PER_SCHEDULE),
            )  # fmt: skip
    finally:
        for p, flag in zip(params, flags, strict=True):
            p.requires_grad_(flag)
        backbone.train(was_training)
        backbone.zero_grad(set_to_none=True)
    if len(losses) > last:
        raise GraftError(
            f"cannot resume contrastive tuning: the checkpoint in {checkpoint_dir} is past step {last}, the "
            "last this tuning trains; start without --resume or use a new --out folder"
        )
    for step in wanted - set(snapshots):  # taken before the checkpoint a resumed tuning started from
        snapshots[step] = _resumed_snapshot(backbone, step, last, checkpoint_dir)
    return snapshots


def _save_snapshot(state: dict[str, torch.Tensor], path: Path) -> None:
    from graft.distributed import is_main_process

    if is_main_process():  # one writer under accelerate launch
        path.parent.mkdir(parents=True, exist_ok=True)
        save_weights(state, path)


def _resumed_snapshot(
    backbone: nn.Module, step: int, last: int, checkpoint_dir: Path | None
) -> dict[str, torch.Tensor]:
    """The snapshot at ``step`` of a resumed tuning: the weights it ended with at the last step, the
    file written beside the checkpoints for an earlier one."""
    if step == last:
        return {k: v.detach().to("cpu", copy=True) for k, v in backbone.state_dict().items()}
    path = checkpoint_dir / f"snapshot-{step}.safetensors" if checkpoint_dir is not None else None
    if path is None or not path.is_file():
        raise GraftError(
            f"cannot resume contrastive tuning: the weights after step {step} are not in {checkpoint_dir}; "
            "start without --resume or use a new --out folder"
        )
    return load_tensors(path)


def _check(
    examples: Sequence[Any],
    targets: Sequence[Hashable],
    *,
    steps: int,
    lr: float,
    temperature: float,
    snapshot_at: Sequence[int],
) -> None:
    problems = []
    if steps < 1:
        problems.append(f"steps must be at least 1, got {steps}")
    if not lr > 0:
        problems.append(f"lr must be positive, got {lr}")
    if not temperature > 0:
        problems.append(f"temperature must be positive, got {temperature}")
    outside = sorted(s for s in snapshot_at if not 1 <= s <= steps)
    if outside:
        problems.append(f"snapshot_at steps {outside} lie outside 1..{steps} (steps)")
    if problems:
        raise ConfigError("contrastive body tuning: " + "; ".join(problems))
    if len(examples) != len(targets):
        raise DataError(f"{len(examples)} examples but {len(targets)} targets; give one label per example")
    counts: dict[Hashable, int] = {}
    for t in targets:
        counts[t] = counts.get(t, 0) + 1
    if len(counts) < 2 or max(counts.values()) < 2:
        raise DataError(
            f"contrastive body tuning needs at least 2 classes and a class with 2 examples; got class "
            f"counts {counts}"
        )
