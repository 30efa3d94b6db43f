"""Tiny datasets generated in the real on-disk formats."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np


def make_cifar10(root: Path, per_batch: int = 10, n_test: int = 20, seed: int = 0) -> Path:
    """Write ``cifar-10-batches-py/`` (5 data batches, test_batch, batches.meta) as the real
    pickles: dicts with 'data' (N x 3072 uint8, channel-major), 'labels', 'batch_label', 'filenames'."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)

    def batch(name: str, n: int) -> None:
        labels = [int(i % 10) for i in range(n)]
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        # Make the classes learnable: brighten the red plane in proportion to the label.
        data[:, :1024] = np.clip(np.array(labels)[:, None] * 25 + rng.integers(0, 20, (n, 1024)), 0, 255)
        entry = {"batch_label": name, "labels": labels, "data": data,
                 "filenames": [f"{name}_{i}.png" for i in range(n)]}
        with open(folder / name, "wb") as fh:
            pickle.dump(entry, fh, protocol=2)

    for i in range(1, 6):
        batch(f"data_batch_{i}", per_batch)
    batch("test_batch", n_test)
    with open(folder / "batches.meta", "wb") as fh:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)], "num_cases_per_batch": per_batch,
                     "num_vis": 3072}, fh, protocol=2)
    return folder
