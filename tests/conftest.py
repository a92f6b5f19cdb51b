"""Shared test setup: the repo root, the shared corpus, and the VM switch."""

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"


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


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"shared/ is not beside the repository ({SHARED})")
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
