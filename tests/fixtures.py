"""Tiny datasets generated in the real on-disk formats, and a stand-in for the latency table's cost."""

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
        entry = {
            "batch_label": name,
            "labels": labels,
            "data": data,
            "filenames": [f"{name}_{i}.png" for i in range(n)],
        }
        with open(folder / name, "wb") as fh:
            pickle.dump(entry, fh, protocol=2)

    for i in range(1, 6):
        batch(f"data_batch_{i}", per_batch)
    batch("test_batch", n_test)
    with open(folder / "batches.meta", "wb") as fh:
        pickle.dump(
            {"label_names": [f"class{i}" for i in range(10)], "num_cases_per_batch": per_batch, "num_vis": 3072},
            fh,
            protocol=2,
        )
    return folder


def make_cifar100(root: Path, n_train: int = 40, n_test: int = 20, seed: int = 0) -> Path:
    """``cifar-100-python/`` with 'train', 'test' and 'meta' pickles ('fine_labels', 'coarse_labels')."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    for name, n in (("train", n_train), ("test", n_test)):
        fine = [int(i % 100) for i in range(n)]
        entry = {
            "filenames": [f"{name}_{i}.png" for i in range(n)],
            "batch_label": name,
            "fine_labels": fine,
            "coarse_labels": [f // 5 for f in fine],
            "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        }
        with open(folder / name, "wb") as fh:
            pickle.dump(entry, fh, protocol=2)
    with open(folder / "meta", "wb") as fh:
        pickle.dump(
            {"fine_label_names": [f"f{i}" for i in range(100)], "coarse_label_names": [f"c{i}" for i in range(20)]},
            fh,
            protocol=2,
        )
    return folder


def _jpeg(path: Path, rng, size=(40, 32), tint: int = 0) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    pixels[..., 0] = np.clip(pixels[..., 0] // 4 + tint, 0, 255)
    Image.fromarray(pixels).save(path, "JPEG")


def make_imagefolder(root: Path, classes: int = 3, per_class: int = 4, seed: int = 0) -> Path:
    """ImageNet's ImageFolder layout: ``train/<wnid>/*.JPEG`` and ``val/<wnid>/*.JPEG``."""
    rng = np.random.default_rng(seed)
    for split in ("train", "val"):
        for c in range(classes):
            for i in range(per_class):
                _jpeg(Path(root) / split / f"n{c:08d}" / f"img_{c}_{i}.JPEG", rng, tint=60 * c)
    return Path(root)


def make_cub200(root: Path, classes: int = 3, per_class: int = 4, seed: int = 0) -> Path:
    """The official CUB_200_2011 layout: images/<class dir>/*.jpg, images.txt, image_class_labels.txt,
    train_test_split.txt, classes.txt (1-based ids and labels)."""
    rng = np.random.default_rng(seed)
    base = Path(root) / "CUB_200_2011"
    images, labels, split, names = [], [], [], []
    image_id = 0
    for c in range(1, classes + 1):
        cls_dir = f"{c:03d}.Bird_{c}"
        names.append(f"{c} {cls_dir}")
        for i in range(per_class):
            image_id += 1
            rel = f"{cls_dir}/Bird_{c}_{i}.jpg"
            _jpeg(base / "images" / rel, rng, tint=60 * c)
            images.append(f"{image_id} {rel}")
            labels.append(f"{image_id} {c}")
            split.append(f"{image_id} {int(i % 2 == 0)}")
    for name, lines in (
        ("images", images),
        ("image_class_labels", labels),
        ("train_test_split", split),
        ("classes", names),
    ):
        (base / f"{name}.txt").write_text("\n".join(lines) + "\n")
    return base


def make_voc2011(root: Path, n_train: int = 4, n_val: int = 2, size=(48, 40), seed: int = 0) -> Path:
    """``VOCdevkit/VOC2011/`` with JPEGImages/, SegmentationClass/ (palette PNGs: 0..20, 255 borders)
    and ImageSets/Segmentation/{train,val}.txt."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    voc = Path(root) / "VOCdevkit" / "VOC2011"
    (voc / "ImageSets" / "Segmentation").mkdir(parents=True, exist_ok=True)
    (voc / "SegmentationClass").mkdir(parents=True, exist_ok=True)
    palette = [v for i in range(256) for v in (i * 37 % 256, i * 67 % 256, i * 97 % 256)]
    for split, n in (("train", n_train), ("val", n_val)):
        ids = [f"2011_{split}_{i:04d}" for i in range(n)]
        for k, image_id in enumerate(ids):
            _jpeg(voc / "JPEGImages" / f"{image_id}.jpg", rng, size=size)
            mask = np.zeros((size[1], size[0]), dtype=np.uint8)
            mask[: size[1] // 2, :] = 1 + (k % 20)
            mask[size[1] // 2, :] = 255
            img = Image.fromarray(mask, mode="P")
            img.putpalette(palette)
            img.save(voc / "SegmentationClass" / f"{image_id}.png")
        (voc / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(ids) + "\n")
    return Path(root)


def train_digits_net(steps: int, hooks=(), seed: int = 0):
    """A 16-wide digits net trained for ``steps`` SGD steps of 64 samples: (model, x_train, y_train)."""
    import torch
    import torch.nn as nn

    from harness.config import compose
    from tasks.digits import DigitsTask
    from tasks.models import create_model

    torch.manual_seed(seed)
    x, y = DigitsTask(compose(["task=digits"])).datasets()[0].tensors
    model = create_model("digits_resnet", 10, width=16)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for _ in range(steps):
        idx = torch.randint(0, len(y), (64,))
        loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        for h in hooks:
            h.after_backward(model)
        opt.step()
    return model, x, y


def prune_context(model, target: float, loader, example, **overrides):
    """A PruneContext for calling a method's ``prune`` directly: CPU, quiet, the model's ``fc`` ignored,
    nothing logged, the digits fine-tune recipe; ``overrides`` replace any field."""
    import torch
    import torch.nn as nn

    from harness.config import compose
    from harness.core.surgery import ChannelPruner
    from methods.base import PruneContext, Reporting, TrainingContext

    fields = dict(
        pruner=ChannelPruner(model, example, [model.fc], 0.1),
        target=target,
        device=torch.device("cpu"),
        training=TrainingContext(
            loader=loader, loss_fn=nn.CrossEntropyLoss(), finetune_recipe=compose(["task=digits"]).finetune
        ),
        report=Reporting(
            log_step=lambda step, metrics: None,
            log_metrics=lambda metrics, step=None: None,
            quick_test_metric=lambda m: 0.0,
        ),
        quiet=True,
    )
    return PruneContext(**{**fields, **overrides})


def make_voc_detection(root: Path, n_trainval: int = 6, n_test: int = 3, size=(96, 80), seed: int = 0) -> Path:
    """``VOCdevkit/VOC2007/`` with JPEGImages/, Annotations/ (the devkit's XML: size, objects with name,
    difficult, 1-based inclusive bndbox) and ImageSets/Main/{trainval,test}.txt. Each image holds one bright
    square of its class (learnable), and every third image a second, ``difficult`` object."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    voc = Path(root) / "VOCdevkit" / "VOC2007"
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (voc / sub).mkdir(parents=True, exist_ok=True)
    names = ("aeroplane", "bicycle", "bird")
    w, h = size
    for split, n in (("trainval", n_trainval), ("test", n_test)):
        ids = [f"{split[:2]}{i:05d}" for i in range(n)]
        for k, image_id in enumerate(ids):
            pixels = rng.integers(0, 60, (h, w, 3), dtype=np.uint8)
            x1, y1 = int(rng.integers(0, w // 2)), int(rng.integers(0, h // 2))
            x2, y2 = x1 + w // 3, y1 + h // 3
            pixels[y1:y2, x1:x2, k % 3] = 250
            Image.fromarray(pixels).save(voc / "JPEGImages" / f"{image_id}.jpg", "JPEG")
            objects = [(names[k % 3], 0, (x1 + 1, y1 + 1, x2, y2))]
            if k % 3 == 2:
                objects.append(("bird", 1, (w - 20, h - 20, w - 4, h - 4)))
            xml = "".join(
                f"<object><name>{name}</name><pose>Unspecified</pose><truncated>0</truncated>"
                f"<difficult>{hard}</difficult><bndbox><xmin>{a}</xmin><ymin>{b}</ymin><xmax>{c}</xmax>"
                f"<ymax>{d}</ymax></bndbox></object>"
                for name, hard, (a, b, c, d) in objects
            )
            (voc / "Annotations" / f"{image_id}.xml").write_text(
                f"<annotation><folder>VOC2007</folder><filename>{image_id}.jpg</filename><size><width>{w}"
                f"</width><height>{h}</height><depth>3</depth></size><segmented>0</segmented>{xml}</annotation>"
            )
        (voc / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(ids) + "\n")
    return Path(root)


class ToyLatency:
    """A stand-in for the latency table's cost (harness.latency.target.PredictedLatency): every conv and
    linear costs a fixed 0.05 ms plus its MACs at 1e-6 ms each, so the per-layer overhead is large."""

    name, target_key, what = "latency_ms", "prune.latency_reduction", "the predicted latency"

    def layer_ms(self, model, x):
        from harness.latency.table import named_layers_of

        def ms(shape, cin, cout):
            k = shape.kernel[0] * shape.kernel[1] if shape.kernel else 1
            area = shape.size[0] * shape.size[1] if len(shape.size) == 2 else 1
            return 0.05 + 1e-6 * cin * cout * k * area

        return {n: (lambda cin, cout, s=s: ms(s, cin, cout)) for n, (s, _, _) in named_layers_of(model, x).items()}

    def __call__(self, model, x):
        from harness.latency.table import named_layers_of

        times = self.layer_ms(model, x)
        return sum(times[n](cin, cout) for n, (_, cin, cout) in named_layers_of(model, x).items())

    def correct(self, prefix, target, build, predicted, n):
        return prefix
