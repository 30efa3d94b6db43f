"""pytest-benchmark suite: `pytest benchmarks --benchmark-only` (a few minutes on 2 CPU cores).
The ratios that matter are printed by benchmarks/ratios.py, measured side by side in one run."""

import pytest
import torch
import torch.nn as nn

from benchmarks.common import dense_and_pruned


@pytest.fixture(scope="module")
def resnet56_pair():
    dense, pruned, size, _, _ = dense_and_pruned("resnet56", 0.5)
    return {"dense": dense, "pruned": pruned}


@pytest.mark.parametrize("batch", [1, 64])
@pytest.mark.parametrize("which", ["dense", "pruned"])
def test_resnet56_forward(benchmark, resnet56_pair, which, batch):
    model, x = resnet56_pair[which], torch.randn(batch, 3, 32, 32)
    benchmark.extra_info.update({"threads": torch.get_num_threads(), "device": "cpu", "unit": "s per batch"})
    with torch.inference_mode():
        benchmark(model, x)


def _train_setup():
    from tasks.models import create_model

    torch.manual_seed(0)
    model = create_model("resnet20", 10)
    data = [(torch.randn(64, 3, 32, 32), torch.randint(0, 10, (64,))) for _ in range(4)]
    return model, data


def test_bare_train_epoch(benchmark):
    model, data = _train_setup()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()

    def epoch():
        for x, y in data:
            opt.zero_grad(set_to_none=True)
            loss_fn(model(x), y).backward()
            opt.step()

    benchmark.pedantic(epoch, rounds=5, warmup_rounds=1)


def test_harness_train_epoch(benchmark):
    from benchmarks.common import one_epoch_recipe
    from harness.core.train import train
    from methods.slimming import BNSparsity

    model, data = _train_setup()
    recipe = one_epoch_recipe()
    benchmark.pedantic(
        lambda: train(
            model,
            data,
            recipe,
            loss_fn=nn.CrossEntropyLoss(),
            device=torch.device("cpu"),
            hooks=[BNSparsity(1e-5)],
            desc="bench",
        ),
        rounds=5,
        warmup_rounds=1,
    )


def test_pruning_step_resnet50(benchmark):
    import copy

    from benchmarks.common import resnet50_and_pruner
    from methods.l1 import FilterL1Importance

    model, pruner = resnet50_and_pruner()

    def step():
        m = copy.deepcopy(model)
        pruner.remove(m, pruner.removal_order(m, FilterL1Importance())[:100])
        return pruner.reduction(m)

    assert benchmark.pedantic(step, rounds=3, warmup_rounds=0) > 0
