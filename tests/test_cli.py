import subprocess
import sys

import pytest


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["task=nope"],
            "unknown task 'nope'; choose one of: cifar_mosaic, cub200, digits, fcn_voc2011, resnet50_imagenet, resnet56, retinanet_voc, ssd_voc, vgg16_cifar100",
        ),
        (
            ["method=nope"],
            "unknown method 'nope'; choose one of: acp, acp_eps0.010, acp_eps0.035, acp_eps0.040, acp_eps0.075, aip, anl, functional, ga, gal, gal_0.05, gal_0.8, gbn, gbn_cpu, gfp, gfp_cpu, l1, l1_resnet56_a, l1_resnet56_b, metapruning, metapruning_cpu, none, random, scop, slimming, wgates",
        ),
        (
            ["prune.nope=1"],
            "unknown key 'prune.nope'; valid keys under 'prune': target, flops_reduction, latency_reduction, min_channels_ratio, round_to",
        ),
        (["nope=1"], "unknown key 'nope'; valid keys: seed,"),
        (["prune.flops_reduction=1.5"], "prune.flops_reduction must be a number in [0, 1), got 1.5"),
        (["prune.flops_reduction=-0.1"], "prune.flops_reduction must be a number in [0, 1), got -0.1"),
        (["prune.flops_reduction=abc"], "prune.flops_reduction must be a number"),
        (["train.epochs=0"], "train.epochs must be an integer in [1, 100000], got 0"),
        (["train.schedule=linear"], "train.schedule must be one of cosine, step, constant, triangular, onecycle"),
        (["device=tpu"], "device must be auto, cpu or cuda[:N]"),
        (["seed"], "expected key=value, got 'seed'"),
        (["seed=-1"], "seed must be an integer in [0, 4294967295], got -1"),
        (["prune.flops_reductoin=0.5"], "did you mean 'prune.flops_reduction'?"),
        (["bogus.key=1"], "unknown key 'bogus.key'; valid keys: seed,"),
        (["train.lr=nan"], "train.lr must be a number in (0, 100], got nan"),
        (
            ["train.milestones=1"],
            "train.milestones and finetune.milestones must be lists of epochs",
        ),  # found by the fuzzer
        (["seed=0", "seed=${nope}"], "Interpolation key 'nope' not found"),  # found by the fuzzer
        (["measure.max_seconds=-1"], "measure.max_seconds must be a number in [0, 100000], got -1"),
        (
            ["launcher=slurm", "launcher.tasks_per_node=0"],
            "launcher.tasks_per_node must be an integer in [1, 1024], got 0",
        ),
        # the methods that select or search, and the validation split (issues 12 and 13)
        (["method=gal", "method.sparsity=-1"], "method.sparsity must be a number in [0, 100], got -1"),
        (["method=gal", "method.mask_step=0"], "method.mask_step must be an integer in [1, 10000000], got 0"),
        (["data.val_fraction=1.5"], "data.val_fraction must be a number in [0, 1) or null, got 1.5"),
        (["method=gal", "method.structure=layer"], "method.structure must be one of auto, block, channel, got 'layer'"),
        (["method=aip", "method.steps=0"], "method.steps must be an integer in [1, 100000], got 0"),
        (["method=acp", "method.eps=0"], "method.eps must be a number in (0, 2] or null, got 0"),
        (["method=acp", "method.particles=0"], "method.particles must be an integer in [1, 10000], got 0"),
        (["method=scop", "method.knockoff=generator"], "method.knockoff must be one of shuffle, got 'generator'"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(run_cli, args, message):
    code, out, err = run_cli("run", *args)
    assert code == 2
    assert err.startswith("error: ") and message in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_unreachable_target_fails_before_training(run_cli, tmp_path):
    code, _, err = run_cli(
        "run", "task=digits", "prune.flops_reduction=0.995", "tracking=none", f"results_dir={tmp_path}"
    )
    assert code == 2 and "is unreachable" in err and "prune.min_channels_ratio" in err
    assert not (tmp_path / "baselines").exists()


def test_subprocess_exit_code_and_no_traceback():
    proc = subprocess.run(
        [sys.executable, "-m", "harness", "run", "task=imagenet21k"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2
    assert (
        proc.stderr.strip()
        == "error: unknown task 'imagenet21k'; choose one of: cifar_mosaic, cub200, digits, fcn_voc2011, resnet50_imagenet, resnet56, retinanet_voc, ssd_voc, vgg16_cifar100"
    )


def test_list_shows_tasks_and_methods_with_descriptions(run_cli):
    code, out, _ = run_cli("list")
    assert code == 0
    for name in (
        "digits",
        "resnet56",
        "gbn",
        "l1",
        "l1_resnet56_a",
        "l1_resnet56_b",
        "slimming",
        "anl",
        "random",
        "none",
    ):
        line = next(line for line in out.splitlines() if line.strip().startswith(name + " "))
        assert len(line.split()) > 2  # a description follows the name


def test_overrides_reach_the_composed_config(run_cli):
    code, out, _ = run_cli("run", "task=resnet56", "method=random", "prune.flops_reduction=0.7", "seed=3", "--cfg")
    assert code == 0
    assert "name: resnet56" in out and "name: random" in out
    assert "flops_reduction: 0.7" in out and "seed: 3" in out and "milestones:\n  - 80\n  - 120" in out


def test_every_numeric_key_of_every_config_has_a_checked_range():
    from omegaconf import OmegaConf

    from harness.config import all_ranges, compose, group_options

    RANGES = all_ranges()  # the harness's own keys and every plug-in's declared settings

    def numeric_leaves(node, prefix=""):
        for k, v in node.items():
            if isinstance(v, dict):
                yield from numeric_leaves(v, f"{prefix}{k}.")
            elif isinstance(v, (int, float)) and not isinstance(v, bool):
                yield f"{prefix}{k}"

    seen = set()
    # Every task with the default method and every method with the default task: a key comes from one
    # config file, and no file adds keys for another group (tests/test_keys.py composes every pair).
    for overrides in [[f"task={t}"] for t in group_options("task")] + [
        [f"method={m}"] for m in group_options("method")
    ]:
        seen |= set(numeric_leaves(OmegaConf.to_container(compose(overrides))))
    for launcher in group_options("launcher"):
        seen |= set(numeric_leaves(OmegaConf.to_container(compose([f"launcher={launcher}"]))))
    seen |= set(numeric_leaves(OmegaConf.to_container(compose(["task=resnet56", "budget=cifar10_dev"]))))
    assert seen and seen <= RANGES.keys(), sorted(seen - RANGES.keys())


def test_an_integral_float_for_an_integer_key_becomes_that_integer():  # seed=0.0 crashed numpy (fuzzer)
    from harness.config import compose

    cfg = compose(["seed=2.0", "train.epochs=1e1"])
    assert type(cfg.seed) is int and cfg.seed == 2 and type(cfg.train.epochs) is int and cfg.train.epochs == 10
