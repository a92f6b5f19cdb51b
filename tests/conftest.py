"""Shared test setup: the repo root, the shared corpus, the VM switch, and
CI's rule that only a branch not taken may skip (see world.py)."""

import os
from pathlib import Path

import pytest

from world import CORPUS, IN_CI, SHARED, corpus_present, is_branch_skip, require

REPO = Path(__file__).resolve().parent.parent


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--vm", action="store_true", default=False,
                     help="also run the VM tests (boot the real Debian kernel in QEMU)")


def pytest_collection_modifyitems(config: pytest.Config, items: list) -> None:
    if config.getoption("--vm") or os.environ.get("PYKPATCH_VM_TESTS") == "1":
        return
    skip = pytest.mark.skip(reason="VM test: run with --vm (or PYKPATCH_VM_TESTS=1)")
    for item in items:
        if "vm" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


def pytest_configure(config: pytest.Config) -> None:
    if IN_CI and not corpus_present():
        raise pytest.UsageError(f"CI=true but kpatch's conformance corpus is missing: {CORPUS} "
                                "(shared/ must lie beside the clone)")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """In CI, a skip for anything but a branch not taken is a failure."""
    outcome = yield
    report = outcome.get_result()
    if IN_CI and report.skipped and not hasattr(report, "wasxfail"):
        reason = str(report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr)
        if not is_branch_skip(reason):
            report.outcome = "failed"
            report.longrepr = f"CI=true, and this test skipped: {reason}"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    require(SHARED.is_dir(), f"shared/ beside the repository ({SHARED})")
    return SHARED


@pytest.fixture(autouse=True)
def _isolated_logger():
    """Commands under test set up the pykpatch logger; give each test a fresh one."""
    import logging

    logger = logging.getLogger("pykpatch")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    logger.handlers[:] = []
    logger.propagate = True
    yield
    logger.handlers[:], logger.level, logger.propagate = saved[0], saved[1], saved[2]
