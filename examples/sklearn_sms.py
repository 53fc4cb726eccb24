"""graft inside scikit-learn: ``cross_val_score`` of ``GraftClassifier`` on the SMS spam collection.

Reads ``../shared/data/text/sms_spam/SMSSpamCollection.tsv`` (5,574 messages, label<TAB>text, 13% spam),
and runs 5-fold stratified cross-validation of graft's recipe (MiniLM + linear probe, its L2 chosen by
graft's own inner cross-validation on each training fold) with scikit-learn's scorers. The embeddings of
a message are computed once and then come from graft's feature cache in later folds.

Run:  .venv/bin/python examples/sklearn_sms.py [--rows N] [--cv 5]
About 2 minutes on 2 CPU cores for all rows.

Measured (2026-12-06, all 5,574 rows, 5 folds, 139 s): macro-F1 0.975 +- 0.007, accuracy 0.989 +- 0.003.
"""

from __future__ import annotations

import argparse
import csv
import time

import numpy as np
from _shared import shared_data
from sklearn.model_selection import StratifiedKFold, cross_validate

from graft.sklearn import GraftClassifier


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=None, help="use the first N messages")
    parser.add_argument("--cv", type=int, default=5)
    args = parser.parse_args()

    path = shared_data() / "text" / "sms_spam" / "SMSSpamCollection.tsv"
    with path.open(encoding="utf-8", newline="") as f:
        rows = [r for r in csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE) if len(r) == 2]
    rows = rows[: args.rows] if args.rows else rows
    X = np.array([text for _, text in rows], dtype=object)
    y = np.array([label for label, _ in rows])
    print(f"{path.name}: {len(X)} messages, {np.mean(y == 'spam'):.1%} spam")

    start = time.perf_counter()
    clf = GraftClassifier(strategy="linear_probe", progress=False)
    folds = StratifiedKFold(args.cv, shuffle=True, random_state=0)
    result = cross_validate(clf, X, y, cv=folds, scoring=["f1_macro", "accuracy"])
    for name in ("f1_macro", "accuracy"):
        scores = result[f"test_{name}"]
        each = ", ".join(f"{s:.3f}" for s in scores)
        print(f"{name}: {scores.mean():.3f} +- {scores.std():.3f}  (folds: {each})")
    print(f"{args.cv}-fold cross_validate in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
