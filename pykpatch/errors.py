"""The one exception type a user sees.

Library code raises :class:`KpatchError` (or a subclass naming the stage);
only the command-line front ends catch it, print its message on one line and
exit with :attr:`KpatchError.exit_code`.  Nothing else is meant for users:
any other exception escaping to the CLI is a bug and keeps its traceback.
"""

from typing import Optional


class KpatchError(Exception):
    """A failure the user can act on; the message says what and what to do."""

    exit_code = 1

    def __init__(self, message: str, *, log: Optional[str] = None) -> None:
        super().__init__(message)
        self.log = log

    def __str__(self) -> str:
        text = super().__str__()
        if self.log:
            text += f" (log: {self.log})"
        return text


class InputError(KpatchError):
    """The input itself is unusable: a missing file, garbage, wrong machine."""

    exit_code = 2


class Refusal(KpatchError):
    """The change is understood but cannot be live patched safely."""

    exit_code = 1
