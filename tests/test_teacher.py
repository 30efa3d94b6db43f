"""GAL, AIP, the teacher-student module and the validation split."""

import copy

import pytest
import torch
import torch.nn as nn
from omegaconf import OmegaConf
from torch.utils.data import DataLoader, TensorDataset

from harness.config import compose
from harness.core.surgery import ChannelPruner, ShortcutOnly
from methods.base import PruneContext, Reporting, TrainingContext
from methods.gal import GAL, Fista, SoftMasks, residual_blocks
from methods.teacher import TeacherStudent, attention_map, distill_epoch, stage_outputs
from tasks import create_task
from tasks.models import create_model
from tests.conftest import last_json
from tests.fixtures import make_cifar10


def _ctx(model, example, target=0.0, loader=None, validate=None, metrics=None):
    pruner = ChannelPruner(model, example, [model.fc], 0.1)
    log = metrics if metrics is not None else {}
    return PruneContext(
        pruner=pruner,
        target=target,
        device=torch.device("cpu"),
        training=TrainingContext(loader=loader, loss_fn=nn.CrossEntropyLoss(), train=None),
        report=Reporting(
            quick_test_metric=lambda m: 0.0,
            log_step=lambda step, m: log.update(m),
            log_metrics=lambda m, step=None: log.update(m),
        ),
        validate=validate,
        quiet=True,
    )


def _gal_cfg(**over):
    return OmegaConf.merge(compose(["method=gal"]).method, over)


def test_gal_removes_whole_blocks_physically_and_folds_the_masks(tmp_path):
    torch.manual_seed(0)
    model = create_model("resnet20", 10).eval()
    for m in model.modules():  # non-trivial BN statistics, so folding is tested on real affine values
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5), m.running_var.uniform_(0.5, 2), m.weight.data.uniform_(0.5, 1.5)
    example = torch.randn(1, 3, 32, 32)
    blocks = residual_blocks(model, example)
    assert len(blocks) == 9 and {b.name for b in blocks} == {f"layer{s}.{i}" for s in (1, 2, 3) for i in range(3)}
    ctx = _ctx(model, example, target=0.2)
    masks = SoftMasks(model, "block", blocks, ctx.pruner, "one", torch.Generator())
    with torch.no_grad():
        for i, (key, m) in enumerate(masks.masks.items()):
            m.fill_(0.0 if key in ("layer1.1", "layer2.0") else 0.5 + 0.1 * i)  # a projection block goes too
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
    masks.remove_hooks()
    scores = {k: m.detach().flatten() for k, m in masks.masks.items()}
    pruned = GAL(_gal_cfg()).remove(model, masks, scores, ctx)
    assert isinstance(pruned.layer1[1], ShortcutOnly) and isinstance(pruned.layer2[0], ShortcutOnly)
    assert sum(isinstance(m, ShortcutOnly) for m in pruned.modules()) == 2  # the two zero masks met the target
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in pruned.modules())  # no masks left
    assert not any("mask" in n for n, _ in pruned.named_parameters())
    with torch.no_grad():
        out = pruned(x)
    assert out.shape == expected.shape and torch.allclose(out, expected, atol=1e-4)
    assert ctx.pruner.reduction(pruned) >= 0.2
    # the saved model (and the run checkpoints, same payload) rebuilds the removed blocks as shortcuts
    from harness.artifacts import load_pruned, save_pruned

    save_pruned(pruned, {"name": "resnet20", "num_classes": 10, "kwargs": {}}, tmp_path / "m.pt")
    reloaded = load_pruned(tmp_path / "m.pt")
    assert isinstance(reloaded.layer2[0], ShortcutOnly) and torch.allclose(reloaded(x), out, atol=1e-6)


def test_gal_block_structure_ranks_by_mask_when_zero_masks_fall_short():
    torch.manual_seed(0)
    model = create_model("resnet20", 10).eval()
    example = torch.randn(1, 3, 32, 32)
    metrics = {}
    ctx = _ctx(model, example, target=0.3, metrics=metrics)
    blocks = residual_blocks(model, example)
    masks = SoftMasks(model, "block", blocks, ctx.pruner, "one", torch.Generator())
    values = {b.name: 1.0 + i for i, b in enumerate(blocks)}
    values["layer3.2"] = 0.0
    with torch.no_grad():
        for k, m in masks.masks.items():
            m.fill_(values[k])
    masks.remove_hooks()
    GAL(_gal_cfg()).remove(model, masks, {k: m.detach().flatten() for k, m in masks.masks.items()}, ctx)
    removed = {n for n, m in model.named_modules() if isinstance(m, ShortcutOnly)}
    assert "layer3.2" in removed and "layer1.0" in removed  # the zero mask, then the smallest positive ones
    assert metrics["gal/natural_reduction"] < 0.3
    assert metrics["gal/final_reduction"] >= 0.3


def test_fista_step_gives_exact_zeros_never_negative_and_shrinks_by_lr_lambda():
    masks = nn.Parameter(torch.tensor([0.003, -0.5, 0.8, 2.0]))
    fista = Fista([masks], lr=0.01, weight=0.6)  # threshold lr * lambda = 0.006
    masks.grad = torch.zeros(4)
    fista.step()
    assert masks[0].item() == 0.0 and masks[1].item() == 0.0  # exact zeros, not tiny values
    assert masks[2].item() == pytest.approx(0.8 - 0.006) and masks[3].item() == pytest.approx(2.0 - 0.006)
    scores = fista.scores({"m": masks})["m"]
    assert scores[1] < 0 and scores[0] == 0.0 and scores[2] > 0  # the clamped -0.5 ranks first
    masks.grad = torch.tensor([0.0, 0.0, 1000.0, 0.0])
    fista.step()
    assert masks[2].item() == 0.0 and (masks >= 0).all()


def _digits_loader(shuffle_labels: bool):
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (torch.tensor(d.images[:256], dtype=torch.float32).unsqueeze(1) / 16 - 0.5) / 0.5
    y = torch.tensor(d.target[:256])
    if shuffle_labels:
        y = y[torch.randperm(len(y), generator=torch.Generator().manual_seed(1))]
    return DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(0))


def test_gal_never_reads_labels():
    """The same masks (and weights) from a loader whose labels are shuffled."""
    from tests.fixtures import train_digits_net

    base = train_digits_net(steps=30)[0]
    learned = []
    for shuffled in (False, True):
        torch.manual_seed(0)
        model = copy.deepcopy(base)
        ctx = _ctx(model, torch.randn(1, 1, 8, 8), loader=_digits_loader(shuffled))
        masks = SoftMasks(model, "channel", [], ctx.pruner, "normal", torch.Generator().manual_seed(0))
        cfg = _gal_cfg(epochs=2, mask_step=3, select="last")
        scores = GAL(cfg).learn_masks(model, copy.deepcopy(base), masks, ctx)
        learned.append((masks.flat(), torch.cat(list(scores.values())), model.fc.weight.detach().clone()))
    for a, b in zip(*learned):
        assert torch.equal(a, b)
    assert (learned[0][0] == 0).any() and (learned[0][0] > 0).any()  # the masks did move: some zero, some kept


def test_discriminator_learns_to_tell_teacher_from_a_bad_student():
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    student = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    ts = TeacherStudent(teacher, 10, lr=0.05)
    x = torch.randn(64, 1, 8, 8)
    for _ in range(200):
        result = ts.discriminator_step(ts.teach(x)[0] * 5, student(x).detach())
    assert result["d_acc"] > 0.9
    # the adversarial loss has a gradient for the student but leaves D's gradients untouched
    before = [p.grad.clone() for p in ts.discriminator.parameters()]
    ts.adversarial_loss(student(x)).backward()
    assert student[1].weight.grad is not None and student[1].weight.grad.abs().sum() > 0
    assert all(torch.equal(b, p.grad) for b, p in zip(before, ts.discriminator.parameters()))
    assert all(p.requires_grad for p in ts.discriminator.parameters())


def test_attention_maps_and_stage_outputs():
    f = torch.randn(2, 8, 4, 4)
    a = attention_map(f)
    assert a.shape == (2, 16) and torch.allclose(a.norm(dim=1), torch.ones(2))
    assert torch.allclose(attention_map(f * 3), a, atol=1e-6)  # scale-free
    assert stage_outputs(create_model("resnet20", 10), torch.randn(1, 3, 32, 32)) == ["layer1", "layer2", "layer3"]
    assert stage_outputs(create_model("vgg16_cifar", 10), torch.randn(1, 3, 32, 32))[0] == "features.5"


def test_distill_epoch_moves_the_student_toward_the_teacher():
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    student = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    ts = TeacherStudent(teacher, 10, lr=0.01)
    opt = torch.optim.SGD(student.parameters(), lr=0.02)
    loader = _digits_loader(False)
    mse = lambda y, s, t: {"mse": nn.functional.mse_loss(s, t)}  # noqa: E731
    first = distill_epoch(student, ts, loader, opt, mse, device=torch.device("cpu"), desc="t", quiet=True)
    for _ in range(5):
        last = distill_epoch(student, ts, loader, opt, mse, device=torch.device("cpu"), desc="t", quiet=True)
    assert last["mse"] < first["mse"] / 2 and last["agreement"] > first["agreement"]
    assert {"d_loss", "d_acc", "agreement", "loss"} <= last.keys()


def test_validation_split_is_disjoint_stratified_and_unaugmented(tmp_path):
    make_cifar10(tmp_path, per_batch=40, n_test=30)  # 200 training images
    cfg = compose(["task=resnet56", f"data.root={tmp_path}", "data.check_integrity=false", "data.val_fraction=0.2"])
    train, val, test = create_task(cfg).splits()
    assert len(train) == 160 and len(val) == 40
    assert not set(train.indices) & set(val.indices) and set(train.indices) | set(val.indices) == set(range(200))
    labels = train.dataset.targets
    counts = torch.bincount(torch.tensor([labels[i] for i in val.indices]), minlength=10)
    full = torch.bincount(torch.tensor(labels), minlength=10)
    assert ((counts - 0.2 * full).abs() <= 1).all()  # stratified
    a, b = val[0][0], val[0][0]
    assert torch.equal(a, b)  # no random crop or flip on validation
    test_images = {bytes(img.tobytes()) for img in test.data}
    assert not any(bytes(train.dataset.data[i].tobytes()) in test_images for i in val.indices)
    # the same split for every run seed, another one for another val_seed
    again = create_task(
        compose(
            ["task=resnet56", f"data.root={tmp_path}", "data.check_integrity=false", "data.val_fraction=0.2", "seed=5"]
        )
    ).splits()[1]
    other = create_task(
        compose(
            [
                "task=resnet56",
                f"data.root={tmp_path}",
                "data.check_integrity=false",
                "data.val_fraction=0.2",
                "data.val_seed=1",
            ]
        )
    ).splits()[1]
    assert again.indices == val.indices and other.indices != val.indices


def test_val_fraction_defaults_to_a_tenth_only_for_methods_that_ask():
    assert compose(["method=gal"]).data.val_fraction == 0.1
    assert compose(["method=l1"]).data.val_fraction == 0.0
    assert compose(["method=gal", "data.val_fraction=0.2"]).data.val_fraction == 0.2


@pytest.mark.parametrize("extra", [["method=gal", "method.epochs=6"], ["method=aip", "method.steps=3"]])
def test_gal_and_aip_hit_the_target_on_digits_and_log_their_curves(run_cli, tmp_path, extra):
    results = tmp_path / "results"
    code, out, err = run_cli(
        "run",
        "task=digits",
        "train.epochs=10",
        "finetune.epochs=5",
        "measure.repeats=2",
        "measure.max_seconds=0",
        "quiet=true",
        f"results_dir={results}",
        *extra,
        "--json",
    )
    assert code == 0, err
    s = last_json(out)
    assert 0.5 <= s["flops_reduction"] <= 0.512 and s["final_acc"] >= 0.9
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{results / 'mlflow.db'}")
    run = client.get_run(s["mlflow_run_id"])
    name = extra[0].split("=")[1]
    keys = run.data.metrics.keys()
    assert {f"{name}/d_acc", f"{name}/loss"} <= keys
    if name == "gal":
        assert {"gal/mask_zero", "gal/val_acc", "gal/natural_reduction", "gal/final_reduction"} <= keys
        assert len(client.get_metric_history(s["mlflow_run_id"], "gal/val_acc")) == 6  # one per epoch
        assert run.data.params["data.val_fraction"] == "0.1" and run.data.metrics["data/val_samples"] > 0
    code, out, err = run_cli("compare", f"results_dir={results}", "--no-log")
    assert code == 0 and name in out


def test_gal_resumes_its_mask_learning_from_a_checkpoint_to_the_same_result(tmp_path):
    """A run killed after its 2nd mask epoch (the state it saved) continues to the uninterrupted result."""
    from tests.fixtures import train_digits_net

    base = train_digits_net(steps=30)[0]
    x_val = torch.randn(64, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    y_val = torch.randint(0, 10, (64,), generator=torch.Generator().manual_seed(3))
    validate = lambda m: (m.eval()(x_val).argmax(1) == y_val).float().mean().item()  # noqa: E731
    cfg = _gal_cfg(epochs=3, mask_step=3, select="val")

    def learn(resume=None, stop_after=None):
        torch.manual_seed(0)
        model = copy.deepcopy(base)
        saved = []

        def save(state):
            saved.append(copy.deepcopy(state))
            if stop_after is not None and state["epoch"] == stop_after:
                raise KeyboardInterrupt  # killed right after the checkpoint

        ctx = _ctx(model, torch.randn(1, 1, 8, 8), loader=_digits_loader(False), validate=validate)
        ctx.val_loader, ctx.save_state, ctx.resume_state = [], save, resume
        masks = SoftMasks(model, "channel", [], ctx.pruner, "normal", torch.Generator().manual_seed(0))
        scores = GAL(cfg).learn_masks(model, copy.deepcopy(base), masks, ctx)
        return masks.flat(), torch.cat(list(scores.values())), model.fc.weight.detach().clone(), saved

    uninterrupted = learn()
    with pytest.raises(KeyboardInterrupt):
        learn(stop_after=2)
    checkpoint = uninterrupted[3][1]  # the state after epoch 2, as the killed run saved it
    assert checkpoint["epoch"] == 2
    torch.save(checkpoint, tmp_path / "state.pt")  # the run checkpoint loads with weights_only=True
    resumed = learn(resume=torch.load(tmp_path / "state.pt", weights_only=True))
    for a, b in zip(uninterrupted[:3], resumed[:3]):
        assert torch.equal(a, b)
    assert len(resumed[3]) == 1  # only epoch 3 was trained again


def test_paper_rows_for_gal_aip_match_on_model_and_compare_drops():
    from harness.compare import _paper_cells, _paper_row

    assert _paper_row("gal", "resnet56", 0.37)["name"] == "GAL-0.6"
    assert _paper_row("gal_0.05", "resnet56", 0.40, "vgg16_cifar")["name"].startswith("GAL-0.05")
    assert _paper_row("gal_0.05", "resnet56", 0.40, "resnet56") is None  # the VGG row never matches a ResNet
    aip = _paper_row("aip", "resnet50_imagenet", 0.46, "tv:resnet18")
    assert aip is not None and _paper_row("aip", "resnet50_imagenet", 0.46, "tv:resnet50") is None
    text, delta = _paper_cells(aip, {"Δ acc": -1.0, "final acc %": 68.0})
    assert "-0.66 vs base" in text and delta == pytest.approx(-0.34)  # we lost 0.34 points more than AIP did


@pytest.mark.parametrize(
    "task, make, extra",
    [
        ("resnet50_imagenet", "make_imagefolder", ["data.size=32"]),
        ("cub200", "make_cub200", ["data.size=32"]),
        ("fcn_voc2011", "make_voc2011", ["data.size=32"]),
    ],
)
def test_validation_split_in_every_on_disk_layout_is_carved_from_train_and_unaugmented(tmp_path, task, make, extra):
    import tests.fixtures as fixtures

    getattr(fixtures, make)(
        tmp_path, **({"classes": 2, "per_class": 10} if make != "make_voc2011" else {"n_train": 10})
    )
    train, val, test = create_task(
        compose([f"task={task}", f"data.root={tmp_path}", "data.val_fraction=0.2", *extra])
    ).splits()
    assert len(val) >= 2 and len(train) + len(val) == len(train.dataset)
    assert not set(train.indices) & set(val.indices)
    for i in range(len(val)):  # served with the test split's transform: no random crop or flip
        a, b = val[i], val[i]
        assert torch.equal(a[0], b[0]) and torch.equal(torch.as_tensor(a[1]), torch.as_tensor(b[1]))
