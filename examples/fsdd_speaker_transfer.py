"""Supervised pre-training on one audio task, transfer to another with 10 clips per class.

Free Spoken Digit Dataset (../shared/data/audio/fsdd, ``{digit}_{speaker}_{index}.wav``, 8 kHz).
Two tasks share one input type: which digit was spoken (10 classes) and who spoke it (6 speakers).

1. ``graft.pretrain`` trains ``audio_cnn`` (log-mel + 4 conv blocks) from random weights on the
   digit task, using only the dataset's own training split (index 5-49).
2. The speaker task gets at most 10 labeled clips per speaker (from the training split; graft
   holds some out for validation), and is tested on the dataset's test split (index 0-4, 300 clips,
   never seen by the pre-training either). Three ways to use those 60 labels:
   a linear probe and a full fine-tune of the pre-trained network (``bundle:<path>``), and the same
   network trained from scratch (``arch:audio_cnn``).

Run:  .venv/bin/python examples/fsdd_speaker_transfer.py [--out runs/fsdd]
About 4 minutes on 2 CPU cores; prints a table of speaker accuracy with 95% intervals.

Measured (2026-11-26): digits 0.987 after pre-training; speakers: linear probe 0.477, full
fine-tune 0.803, from scratch 0.980. Transfer loses here, and that is the finding: a network
trained to tell digits apart learns to ignore who is speaking, so its features carry little
speaker identity (negative transfer), while six FSDD speakers, each recorded with their own
microphone, are easy to separate from scratch.
"""

from __future__ import annotations

import argparse
import re
import time
from pathlib import Path

import numpy as np
from _shared import print_table, shared_data

import graft
from graft.config import RunConfig, pretrain_defaults

NAME = re.compile(r"^(\d+)_([a-z]+)_(\d+)\.wav$")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--per-speaker", type=int, default=10, help="labeled clips per speaker")
    parser.add_argument("--pretrain-epochs", type=int, default=12)
    parser.add_argument("--epochs", type=int, default=30, help="epochs of the transfer runs")
    parser.add_argument("--out", default="runs/fsdd")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    out = Path(args.out)

    clips = []
    for path in sorted((shared_data() / "audio" / "fsdd").glob("*.wav")):
        digit, speaker, index = NAME.match(path.name).groups()
        clips.append((str(path), digit, speaker, int(index)))
    train = [c for c in clips if c[3] >= 5]  # FSDD's own split: index 0-4 is test
    test = [c for c in clips if c[3] < 5]

    t = time.perf_counter()
    digits = {"path": [c[0] for c in train], "label": [c[1] for c in train]}
    cfg = pretrain_defaults().replace("train", epochs=args.pretrain_epochs, seed=args.seed)
    base = graft.pretrain(digits, "audio_cnn", out=out / "pretrain-digits", config=cfg, overwrite=True)
    pre_seconds = time.perf_counter() - t

    rng = np.random.default_rng(args.seed)
    speakers = sorted({c[2] for c in train})
    few = []
    for speaker in speakers:
        pool = [c for c in train if c[2] == speaker]
        few += [pool[i] for i in rng.choice(len(pool), args.per_speaker, replace=False)]
    small = {"path": [c[0] for c in few], "label": [c[2] for c in few]}
    held_out = {"path": [c[0] for c in test], "label": [c[2] for c in test]}
    tune = RunConfig().replace("train", epochs=args.epochs, batch_size=16, lr=1e-3, head_lr=3e-3,
                               patience=10, seed=args.seed)  # fmt: skip
    runs = {
        "linear probe (pre-trained)": (f"bundle:{out / 'pretrain-digits'}", "linear_probe", tune),
        "full fine-tune (pre-trained)": (f"bundle:{out / 'pretrain-digits'}", "full", tune),
        "from scratch (arch:audio_cnn)": ("arch:audio_cnn", "full", tune.replace("train", lr=3e-3)),
    }
    rows = []
    for name, (source, strategy, config) in runs.items():
        t = time.perf_counter()
        model = graft.fit(small, backbone=source, strategy=strategy, test=held_out, config=config,
                          out=out / name.split(" (")[0].replace(" ", "-"), overwrite=True)  # fmt: skip
        result = model.report_.test
        rows.append((name, result.metrics["accuracy"], result.intervals["accuracy"], time.perf_counter() - t))

    digit_acc = base.metrics["test"]["accuracy"]
    print(f"\npre-training (digits, {len(train)} clips, {pre_seconds:.0f} s): held-out digit accuracy "
          f"{digit_acc:.3f}")  # fmt: skip
    print(f"speaker task: {len(few)} labeled clips ({args.per_speaker}/speaker), test {len(test)} clips")
    print_table(rows)
    print(f"(majority baseline {1 / len(speakers):.3f})")


if __name__ == "__main__":
    main()
