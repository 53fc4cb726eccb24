"""Domain adaptation for audio: a spoken-digit model meets a speaker it never heard.

Free Spoken Digit Dataset (../shared/data/audio/fsdd, ``{digit}_{speaker}_{index}.wav``): ``audio_cnn``
(log-mel + 4 conv blocks with BatchNorm) is trained from random weights with ``graft.pretrain`` on the
digits of five speakers (2,500 clips). The sixth speaker (``--speaker``, default ``yweweler``) is the
target: a seeded half of their 500 clips to adapt on (labels hidden), 5 per digit of those labeled to
choose with, the other half to test on. CORAL uses the five speakers' labeled clips (``source=``).

Run:  .venv/bin/python examples/adapt_fsdd_speaker.py [--out runs/adapt-fsdd]   (about 5 minutes on 2 CPUs)
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import numpy as np
from _shared import shared_data

import graft
from graft.config import pretrain_defaults
from graft.evaluation.report import adaptation_text

NAME = re.compile(r"^(\d+)_([a-z]+)_(\d+)\.wav$")


def main() -> None:
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=raw)
    parser.add_argument("--speaker", default="yweweler", help="the target speaker")
    parser.add_argument("--val-per-class", type=int, default=5, help="labeled target clips per digit")
    parser.add_argument("--epochs", type=int, default=12, help="epochs of the source model's training")
    parser.add_argument("--out", default="runs/adapt-fsdd")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    out = Path(args.out)

    paths = sorted((shared_data() / "audio" / "fsdd").glob("*.wav"))
    clips = [(str(p), *NAME.match(p.name).groups()[:2]) for p in paths]  # (path, digit, speaker)
    source = [c for c in clips if c[2] != args.speaker]
    target = [c for c in clips if c[2] == args.speaker]
    if not target:
        raise SystemExit(f"no clips of speaker {args.speaker!r}")
    cfg = pretrain_defaults().replace("train", epochs=args.epochs, seed=args.seed)
    digits = {"path": [c[0] for c in source], "label": [c[1] for c in source]}
    model = graft.pretrain(digits, "audio_cnn", out=out / "source", config=cfg, overwrite=True)

    rng = np.random.default_rng(args.seed)
    order = rng.permutation(len(target))
    adapt_idx, test_idx = order[: len(target) // 2], order[len(target) // 2 :]
    val_idx = np.concatenate(
        [rng.choice([i for i in adapt_idx if target[i][1] == d], args.val_per_class, replace=False)
         for d in sorted({c[1] for c in target})]
    )  # fmt: skip

    def table(idx) -> dict[str, list]:
        return {"path": [target[i][0] for i in idx], "label": [target[i][1] for i in idx]}

    unlabeled = [target[i][0] for i in adapt_idx]
    adapted = graft.adapt(model, unlabeled, target_val=table(val_idx), target_test=table(test_idx),
                          source=digits, out=out / "adapted", seed=args.seed)  # fmt: skip
    print("\n" + adaptation_text(adapted.manifest_["adaptation"]))


if __name__ == "__main__":
    main()
