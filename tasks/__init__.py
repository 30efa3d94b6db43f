"""Tasks: each registers itself with ``@register_task`` (tasks/base.py) and is found by discovery (every
module here, then the ``harness.tasks`` entry points). ``create_task(cfg)`` builds the one ``cfg.task.name`` names."""

from __future__ import annotations

from tasks.base import TASKS, Task, register_task  # noqa: F401


def create_task(cfg) -> Task:
    return TASKS.get(cfg.task.name)(cfg)
