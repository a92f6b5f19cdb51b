"""Failures of the patch-management commands, each with its exit code.

The one-line message says what happened and what to do; ``details`` holds
the evidence (dmesg lines, the tasks that blocked a transition), which the
CLI prints below that line.
"""

from typing import Iterable, Optional

from pykpatch.errors import KpatchError


class ManageError(KpatchError):
    """A failure with supporting lines (kernel log, stalled tasks)."""

    def __init__(self, message: str, details: Iterable[str] = (), *,
                 log: Optional[str] = None) -> None:
        super().__init__(message, log=log)
        self.details = list(details)


class LoadError(ManageError):
    """The kernel refused the module; nothing was loaded."""


class TransitionTimeout(ManageError):
    """The transition did not finish in time; it was reversed, the kernel is as before."""

    exit_code = 3


class TransitionStuck(ManageError):
    """Even the reversal did not finish: the kernel is still in transition."""

    exit_code = 4


class Interrupted(ManageError):
    """Interrupted by the user; the transition was reversed."""

    exit_code = 130


class NotRoot(KpatchError):
    """The command changes the kernel and needs root."""
