"""Task registry: ``create_task(cfg)`` builds the task named by ``cfg.task.name``."""
from __future__ import annotations

from tasks.base import Task


def _registry() -> dict[str, type[Task]]:
    from tasks.cifar import Cifar10ResNet56Task
    from tasks.digits import DigitsTask

    return {t.name: t for t in (DigitsTask, Cifar10ResNet56Task)}


def create_task(cfg) -> Task:
    tasks = _registry()
    name = cfg.task.name
    if name not in tasks:
        raise KeyError(f"no task class named {name!r}; known: {', '.join(sorted(tasks))}")
    return tasks[name](cfg)
