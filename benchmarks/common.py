"""Shared by the benchmark script and the pytest-benchmark suite: models pruned to a MACs target."""

from __future__ import annotations

from pathlib import Path

import torch

from harness.core.surgery import ChannelPruner, count_macs_params
from methods.l1 import FilterL1Importance
from tasks.models import create_model

MODELS = {
    "resnet56": ("resnet56", 10, 32),
    "vgg16_cifar": ("vgg16_cifar", 100, 32),
    "resnet50": ("tv:resnet50", 1000, 224),
}


def one_epoch_recipe(weight_decay: float = 0.0):
    """A harness.core.train recipe for one epoch of plain SGD, as the bare loops in the benchmarks use."""
    from omegaconf import OmegaConf

    return OmegaConf.create(
        {
            "epochs": 1,
            "lr": 0.05,
            "momentum": 0.9,
            "weight_decay": weight_decay,
            "nesterov": False,
            "schedule": "cosine",
            "milestones": [],
            "gamma": 0.1,
            "min_lr": 0.0,
        }
    )


def resnet50_and_pruner():
    """torchvision's ResNet-50 (224x224, eval mode) and a ChannelPruner over it."""
    model = create_model("tv:resnet50", 1000).eval()
    return model, ChannelPruner(model, torch.randn(1, 3, 224, 224), [output_layer(model)], 0.1)


def output_layer(model):
    return [m for m in model.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))][-1]


def dense_and_pruned(name: str, target: float, round_to: int | None = None, seed: int = 0):
    """(dense, pruned, input size, dense MACs, pruned MACs): L1-pruned untrained weights (latency does
    not depend on the values)."""
    model_name, classes, size = MODELS[name]
    torch.manual_seed(seed)
    dense = create_model(model_name, classes).eval()
    pruned = create_model(model_name, classes).eval()
    pruned.load_state_dict(dense.state_dict())
    x = torch.randn(1, 3, size, size)
    pruner = ChannelPruner(pruned, x, [output_layer(pruned)], 0.1, round_to)
    pruner.prune_to_target(pruned, FilterL1Importance(), target)
    return dense, pruned.eval(), size, count_macs_params(dense, x)[0], count_macs_params(pruned, x)[0]


def untrained_with_table(name: str, batch: int, results: Path):
    """The untrained model ``name`` of MODELS (seed 0, eval mode), a batch-1 example and a batch of ``batch``,
    a ChannelPruner over it (10% per-layer minimum) and its latency table at ``batch`` under ``results``,
    prepared (timed and calibrated); with the line and the seconds the preparation took."""
    import time

    from harness.latency.table import LatencyTable, narrowed_copies

    model_name, classes, size = MODELS[name]
    torch.manual_seed(0)
    dense = create_model(model_name, classes).eval()
    example, x = torch.randn(1, 3, size, size), torch.randn(batch, 3, size, size)
    pruner = ChannelPruner(dense, example, [output_layer(dense)], 0.1)
    table = LatencyTable(batch, torch.device("cpu"), results)
    started = time.perf_counter()
    line = table.prepare(dense, example, lambda: narrowed_copies(dense, pruner))
    return dense, example, x, pruner, table, line, time.perf_counter() - started
