"""How the linear probe's L2 is chosen on few labels: the arg-max of the fold scores vs the
one-standard-error rule (graft's), against scikit-learn's ``LogisticRegression()`` defaults.

MiniLM embeddings (frozen), SST-2 and TREC from ../shared/data, k labeled examples per class drawn
per seed (the same samples as benchmarks/fewshot.py), 5-fold stratified CV on the sample choosing
among graft's L2 grid, the head refit on the whole sample, accuracy on the full test file.

Run:  .venv/bin/python benchmarks/probe_selection.py [--shots 8 64] [--seeds 0 1 2 3 4]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from fewshot import load_dataset, sample  # the script's folder is on sys.path


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--datasets", nargs="+", default=["sst2", "trec"])
    parser.add_argument("--shots", nargs="+", type=int, default=[8, 64])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    args = parser.parse_args()

    from sklearn.linear_model import LogisticRegression

    from graft.backbones import create_backbone
    from graft.features import extract_features
    from graft.heads import make_head
    from graft.probe import fit_linear_head, select_l2, stratified_folds

    bb = create_backbone("minilm")
    print("| data | per class | arg-max | one-SE rule (graft) | LogisticRegression() |")
    print("|---|---|---|---|---|")
    for dataset in args.datasets:
        train, test = load_dataset(dataset, None)
        x_test = extract_features(bb, [t for t, _ in test], progress=False)
        for shots in args.shots:
            acc: dict[str, list[float]] = {"argmax": [], "one_se": [], "sklearn": []}
            for seed in args.seeds:
                rows = sample(train, shots, seed)
                space = sorted({label for _, label in rows})
                index = {label: i for i, label in enumerate(space)}
                y = torch.tensor([index[label] for _, label in rows])
                y_test = np.array([index.get(label, -1) for _, label in test])
                x = extract_features(bb, [t for t, _ in rows], progress=False)
                sel = select_l2("multiclass", x, y, folds=stratified_folds("multiclass", y, 5, seed))
                best = max(r["score"] for r in sel.table)
                argmax = max(r["l2"] for r in sel.table if r["score"] >= best - 1e-12)
                for name, l2 in (("argmax", argmax), ("one_se", sel.l2)):
                    head = make_head("multiclass", in_dim=x.shape[1], n_outputs=len(space))
                    fit_linear_head(head, x, y, l2)
                    with torch.no_grad():
                        acc[name].append(float((head(x_test).argmax(1).numpy() == y_test).mean()))
                lr = LogisticRegression().fit(x.numpy(), y.numpy())
                acc["sklearn"].append(float((lr.predict(x_test.numpy()) == y_test).mean()))
            cells = " | ".join(f"{np.mean(v):.4f} ± {np.std(v, ddof=1):.4f}" for v in acc.values())
            print(f"| {dataset} | {shots} | {cells} |", flush=True)


if __name__ == "__main__":
    main()
