"""Does `graft rank` order backbones the way their held-out accuracy does?

For each candidate: `graft.rank` scores it on a small labeled ranking set (LogME and the k-fold CV
score of a linear probe); then the same kind of model a user would build from that set, a linear
probe with its L2 chosen by CV on the ranking set, is scored on a disjoint held-out set. Kendall's
tau (scipy) compares each ranking score's order with the held-out accuracies.

* images: CIFAR-10 ResNet-20/32/44/56 (the shared checkpoints) and a random-weight ResNet-20, on
  `images/cifar10_jpg_test`: --per-class images of each class to rank, --held-out others to test.
  With --finetune, each candidate is also fine-tuned on the ranking set (graft.fit, strategy "full":
  LP-FT, epochs chosen by 5-fold CV, then a refit on all of it) and scored on the held-out images:
  tau is then printed against the fine-tuned accuracy too.
* text: minilm vs mpnet (needs `graft fetch mpnet`) on TREC at --text-per-class examples per class,
  over --seeds draws; held-out accuracy on TREC's test file (500 questions).

Run:  python benchmarks/rank.py [--skip-text] [--skip-images] [--per-class 50] [--held-out 100] [--finetune]
Every feature goes through a fresh feature cache (timings are cold) unless --cache DIR is given.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from _shared import find_shared_data  # the script's folder is on sys.path
from scipy.stats import kendalltau

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def held_out_accuracy(spec: str, weights: str | None, train, test, seed: int) -> float:
    """A linear probe fitted on ``train`` (L2 by 5-fold CV there), accuracy on ``test``."""
    import torch

    from graft.backbones import create_backbone
    from graft.features import FeatureCache
    from graft.heads import make_head
    from graft.probe import fit_linear_head, select_l2, stratified_folds

    torch.manual_seed(0)  # the random-weight candidate: the same network rank() scored
    bb = create_backbone(spec, weights=weights)
    cache, sha = FeatureCache(), bb.weights_sha256()
    feats = [
        cache.get_or_extract(bb, ds.examples, ds.examples_fingerprint(), progress=False, weights_sha256=sha)[
            0
        ]
        for ds in (train, test)
    ]
    folds = stratified_folds("multiclass", train.targets, 5, seed)
    l2 = select_l2("multiclass", feats[0], train.targets, folds=folds).l2
    head = make_head("multiclass", bb.feature_dim, len(train.label_space))
    fit_linear_head(head, feats[0], train.targets, l2)
    with torch.no_grad():
        predicted = head(feats[1]).argmax(1).numpy()
    return float((predicted == test.targets).mean())


def finetuned_accuracy(spec: str, weights: str | None, train: dict, test: dict, args) -> float:
    """graft.fit(strategy="full") on ``train`` (LP-FT; epochs by 5-fold CV, then a refit on all of
    it), accuracy on ``test``: the CIFAR example's settings."""
    import torch

    import graft
    from graft.config import RunConfig

    torch.manual_seed(0)  # the random-weight candidate: the same network rank() scored
    config = RunConfig().replace("train", epochs=args.finetune_epochs, batch_size=64, lr=3e-4,
                                 head_lr=3e-3, patience=args.finetune_epochs, seed=args.seed)  # fmt: skip
    model = graft.fit(train, backbone=spec, weights=weights, strategy="full", test=test, config=config,
                      progress=False, baselines="none")  # fmt: skip
    return float(model.report_.test.metrics["accuracy"])


def compare(name: str, result, truth: dict[str, float], tuned: dict[str, float] | None = None) -> dict:
    rows = result.rows
    acc = [truth[r.backbone] for r in rows]
    tau_cv = kendalltau([r.cv_score for r in rows], acc)
    tau_logme = kendalltau([r.logme for r in rows], acc)
    print(f"\n== {name}: {result.n_examples} ranking examples; held-out accuracy of a probe fitted on them")
    extra = f"{'fine-tuned':>12}" if tuned else ""
    print(f"{'backbone':<38}{'LogME':>9}{'CV acc':>16}{'held-out acc':>14}{extra}{'s':>7}")
    for r, a in zip(rows, acc, strict=True):
        extra = f"{tuned[r.backbone]:>12.4f}" if tuned else ""
        print(f"{r.backbone:<38}{r.logme:>9.4f}{r.cv_score:>9.4f} ±{r.cv_std:.3f}{a:>14.4f}{extra}"
              f"{r.seconds:>7.1f}")  # fmt: skip
    print(f"Kendall tau vs held-out accuracy: CV {tau_cv.statistic:+.3f} (p={tau_cv.pvalue:.3f}), "
          f"LogME {tau_logme.statistic:+.3f} (p={tau_logme.pvalue:.3f})")  # fmt: skip
    out = {
        "ranking": [{**r.to_dict(), "held_out_accuracy": a} for r, a in zip(rows, acc, strict=True)],
        "tau_cv": float(tau_cv.statistic),
        "tau_logme": float(tau_logme.statistic),
    }
    if tuned:
        ft = [tuned[r.backbone] for r in rows]
        t_cv, t_logme = kendalltau([r.cv_score for r in rows], ft), kendalltau([r.logme for r in rows], ft)
        print(f"Kendall tau vs fine-tuned accuracy: CV {t_cv.statistic:+.3f} (p={t_cv.pvalue:.3f}), "
              f"LogME {t_logme.statistic:+.3f} (p={t_logme.pvalue:.3f})")  # fmt: skip
        for row, a in zip(out["ranking"], ft, strict=True):
            row["finetuned_accuracy"] = a
        out.update(tau_cv_finetuned=float(t_cv.statistic), tau_logme_finetuned=float(t_logme.statistic))
    return out


def images(args: argparse.Namespace) -> dict:
    from graft.data import read_dataset
    from graft.rank import rank

    root = find_shared_data() / "images" / "cifar10_jpg_test"
    models = find_shared_data() / "models"
    rng = np.random.default_rng(args.seed)
    rank_paths, rank_labels, test_paths, test_labels = [], [], [], []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        files = sorted(str(f) for f in folder.glob("*.jpg"))
        chosen = rng.choice(len(files), args.per_class + args.held_out, replace=False)
        rank_paths += [files[i] for i in chosen[: args.per_class]]
        test_paths += [files[i] for i in chosen[args.per_class :]]
        rank_labels += [folder.name] * args.per_class
        test_labels += [folder.name] * args.held_out
    candidates = [f"arch:resnet{d}={models / f'resnet{d}_cifar10.th'}" for d in (20, 32, 44, 56)]
    candidates.append("arch:resnet20")  # random weights: the floor
    t = time.perf_counter()
    result = rank(rank_paths, candidates, labels=rank_labels, seed=args.seed, progress=not args.quiet)
    rank_s = time.perf_counter() - t
    train = read_dataset(rank_paths, labels=rank_labels)
    test = read_dataset(test_paths, labels=test_labels, label_space=train.label_space)
    truth, tuned = {}, {}
    for row in result.rows:
        spec = row.backbone.partition("=")[0]
        truth[row.backbone] = held_out_accuracy(spec, row.weights, train, test, args.seed)
        if args.finetune:
            t = time.perf_counter()
            tuned[row.backbone] = finetuned_accuracy(
                spec, row.weights, {"path": rank_paths, "label": rank_labels},
                {"path": test_paths, "label": test_labels}, args,
            )  # fmt: skip
            print(f"fine-tuned {row.backbone}: {tuned[row.backbone]:.4f} ({time.perf_counter() - t:.0f} s)")
    title = f"CIFAR-10 ResNets ({args.per_class}/class to rank, {args.held_out}/class held out)"
    out = compare(title, result, truth, tuned or None)
    print(
        f"graft rank: {rank_s:.1f} s for {len(candidates)} candidates x {len(rank_paths)} images (cold cache)"
    )
    return {**out, "rank_seconds": rank_s}


def text(args: argparse.Namespace) -> dict:
    from graft.data import read_dataset
    from graft.rank import rank

    trec = find_shared_data() / "text" / "trec"
    pool = read_dataset(trec / "train.jsonl")
    test = read_dataset(trec / "test.jsonl", label_space=pool.label_space, require_min_per_class=False)
    runs = []
    for seed in range(args.seeds):
        rng = np.random.default_rng(seed)
        index = np.sort(np.concatenate([
            rng.choice(np.flatnonzero(pool.targets == c), args.text_per_class, replace=False)
            for c in range(len(pool.label_space))
        ]))  # fmt: skip
        train = pool.subset(index)
        t = time.perf_counter()
        labels = [pool.label_space[i] for i in train.targets]
        folds = min(5, args.text_per_class)
        result = rank(train.examples, ["minilm", "mpnet"], labels=labels, folds=folds, seed=seed,
                      progress=not args.quiet)  # fmt: skip
        rank_s = time.perf_counter() - t
        truth = {r.backbone: held_out_accuracy(r.backbone, None, train, test, seed) for r in result.rows}
        out = compare(f"TREC, seed {seed} ({args.text_per_class}/class)", result, truth)
        picked = result.rows[0].backbone
        best = max(truth, key=truth.get)
        print(f"picked {picked}, held-out best {best}; graft rank took {rank_s:.1f} s")
        runs.append({**out, "seed": seed, "picked_best": picked == best, "rank_seconds": rank_s})
    hits = sum(r["picked_best"] for r in runs)
    logme_hits = sum(
        max(r["ranking"], key=lambda x: x["logme"])["held_out_accuracy"]
        == max(x["held_out_accuracy"] for x in r["ranking"])
        for r in runs
    )
    print(
        f"\nTREC: CV picked the held-out best in {hits}/{len(runs)} draws, LogME in {logme_hits}/{len(runs)}"
    )
    return {"runs": runs, "cv_picked_best": hits, "logme_picked_best": logme_hits}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--per-class", type=int, default=50, help="CIFAR-10 images per class to rank on")
    parser.add_argument("--held-out", type=int, default=100, help="CIFAR-10 images per class held out")
    parser.add_argument("--text-per-class", type=int, default=8, help="TREC questions per class to rank on")
    parser.add_argument("--seeds", type=int, default=3, help="TREC draws")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--finetune",
        action="store_true",
        help="also fine-tune every image candidate (full) and compare with that accuracy",
    )
    parser.add_argument("--finetune-epochs", type=int, default=10, help="epoch budget of --finetune")
    parser.add_argument("--skip-images", action="store_true")
    parser.add_argument("--skip-text", action="store_true")
    parser.add_argument("--cache", help="feature cache folder to use (default: a fresh temporary one)")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["GRAFT_CACHE_DIR"] = args.cache or tmp
        results = {}
        if not args.skip_images:
            results["images"] = images(args)
        if not args.skip_text:
            results["text"] = text(args)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
