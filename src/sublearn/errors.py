"""What can go wrong, by whose fault: the CLI turns each kind into one line and an exit status."""

from __future__ import annotations

from typing import Any


class UsageError(ValueError):
    """Invalid user input. The CLI prints it as one line and exits with status 2 before any compute."""


class Fault(RuntimeError):
    """A failure that is not the user's input (the CLI exits with status 1 and one line naming it)."""


class Diverged(Fault):
    """Training produced a non-finite loss: the run has no meaningful result."""


def bad_value(flag: str, value: Any, allowed: str) -> UsageError:
    return UsageError(f"{flag}: invalid value {value!r}; {allowed}")
