"""The paper tasks on tiny fixtures in their real on-disk layouts."""

import pytest
import torch

from harness.config import compose
from harness.core.errors import DataError
from harness.core.surgery import ChannelPruner
from methods.l1 import FilterL1Importance
from tasks import create_task
from tasks.models import create_model
from tests.conftest import last_json
from tests.fixtures import make_cifar100, make_cub200, make_imagefolder, make_voc2011

pytestmark = pytest.mark.quick  # the inner loop: pytest -m quick

QUICK = [
    "train.epochs=1",
    "finetune.epochs=1",
    "measure.repeats=1",
    "measure.warmup=1",
    "measure.max_seconds=0",
    "data.num_workers=0",
    "tracking=none",
    "quiet=true",
    "prune.flops_reduction=0.3",
    "--json",
]


def test_list_shows_every_task(run_cli):
    out = run_cli("list")[1]
    tasks = ("digits", "resnet56", "vgg16_cifar100", "resnet50_imagenet", "cub200", "fcn_voc2011", "ssd_voc")
    for name in (*tasks, "retinanet_voc", "cifar_mosaic"):
        assert f"  {name} " in out


def test_vgg16_cifar100_end_to_end(run_cli, tmp_path):
    make_cifar100(tmp_path / "data")
    code, out, err = run_cli(
        "run",
        "task=vgg16_cifar100",
        "method=l1",
        f"data.root={tmp_path / 'data'}",
        "data.check_integrity=false",
        "measure.batch_sizes=[1,4]",
        f"results_dir={tmp_path / 'r'}",
        *QUICK,
    )
    assert code == 0, err
    s = last_json(out)
    assert s["task"] == "vgg16_cifar100" and 0.3 <= s["flops_reduction"] <= 0.33
    assert s["base_params"] == 14_770_212  # VGG-16 (BN) with a 100-way head


def test_resnet50_imagenet_from_given_weights(run_cli, tmp_path):
    make_imagefolder(tmp_path / "imagenet")
    torch.manual_seed(0)
    weights = tmp_path / "resnet50.pth"
    torch.save(create_model("tv:resnet50", 1000).state_dict(), weights)
    code, out, err = run_cli(
        "run",
        "task=resnet50_imagenet",
        "method=l1",
        f"data.root={tmp_path / 'imagenet'}",
        f"model.weights={weights}",
        "data.size=32",
        "measure.batch_sizes=[1]",
        f"results_dir={tmp_path / 'r'}",
        *QUICK,
    )
    assert code == 0, err
    s = last_json(out)
    assert s["baseline_reused"] and not (tmp_path / "r" / "baselines").exists()  # the weights are the baseline
    assert 0.3 <= s["flops_reduction"] <= 0.33


def test_cub200_transfer_with_a_model_override(run_cli, tmp_path):
    make_cub200(tmp_path / "cub")
    weights = tmp_path / "resnet18_imagenet.pth"
    torch.save({"state_dict": create_model("tv:resnet18", 1000).state_dict()}, weights)  # 1000-way head
    code, out, err = run_cli(
        "run",
        "task=cub200",
        "model=tv:resnet18",
        "method=l1",
        f"data.root={tmp_path / 'cub'}",
        f"model.weights={weights}",
        "data.size=32",
        "measure.batch_sizes=[1]",
        f"results_dir={tmp_path / 'r'}",
        *QUICK,
    )
    assert code == 0, err
    s = last_json(out)
    assert not s["baseline_reused"]  # weights only initialise; the transfer is trained
    assert s["channels"]["fc"] == 200 and 0.3 <= s["flops_reduction"] <= 0.33


def test_fcn_voc2011_end_to_end_with_miou(run_cli, tmp_path):
    make_voc2011(tmp_path / "voc")
    code, out, err = run_cli(
        "run",
        "task=fcn_voc2011",
        "method=l1",
        f"data.root={tmp_path / 'voc'}",
        "data.size=32",
        "train.batch_size=2",
        "finetune.batch_size=2",
        "measure.batch_sizes=[1]",
        f"results_dir={tmp_path / 'r'}",
        *QUICK,
    )
    assert code == 0, err
    s = last_json(out)
    assert s["metric"] == "miou" and 0 <= s["final_acc"] <= 1
    assert 0.3 <= s["flops_reduction"] <= 0.33
    assert s["channels"]["model.classifier.4"] == 21


def test_miou_counts_classes_and_ignores_255():
    from tasks.voc import VocSegmentationTask

    task = VocSegmentationTask(compose(["task=fcn_voc2011"]))
    logits = torch.zeros(1, 21, 2, 2)
    logits[0, 1, :, 0] = 1  # predicts class 1 in the left column, class 0 elsewhere
    y = torch.tensor([[[1, 0], [1, 255]]])
    # class 0: inter 1, union 1 -> 1; class 1: inter 2, union 2 -> 1; the 255 pixel is ignored
    model = lambda x: logits  # noqa: E731
    model.eval = lambda: None
    assert task.evaluate(model, [(torch.zeros(1, 3, 2, 2), y)], torch.device("cpu"))["miou"] == 1.0
    y = torch.tensor([[[1, 1], [0, 255]]])  # class 0: inter 0, union 2; class 1: inter 1, union 3
    assert task.evaluate(model, [(torch.zeros(1, 3, 2, 2), y)], torch.device("cpu"))["miou"] == pytest.approx(1 / 6)


def test_library_model_is_pruned_to_a_target():
    model = create_model("tv:mobilenet_v2", 10)
    pruner = ChannelPruner(model, torch.randn(1, 3, 64, 64), [model.classifier[1]], 0.1)
    pruner.prune_to_target(model, FilterL1Importance(), 0.4)
    assert 0.4 <= pruner.reduction(model) <= 0.43
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 10)


def _task(name, root, *extra):
    return create_task(compose([f"task={name}", f"data.root={root}", "data.size=32", *extra]))


def test_missing_split_file_is_named(tmp_path):
    make_voc2011(tmp_path)
    (tmp_path / "VOCdevkit/VOC2011/ImageSets/Segmentation/val.txt").unlink()
    with pytest.raises(DataError, match="val.txt"):
        _task("fcn_voc2011", tmp_path).datasets()


def test_unreadable_image_is_named_or_skipped_when_asked(tmp_path):
    base = make_cub200(tmp_path)
    bad = next((base / "images").rglob("*_0.jpg"))
    bad.write_bytes(b"not a jpeg")
    train, _ = _task("cub200", tmp_path).datasets()
    with pytest.raises(DataError, match=bad.name):
        [train[i] for i in range(len(train))]
    task = _task("cub200", tmp_path, "data.skip_bad=true")
    train, test = task.datasets()
    assert task.skipped_images == 1 and len(train) + len(test) == 11
    assert all(train[i][0].shape == (3, 32, 32) for i in range(len(train)))


def test_label_out_of_range_is_named(tmp_path):
    base = make_cub200(tmp_path)
    labels = base / "image_class_labels.txt"
    labels.write_text(labels.read_text().replace("1 1\n", "1 201\n", 1))
    with pytest.raises(DataError, match="image_class_labels.txt.*outside 1..200|label 201"):
        _task("cub200", tmp_path).datasets()


def test_voc_mask_label_out_of_range_is_named(tmp_path):
    import numpy as np
    from PIL import Image

    make_voc2011(tmp_path)
    mask = tmp_path / "VOCdevkit/VOC2011/SegmentationClass/2011_train_0000.png"
    bad = Image.fromarray(np.full((40, 48), 30, dtype=np.uint8), mode="P")
    bad.putpalette([v for i in range(256) for v in (i, i, i)])  # without a palette PIL renumbers the indices
    bad.save(mask)
    train, _ = _task("fcn_voc2011", tmp_path).datasets()
    with pytest.raises(DataError, match="2011_train_0000.png"):
        train[0]
