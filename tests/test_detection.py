"""Detection on PASCAL VOC (tasks/detection.py, tasks/models/detection.py): the devkit's XML read as it is
written, mAP from torchmetrics with difficult boxes as crowd regions, detectors pruned through the same
surgery with their prediction convs fixed, and runs end to end on a generated VOCdevkit."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn

from harness.config import compose
from harness.core.errors import DataError
from harness.core.surgery import ChannelPruner
from tasks import create_task
from tests.fixtures import make_voc_detection

SMALL = ["model.name=ssdlite320_mobilenet_v3_large", "data.size=160", "data.box_augment=flip", "data.num_workers=0"]
# RetinaNet on ResNet-18 at 96 px: ~60 layers to trace instead of SSDlite's ~200 (each pruning step traces)
TINY = ["task=retinanet_voc", "model.kwargs.depth=18", "data.size=96", "data.box_augment=flip", "data.num_workers=0"]


@pytest.fixture(scope="module")
def voc(tmp_path_factory):
    return make_voc_detection(tmp_path_factory.mktemp("voc"))


def _task(voc, *overrides):
    return create_task(compose(["task=ssd_voc", f"data.root={voc}", "data.train_sets=[[2007,trainval]]", *overrides]))


@pytest.mark.quick
def test_voc_annotations_are_read_as_the_devkit_writes_them(voc, tmp_path):
    from tasks.detection import read_annotation

    target = read_annotation(voc / "VOCdevkit/VOC2007/Annotations/tr00002.xml")
    assert target["labels"].tolist() == [3, 3] and target["difficult"].tolist() == [False, True]
    # 1-based inclusive pixel indices become 0-based corners: width = xmax - xmin + 1
    assert target["boxes"][1].tolist() == [75.0, 59.0, 92.0, 76.0]
    broken = tmp_path / "broken.xml"
    broken.write_text("<annotation><object><name>dragon</name></object></annotation>")
    with pytest.raises(DataError, match="unknown class 'dragon'"):
        read_annotation(broken)
    broken.write_text("<annotation><object>")
    with pytest.raises(DataError, match=r"cannot read annotation .*broken\.xml"):
        read_annotation(broken)


@pytest.mark.quick
def test_a_missing_year_names_the_fix(voc):
    with pytest.raises(DataError, match=r"VOC2012/ImageSets/Main/trainval\.txt.*data\.train_sets"):
        create_task(compose(["task=ssd_voc", f"data.root={voc}"])).datasets()


@pytest.mark.quick
def test_samples_keep_labels_and_difficult_flags_with_their_boxes(voc):
    from tasks.detection import collate_detection

    train, test = _task(voc, "data.box_augment=ssd").datasets()
    torch.manual_seed(0)
    for i in range(len(train)):
        image, target = train[i]
        assert image.dtype == torch.float32 and 0 <= image.min() and image.max() <= 1
        n = len(target["boxes"])
        assert len(target["labels"]) == n == len(target["difficult"])
        h, w = image.shape[-2:]
        assert (target["boxes"][:, 2] <= w).all() and (target["boxes"][:, 3] <= h).all()
    images, targets = collate_detection([test[0], test[1]])
    assert len(images) == 2 and targets[0]["boxes"].shape == (1, 4)


class _Oracle(nn.Module):
    """Detections read from a table: what mAP should make of them is known."""

    def __init__(self, answers):
        super().__init__()
        self.answers, self.calls = answers, 0

    def forward(self, images):
        out = self.answers[self.calls : self.calls + len(images)]
        self.calls += len(images)
        return out


def test_map_treats_difficult_boxes_as_neither_hit_nor_miss(voc):
    task = _task(voc)
    test = task.datasets()[1]
    loader = torch.utils.data.DataLoader(test, batch_size=2, collate_fn=task.collate())
    truth = [test[i][1] for i in range(len(test))]

    def answers(extra):
        out = []
        for t in truth:
            keep = ~t["difficult"]
            boxes, labels = t["boxes"][keep], t["labels"][keep]
            if extra == "difficult":  # also find the difficult object: not a false positive
                boxes, labels = t["boxes"], t["labels"]
            if extra == "wrong":  # one confident detection of nothing
                boxes, labels = (
                    torch.cat([boxes, torch.tensor([[0.0, 0.0, 8.0, 8.0]])]),
                    torch.cat([labels, labels[:1]]),
                )
            out.append({"boxes": boxes, "scores": torch.linspace(0.9, 0.95, len(boxes)), "labels": labels})
        return out

    assert task.evaluate(_Oracle(answers("none")), loader, torch.device("cpu"))["map50"] == pytest.approx(1.0)
    assert task.evaluate(_Oracle(answers("difficult")), loader, torch.device("cpu"))["map50"] == pytest.approx(1.0)
    assert task.evaluate(_Oracle(answers("wrong")), loader, torch.device("cpu"))["map50"] < 0.99


@pytest.mark.parametrize(
    "overrides",
    [
        ["task=ssd_voc", "model.name=ssdlite320_mobilenet_v3_large", "data.size=160"],
        ["task=retinanet_voc", "model.kwargs.depth=18", "data.size=128"],
    ],
    ids=["ssdlite", "retinanet18"],
)
def test_detectors_prune_with_their_prediction_convs_fixed(overrides):
    from methods import create_method

    task = create_task(compose(overrides))
    model = task.build_model().eval()
    fixed = {id(m): m.out_channels for m in task.output_layers(model)}
    pruner = ChannelPruner(model, task.example_input(1), task.output_layers(model), 0.1)
    pruned = pruner.prune_to_target(model, create_method(compose(["method=l1"])).importance(), 0.3)
    assert 0.3 <= pruner.reduction(pruned) <= 0.36
    layers = task.output_layers(pruned)
    assert [m.out_channels for m in layers] == list(fixed.values())
    cls_logits, boxes = pruned(task.example_input(2))  # the network alone, before decoding and NMS
    assert cls_logits.shape[-1] == 21 and boxes.shape[-1] == 4 and cls_logits.shape[1] == boxes.shape[1]
    with torch.no_grad():
        (detections,) = pruned([torch.rand(3, 90, 120)])  # the whole detector: resize, decode, NMS
    assert set(detections) == {"boxes", "scores", "labels"}
    backbone = pruned.detector.backbone
    if hasattr(pruned.detector.head.classification_head, "cls_logits"):  # RetinaNet: one head for every level
        fpn_widths = {
            next(c for c in m.modules() if isinstance(c, nn.Conv2d)).out_channels for m in backbone.fpn.layer_blocks
        }
        heads = pruned.detector.head.classification_head, pruned.detector.head.regression_head
        assert len(fpn_widths) == 1 and {h.conv[0][0].in_channels for h in heads} == fpn_widths


def test_ssd_vgg_l2_norm_scale_follows_conv4_3():
    """SSD300-VGG16 (~31 G MACs at 300 px): one removal from conv4_3's group, the scale declared to
    torch-pruning shrinks with it, and the detector still runs (the extras need the full 300 px)."""
    task = create_task(compose(["task=ssd_voc"]))
    model = task.build_model().eval()
    pruner = ChannelPruner(model, task.example_input(1), task.output_layers(model), 0.1)
    conv4_3 = [n for n, m in model.detector.backbone.features.named_modules() if isinstance(m, nn.Conv2d)][-1]
    key = next(k for k, g in pruner.groups(model).items() if f"detector.backbone.features.{conv4_3}" in g.members)
    pruned = pruner.remove(model, [(key, i) for i in range(0, 64, 8)])
    backbone = pruned.detector.backbone
    assert backbone.scale_weight.shape[0] == backbone.features.get_submodule(conv4_3).out_channels == 504
    cls_logits, boxes = pruned(task.example_input(1))
    assert cls_logits.shape == (1, 8732, 21) and boxes.shape == (1, 8732, 4)  # SSD300's 8,732 default boxes


def test_methods_that_read_class_scores_refuse_a_detector(run_cli, voc, tmp_path):
    code, _, err = run_cli(
        "run", "task=ssd_voc", f"data.root={voc}", *SMALL, "method=scop", f"results_dir={tmp_path}", "quiet=true"
    )
    assert code == 2 and err.count("\n") == 1 and "task ssd_voc trains through its own losses" in err
    assert "l1" in err and "gbn" in err and not (tmp_path / "baselines").exists()


FAST = {  # each method's schedule cut to a few passes over 6 images (its logic is tested on digits)
    "l1": ["method=l1"],
    "gbn": ["method=gbn", "method.tick_p=0.1", "method.tick_samples=6", "method.tock_first=false",
            "method.tock_every=0"],
    "gfp": ["method=gfp", "method.channels_per_step=200", "method.interval=1"],
    "wgates": ["method=wgates", "method.epochs=1"],
    # RetinaNet's heads have no BN: slimming scores 12 of 22 groups, which hold at most 22.9% of the MACs
    "slimming": ["method=slimming", "method.sparse_epochs=1", "prune.flops_reduction=0.2"],
}  # fmt: skip


@pytest.mark.parametrize("method", FAST)
def test_a_detector_runs_end_to_end(run_cli, voc, tmp_path_factory, method):
    results = tmp_path_factory.getbasetemp() / "detection_runs"  # one baseline for every method
    code, out, err = run_cli(
        "run", *TINY, f"data.root={voc}", "data.train_sets=[[2007,trainval]]", "prune.flops_reduction=0.3", *FAST[method],
        "train.epochs=2", "finetune.epochs=1", "train.batch_size=3",
        "finetune.batch_size=3", "measure.repeats=2", "measure.warmup=1", "measure.max_seconds=0",
        "measure.batch_sizes=[1]", f"results_dir={results}", "quiet=true", "--json",
    )  # fmt: skip
    assert code == 0, err[-3000:]
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["target_reduction"] <= summary["flops_reduction"] <= summary["target_reduction"] + 0.06
    assert 0.0 <= summary["final_acc"] <= 1.0 and summary["metric"] == "map50"
    # timed twice: the network alone, and end to end with resizing, decoding and NMS
    assert "scope" not in summary["latency"]["b1"] and summary["latency"]["e2e_b1"]["scope"] == "end to end"
    assert summary["latency"]["e2e_b1"]["pruned_ms"] > 0


def test_cifar_mosaic_is_written_once_deterministically_and_read_as_voc(tmp_path):
    from tests.fixtures import make_cifar10

    make_cifar10(tmp_path / "cifar", per_batch=12, n_test=12)
    overrides = [
        "task=cifar_mosaic", f"data.root={tmp_path / 'cifar'}", "data.size=64", "data.canvases_train=6",
        "data.canvases_test=3",
    ]  # fmt: skip
    one = create_task(compose([*overrides, f"results_dir={tmp_path / 'a'}"]))
    train, test = one.datasets()
    assert (len(train), len(test)) == (6, 3)
    voc = one.devkit()
    again = create_task(compose([*overrides, f"results_dir={tmp_path / 'b'}"])).devkit()
    for name in ("JPEGImages/trainval_000004.jpg", "Annotations/test_000002.xml"):
        assert (voc / name).read_bytes() == (again / name).read_bytes()  # the same canvases on every machine
    other = create_task(compose([*overrides, "data.mosaic_seed=1", f"results_dir={tmp_path / 'a'}"])).devkit()
    assert other != voc and (other / "Annotations/test_000002.xml").read_bytes() != (voc / name).read_bytes()
    for ds in (train, test):
        for i in range(len(ds)):
            image, target = ds[i]
            assert image.shape == (3, 64, 64) and 1 <= len(target["boxes"]) <= 4
            sides = target["boxes"][:, 2:] - target["boxes"][:, :2]
            assert (sides >= 0.2 * 64 - 1).all() and (sides <= 0.5 * 64 + 1).all()
            assert ((1 <= target["labels"]) & (target["labels"] <= 10)).all()


@pytest.mark.quick
def test_bad_detection_settings_are_one_line_before_anything_runs(run_cli, tmp_path):
    for bad, hint in (
        ("data.objects=[3,1]", "data.objects must be [min, max]"),
        ("data.scale=[0.5,1.5]", "data.scale [min, max]"),
        ("data.box_augment=mixup", "data.box_augment"),
    ):
        code, _, err = run_cli("run", "task=cifar_mosaic", bad, f"results_dir={tmp_path}", "quiet=true")
        assert code == 2 and err.count("\n") == 1 and hint in err, err
    assert not (tmp_path / "data").exists()  # no canvas written
