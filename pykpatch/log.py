"""The one logger of pykpatch, set up once by whichever command runs."""

import logging
import sys

log = logging.getLogger("pykpatch")


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time of the message."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


class _Formatter(logging.Formatter):
    """``prog: message`` for information, ``prog: level: message`` otherwise."""

    def __init__(self, prog: str) -> None:
        super().__init__()
        self.prog = prog

    def format(self, record: logging.LogRecord) -> str:
        level = "" if record.levelno == logging.INFO else f"{record.levelname.lower()}: "
        return f"{self.prog}: {level}{record.getMessage()}"


def setup_logging(prog: str, debug: bool) -> None:
    """Send pykpatch's messages to stderr, prefixed with *prog*; debug ones only if asked."""
    handler = _StderrHandler()
    handler.setFormatter(_Formatter(prog))
    log.handlers[:] = [handler]
    log.setLevel(logging.DEBUG if debug else logging.INFO)
    log.propagate = False
