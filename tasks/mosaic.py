"""``cifar_mosaic``: a detection benchmark a CPU can run, built from **real** CIFAR-10 images.

Each canvas (``data.size`` pixels square) is another CIFAR image, upscaled and blurred, as a real-image
background, with 1-4 CIFAR images pasted at random scales and positions; their classes and boxes are the
annotations. Training canvases draw from the dev set's training pickles, test canvases from its validation
pickle (``test_batch``), so no image is seen on both sides. The canvases are written once, deterministically
(``data.mosaic_seed``), in the VOCdevkit layout under ``<results_dir>/data/``, and read by the same loader
as PASCAL VOC. It is a synthetic layout of real images, not a substitute for VOC.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from harness.core.errors import ConfigError, DataError
from harness.core.locks import file_lock
from harness.core.settings import setting
from tasks.base import DataSettings, recipe, register_task
from tasks.detection import VocDetection, _VocDetectionTask

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def _cifar(root: Path, train: bool):
    from tasks.cifar import _dataset_class

    try:
        ds = _dataset_class(10)(str(root), train=train, download=False)
    except RuntimeError:
        raise DataError(
            f"cifar_mosaic: no CIFAR-10 pickles under {root}. Fix: data.root=<dir holding cifar-10-batches-py/>, "
            "e.g. ../shared/data/cifar10-dev"
        ) from None
    return ds.data, np.asarray(ds.targets)


def write_mosaic(images: np.ndarray, labels: np.ndarray, out: Path, image_set: str, count: int, spec: dict) -> None:
    """``count`` canvases of ``images`` into ``out`` (a VOC year folder) as ``ImageSets/Main/<image_set>.txt``."""
    from PIL import Image, ImageFilter

    rng = np.random.default_rng([spec["seed"], image_set == "test"])
    size, (lo, hi) = spec["size"], spec["scale"]
    ids = []
    for n in range(count):
        k = int(rng.integers(spec["objects"][0], spec["objects"][1] + 1))
        picks = rng.choice(len(images), size=k + 1, replace=False)
        objects, background = picks[:k], picks[k]
        while labels[background] in labels[objects]:  # the background shows none of the objects' classes
            background = int(rng.integers(len(images)))
        canvas = Image.fromarray(images[background]).resize((size, size), Image.BILINEAR)
        canvas = canvas.filter(ImageFilter.GaussianBlur(spec["blur"]))
        xml = []
        for i in objects:
            side = int(rng.integers(round(lo * size), round(hi * size) + 1))
            x, y = (int(v) for v in rng.integers(0, size - side + 1, size=2))
            canvas.paste(Image.fromarray(images[i]).resize((side, side), Image.BILINEAR), (x, y))
            xml.append(
                f"<object><name>{CIFAR10_CLASSES[labels[i]]}</name><difficult>0</difficult><bndbox><xmin>{x + 1}"
                f"</xmin><ymin>{y + 1}</ymin><xmax>{x + side}</xmax><ymax>{y + side}</ymax></bndbox></object>"
            )
        image_id = f"{image_set}_{n:06d}"
        canvas.save(out / "JPEGImages" / f"{image_id}.jpg", quality=95)
        (out / "Annotations" / f"{image_id}.xml").write_text(
            f"<annotation><filename>{image_id}.jpg</filename><size><width>{size}</width><height>{size}</height>"
            f"<depth>3</depth></size>{''.join(xml)}</annotation>"
        )
        ids.append(image_id)
    (out / "ImageSets" / "Main" / f"{image_set}.txt").write_text("\n".join(ids) + "\n")


@dataclass
class MosaicData(DataSettings):
    root: str = setting(
        "../shared/data/cifar10-dev", "str", help="holds cifar-10-batches-py/ (train pickles -> training canvases)"
    )
    size: int = setting(128, "int", "[8, 8192]", help="canvas side, pixels; the detector resizes to it too")
    canvases_train: int = setting(
        12000, "int", "[1, 10000000]", help="training canvases (2,000 x 60 epochs overfits: results/cifar_mosaic)"
    )
    canvases_test: int = setting(500, "int", "[1, 10000000]", help="test canvases")
    objects: list = setting([1, 4], "list", help="[min, max] objects per canvas")
    scale: list = setting([0.2, 0.5], "list", help="[min, max] side of an object as a share of the canvas side")
    blur: float = setting(
        2.0, "real", "[0, 1000]", help="Gaussian blur radius of the upscaled background image, pixels"
    )
    mosaic_seed: int = setting(0, "int", "[0, 4294967295]", help="the canvases' seed")
    box_augment: str = setting("flip", choices=("ssd", "flip", "none"), help="training augmentation; boxes follow")


@register_task
class CifarMosaicTask(_VocDetectionTask):
    """A detection benchmark a CPU can run: canvases of real CIFAR-10 images, written once in the VOCdevkit
    layout under <results_dir>/data/ and read by the VOC loader; mAP@0.5 on canvases built from the dev set's
    validation images. A synthetic layout of real images, not a substitute for VOC."""

    name = "cifar_mosaic"
    description = "SSDlite on canvases of real CIFAR-10 images (1-4 objects over a real background), mAP@0.5"
    classes = CIFAR10_CLASSES
    num_classes = 11  # 10 classes and the background
    data_settings = MosaicData
    model_config = {"name": "ssdlite320_mobilenet_v3_large", "kwargs": {}, "weights": None}
    train_recipe = recipe(12, 32, 0.05, weight_decay=4.0e-5, warmup_epochs=2)
    finetune_recipe = recipe(2, 32, 0.01, weight_decay=4.0e-5)  # 24,000 canvases seen
    batch_sizes = (1, 32)

    def __init__(self, cfg):
        super().__init__(cfg)
        self.spec()  # bad canvas settings stop the run before anything is read or written

    def spec(self) -> dict:
        d = self.data
        try:
            lo, hi = (int(v) for v in d.objects)
            small, large = (float(v) for v in d.scale)
        except (TypeError, ValueError):
            lo = hi = small = large = -1
        if not 1 <= lo <= hi or not 0 < small <= large <= 1:
            raise ConfigError(
                f"data.objects must be [min, max] objects per canvas (1 <= min <= max) and data.scale [min, max] "
                f"sides as shares of the canvas (0 < min <= max <= 1); got {list(d.objects)} and {list(d.scale)}"
            )
        return {
            "size": int(d.size),
            "train": int(d.canvases_train),
            "test": int(d.canvases_test),
            "objects": [int(v) for v in d.objects],
            "scale": [float(v) for v in d.scale],
            "blur": float(d.blur),
            "seed": int(d.mosaic_seed),
        }

    def devkit(self) -> Path:
        """The VOC year folder of this spec's canvases, written on first use (once, under a lock)."""
        spec = self.spec()
        source = Path(self.data.root).expanduser().resolve()
        digest = hashlib.sha256(json.dumps([spec, str(source)], sort_keys=True).encode()).hexdigest()[:12]
        base = Path(self.cfg.results_dir).expanduser() / "data" / f"cifar_mosaic-{digest}"
        voc = base / "VOCdevkit" / "VOC2007"
        if (base / "done").is_file():
            return voc
        with file_lock(base.with_suffix(".lock")):
            if (base / "done").is_file():
                return voc
            shutil.rmtree(base, ignore_errors=True)  # a half-written one from a killed job
            for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
                (voc / sub).mkdir(parents=True, exist_ok=True)
            for image_set, train in (("trainval", True), ("test", False)):
                images, labels = _cifar(source, train)
                write_mosaic(images, labels, voc, image_set, spec["train" if train else "test"], spec)
            (base / "spec.json").write_text(json.dumps({**spec, "source": str(source)}, indent=1))
            (base / "done").write_text("")
        return voc

    def _load_datasets(self):
        voc = self.devkit()
        augment = self.data.box_augment
        return VocDetection(voc, "trainval", augment, self.classes), VocDetection(voc, "test", "none", self.classes)
