"""Domain adaptation for text: a movie-review sentiment model meets product reviews.

Source: SST-2 movie-review sentences (../shared/data/text/sst2/train.csv), fitted with graft's
default MiniLM and the linear probe. Target: the UCI Amazon product-review sentences
(../shared/data/text/uci_sentiment/amazon_cells_labelled.txt, 1,000 sentences, 1 = positive). A fixed
seeded split: 500 to adapt on (labels hidden), 10 per class of those labeled to choose with, the other
500 to test on. CORAL uses the SST-2 training file, found through the bundle's provenance.

Run:  .venv/bin/python examples/adapt_text_amazon.py [--out runs/adapt-amazon]   (a few minutes on 2 CPUs)
"""

from __future__ import annotations

import argparse

import numpy as np
from _shared import shared_data

import graft
from graft.config import RunConfig
from graft.evaluation.report import adaptation_text


def main() -> None:
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=raw)
    parser.add_argument(
        "--out", default="runs/adapt-amazon", help="the source run and the adapted bundle go here"
    )
    parser.add_argument("--val-per-class", type=int, default=10, help="labeled target sentences per class")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    data = shared_data() / "text"
    lines = (data / "uci_sentiment" / "amazon_cells_labelled.txt").read_text(encoding="utf-8").splitlines()
    rows = [
        (t, "positive" if y.strip() == "1" else "negative")
        for t, y in (ln.rsplit("\t", 1) for ln in lines if ln)
    ]
    rng = np.random.default_rng(args.seed)
    order = rng.permutation(len(rows))
    adapt_idx, test_idx = order[: len(rows) // 2], order[len(rows) // 2 :]
    val_idx = np.concatenate(
        [rng.choice([i for i in adapt_idx if rows[i][1] == c], args.val_per_class, replace=False)
         for c in ("negative", "positive")]
    )  # fmt: skip

    def table(idx) -> dict[str, list]:
        return {"text": [rows[i][0] for i in idx], "label": [rows[i][1] for i in idx]}

    quick = RunConfig().replace("evaluation", baselines="none")
    source = graft.fit(data / "sst2" / "train.csv", strategy="linear_probe", out=f"{args.out}/source",
                       config=quick, overwrite=True)  # fmt: skip
    adapted = graft.adapt(source, [rows[i][0] for i in adapt_idx], target_val=table(val_idx),
                          target_test=table(test_idx), out=f"{args.out}/adapted", seed=args.seed)  # fmt: skip
    print("\n" + adaptation_text(adapted.manifest_["adaptation"]))


if __name__ == "__main__":
    main()
