"""What the tests may and may not take from the world around them.

Two kinds of skip exist, and only one is allowed in CI (``CI=true``):

* **a branch not taken** (:func:`skip_branch`): the world offers only one
  of two conditions a behaviour depends on today (linux-kbuild's version
  equals the kernel's, or not; a release still in Debian's archive, or
  gone).  The test for the other condition says which one it saw.
* **something missing** (:func:`require`, or any other ``pytest.skip``):
  on a developer's machine a skip, in CI a failure, so a broken setup can
  never pass as green (``tests/conftest.py`` turns such skips into
  failures).
"""

import os
from pathlib import Path

import pytest

IN_CI = os.environ.get("CI") == "true"
SHARED = Path(__file__).resolve().parent.parent.parent / "shared"
CORPUS = SHARED / "conformance" / "kpatch-unit-x86_64"
BRANCH_NOT_TAKEN = "branch not taken: "


def skip_branch(reason: str) -> None:
    """Skip: the condition this test checks is not what the world offers today."""
    pytest.skip(BRANCH_NOT_TAKEN + reason)


def require(present: bool, what: str) -> None:
    """Skip (a failure in CI) unless *present*; *what* names what is missing."""
    if not present:
        pytest.skip(f"missing: {what}")


def is_branch_skip(reason: str) -> bool:
    return BRANCH_NOT_TAKEN in reason


def corpus_present() -> bool:
    return (CORPUS / "expectations.json").is_file()
