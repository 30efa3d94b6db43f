"""Task registry: ``create_task(cfg)`` builds the task named by ``cfg.task.name``."""
from __future__ import annotations

from tasks.base import Task


def _registry() -> dict[str, type[Task]]:
    from tasks.cifar import Cifar10ResNet56Task, Cifar100VGG16Task
    from tasks.digits import DigitsTask
    from tasks.images import Cub200Task, ImageNetTask
    from tasks.voc import VocSegmentationTask

    return {t.name: t for t in (DigitsTask, Cifar10ResNet56Task, Cifar100VGG16Task, ImageNetTask, Cub200Task,
                                VocSegmentationTask)}


def create_task(cfg) -> Task:
    tasks = _registry()
    name = cfg.task.name
    if name not in tasks:
        raise KeyError(f"no task class named {name!r}; known: {', '.join(sorted(tasks))}")
    return tasks[name](cfg)
