"""The object differ: original + patched object -> livepatch object.

See docs/differ.md.  Library entry point: :func:`diff_objects`.
"""

from pykpatch.differ.driver import DiffResult, Outcome, diff_objects
from pykpatch.differ.state import Options

__all__ = ["DiffResult", "Options", "Outcome", "diff_objects"]
