"""Fixtures that boot the real Debian kernel in QEMU (tests marked ``vm``).

The kernel packages, the prepared tree and the guest image live in the
pykpatch cache (``$PYKPATCH_CACHE`` or ``~/.cache/pykpatch``) and are reused
between runs.
"""

import subprocess
import sys
from pathlib import Path
from typing import Callable, Iterator

import pytest

from pykpatch.build.kbuild import build_external_module
from pykpatch.provider.debian import DebianKernel
from pykpatch.testbed.vm import Guest

MODULES = Path(__file__).parent / "modules"


def pytest_collection_modifyitems(items: list) -> None:
    here = str(Path(__file__).parent)
    for item in items:
        if str(item.fspath).startswith(here):
            item.add_marker(pytest.mark.vm)


@pytest.fixture(scope="session")
def kernel() -> DebianKernel:
    return DebianKernel()


@pytest.fixture(scope="session")
def guest(kernel: DebianKernel, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Guest]:
    """A guest booted once for the session (fast mode: no systemd)."""
    with Guest(kernel, workdir=tmp_path_factory.mktemp("guest")) as g:
        yield g


@pytest.fixture(scope="module")
def systemd_guest(kernel: DebianKernel, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Guest]:
    """A guest with a full systemd boot, for tests of boot-time behaviour."""
    with Guest(kernel, mode="systemd", workdir=tmp_path_factory.mktemp("sguest")) as g:
        yield g


@pytest.fixture(scope="session")
def build_module(kernel: DebianKernel, tmp_path_factory: pytest.TempPathFactory
                 ) -> Callable[[Path], Path]:
    """Build an out-of-tree module (a directory with a Kbuild file) against the headers."""
    built = {}

    def build(src_dir: Path) -> Path:
        src_dir = Path(src_dir)
        if src_dir not in built:
            out = tmp_path_factory.mktemp("kmod") / src_dir.name
            built[src_dir] = build_external_module(kernel.headers_dir, src_dir, out,
                                                   logfile=out.parent / "build.log")[0]
        return built[src_dir]

    return build


@pytest.fixture(scope="session")
def pykpatch_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel of this checkout, as an administrator would install it."""
    out = tmp_path_factory.mktemp("wheel")
    repo = Path(__file__).resolve().parents[2]
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                    "--no-build-isolation", "-w", str(out), str(repo)], check=True)
    return next(out.glob("pykpatch-*.whl"))


def install_wheel(guest: Guest, wheel: Path) -> None:
    remote = guest.put(wheel, f"/tmp/{wheel.name}")
    guest.check(f"python3 -m pip install -q --no-deps --break-system-packages --force-reinstall {remote}",
                timeout=300)


@pytest.fixture(scope="session")
def guest_kpatch(guest: Guest, pykpatch_wheel: Path) -> Guest:
    """The session guest with pykpatch pip-installed, so `kpatch` is on its PATH."""
    install_wheel(guest, pykpatch_wheel)
    return guest


@pytest.fixture(scope="module")
def systemd_kpatch(systemd_guest: Guest, pykpatch_wheel: Path) -> Guest:
    """The systemd guest with pykpatch installed (as guest_kpatch is for the fast one)."""
    install_wheel(systemd_guest, pykpatch_wheel)
    return systemd_guest
