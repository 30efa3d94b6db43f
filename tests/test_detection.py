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

SMALL = ["model.name=ssdlite320_mobilenet_v3_large", "data.size=160", "data.augment=flip", "data.num_workers=0"]


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

    train, test = _task(voc, "data.augment=ssd").datasets()
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
        ["task=ssd_voc", "data.size=300"],
    ],
    ids=["ssdlite", "retinanet18", "ssd300_vgg16"],
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
    if hasattr(backbone, "scale_weight"):  # SSD-VGG's L2-norm scale follows conv4_3's channels
        conv4_3 = [m for m in backbone.features.modules() if isinstance(m, nn.Conv2d)][-1]
        assert backbone.scale_weight.shape[0] == conv4_3.out_channels < 512
    if hasattr(pruned.detector.head.classification_head, "cls_logits"):  # RetinaNet: one head for every level
        fpn_widths = {
            next(c for c in m.modules() if isinstance(c, nn.Conv2d)).out_channels for m in backbone.fpn.layer_blocks
        }
        heads = pruned.detector.head.classification_head, pruned.detector.head.regression_head
        assert len(fpn_widths) == 1 and {h.conv[0][0].in_channels for h in heads} == fpn_widths


def test_methods_that_read_class_scores_refuse_a_detector(run_cli, voc, tmp_path):
    code, _, err = run_cli(
        "run", "task=ssd_voc", f"data.root={voc}", *SMALL, "method=scop", f"results_dir={tmp_path}", "quiet=true"
    )
    assert code == 2 and err.count("\n") == 1 and "task ssd_voc trains through its own losses" in err
    assert "l1" in err and "gbn" in err and not (tmp_path / "baselines").exists()


@pytest.mark.parametrize("method", ["l1", "gbn_cpu", "gfp_cpu"])
def test_a_detector_runs_end_to_end(run_cli, voc, tmp_path_factory, method):
    results = tmp_path_factory.getbasetemp() / "detection_runs"  # one baseline for every method
    code, out, err = run_cli(
        "run", "task=ssd_voc", f"data.root={voc}", "data.train_sets=[[2007,trainval]]", *SMALL,
        f"method={method}", "prune.flops_reduction=0.3", "train.epochs=2", "finetune.epochs=1",
        "train.batch_size=3", "finetune.batch_size=3", "measure.repeats=2", "measure.warmup=1",
        "measure.max_seconds=0", "measure.batch_sizes=[1]", f"results_dir={results}", "quiet=true", "--json",
    )  # fmt: skip
    assert code == 0, err[-3000:]
    summary = json.loads(out.strip().splitlines()[-1])
    assert 0.3 <= summary["flops_reduction"] <= 0.36
    assert 0.0 <= summary["final_acc"] <= 1.0  # mAP@0.5 on the generated test images
