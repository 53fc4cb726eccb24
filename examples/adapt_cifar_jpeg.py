"""Domain adaptation on a real shift: a CIFAR-10 ResNet-20 meets JPEG-compressed CIFAR-10 images.

The source model is a third party's ResNet-20 trained on CIFAR-10's PNG training images
(../shared/data/models/resnet20_cifar10.th), brought in whole with ``graft.from_classifier`` (its own
final layer is the head). The target domain: the CIFAR-10 test images re-encoded as JPEG
(../shared/data/images/cifar10_jpg_test). A fixed seeded split of the 10,000 JPEGs: 5,000 to adapt on
(their labels hidden), 10 per class of those labeled to choose with (``target_val``), and the other
5,000 to test on (``target_test``, never used to choose). ``graft.adapt`` runs every method, keeps one
only if it beats doing nothing on the 100 labeled rows (paired 95% interval above 0), and prints every
method on the 5,000 test images with intervals.

Run:  .venv/bin/python examples/adapt_cifar_jpeg.py [--out runs/adapt-cifar]   (a few minutes on 2 CPUs)
"""

from __future__ import annotations

import argparse

import numpy as np
from _shared import shared_data

import graft
from graft.backbones.archs import build_architecture
from graft.backbones.module import read_state_file
from graft.data import read_dataset
from graft.evaluation.report import adaptation_text

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default="runs/adapt-cifar", help="where the adapted bundle is written")
    parser.add_argument("--val-per-class", type=int, default=10, help="labeled target images per class")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    data = shared_data()
    ds = read_dataset(data / "images" / "cifar10_jpg_test")
    rng = np.random.default_rng(args.seed)
    order = rng.permutation(len(ds))
    adapt_idx, test_idx = order[: len(ds) // 2], order[len(ds) // 2 :]
    val_idx = np.concatenate(
        [
            rng.choice(adapt_idx[ds.targets[adapt_idx] == k], args.val_per_class, replace=False)
            for k in range(10)
        ]
    )

    def table(idx: np.ndarray) -> dict[str, list]:
        return {"path": [ds.examples[i] for i in idx], "label": [ds.label_space[ds.targets[i]] for i in idx]}

    net = build_architecture("resnet20")
    net.load_state_dict(read_state_file(data / "models" / "resnet20_cifar10.th"))
    source = graft.from_classifier(net, labels=list(ds.label_space), head="linear", modality="image",
                                   input_size=(3, 32, 32), mean=MEAN, std=STD)  # fmt: skip
    print(f"target: {len(adapt_idx)} unlabeled to adapt on, {len(val_idx)} of them labeled to choose with; "
          f"test: {len(test_idx)}")  # fmt: skip
    adapted = graft.adapt(source, [ds.examples[i] for i in adapt_idx], target_val=table(val_idx),
                          target_test=table(test_idx), out=args.out, seed=args.seed)  # fmt: skip
    print("\n" + adaptation_text(adapted.manifest_["adaptation"]))


if __name__ == "__main__":
    main()
