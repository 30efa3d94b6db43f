"""sklearn's bundled 8x8 digits: a real, offline dataset for the quick start and for CI."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.data import TensorDataset

from harness.core.settings import setting
from tasks.base import DataSettings, Task, recipe, register_task


@dataclass
class DigitsData(DataSettings):
    root: str | None = setting(None, "str", help="unused: the data is bundled with scikit-learn")
    test_fraction: float = setting(0.25, "real", "(0, 1)", help="a fixed stratified test split (random_state=0)")


@register_task
class DigitsTask(Task):
    name = "digits"
    description = "Small residual CNN on sklearn's bundled 8x8 digits (offline, seconds on a CPU)"
    num_classes = 10
    input_shape = (1, 8, 8)
    data_settings = DigitsData
    model_config = {"name": "digits_resnet", "kwargs": {"width": 32}}
    train_recipe = recipe(30, 64, 0.1)  # the shared baseline
    finetune_recipe = recipe(15, 64, 0.01)  # the same budget for every method
    batch_sizes = (1, 64)

    def _load_datasets(self):
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        digits = load_digits()
        x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
        x = (x - 0.5) / 0.5
        y = torch.tensor(digits.target, dtype=torch.long)
        # A fixed split, independent of the run's seed, so every run is scored on the same test set.
        idx_train, idx_test = train_test_split(
            range(len(y)), test_size=self.data.test_fraction, random_state=0, stratify=digits.target
        )
        return TensorDataset(x[idx_train], y[idx_train]), TensorDataset(x[idx_test], y[idx_test])
