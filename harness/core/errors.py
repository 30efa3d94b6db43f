"""Errors a user can fix. The CLI prints them as one line, without a traceback."""

from typing import NoReturn


class HarnessError(Exception):
    exit_code = 1


class ConfigError(HarnessError):
    """Bad command line or configuration: an unknown name or key, a value out of range."""

    exit_code = 2


class DataError(HarnessError):
    """A dataset that is missing or malformed."""

    exit_code = 3


class NumericalError(HarnessError):
    """The loss became NaN or infinite."""

    exit_code = 4


class RunBusy(HarnessError):
    """Another process is running the same configuration now (it holds the run's lock)."""

    exit_code = 8


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler's kill or preemption, or torchrun stopping the survivors of a dead rank):
    unwinds like Ctrl-C, so the run's checkpoint is kept for the next attempt."""


def raise_terminated(signum: int, frame: object) -> NoReturn:
    """A SIGTERM handler: unwind as ``Terminated``."""
    raise Terminated(f"signal {signum}")
