"""A run as a pipeline: each phase is a function of the ``RunState`` in a module of its own, resumable from
the checkpoint stage named after it (harness/checkpoint.py)."""

from harness.phases import baseline, finetune, measure, prune, record
from harness.phases.state import RunState

PHASES = (baseline.baseline, prune.prune, finetune.finetune, measure.measure, record.record)

__all__ = ["PHASES", "RunState"]
