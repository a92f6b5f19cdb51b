"""What Debian's archive offers today, taken at run time.

The archive moves on: security updates bring a new ABI every few weeks, and
old ones leave.  These tests pick releases when they run (never a version
written here) and check that the newest release of the line works end to
end, and that what the build reads of the shipped modules agrees with
modinfo(8).  The release each test used is in its output (``-rA``).
"""

import subprocess
from typing import Iterator

import pytest

from kpatch_build_support import EXAMPLES, kernel_health, kpatch_build, load, unload
from pykpatch.build.target import module_dependencies
from pykpatch.manage.modinfo import read_module_info
from pykpatch.provider.debian import DEFAULT_RELEASE, DebianKernel, newest_release
from pykpatch.testbed.vm import Guest


@pytest.fixture(scope="module")
def newest() -> DebianKernel:
    kernel = DebianKernel(newest_release())
    print(f"newest release of the line of {DEFAULT_RELEASE}: {kernel.release.release} "
          f"(Debian {kernel.packages.version})")
    return kernel


@pytest.fixture(scope="module")
def newest_guest(newest: DebianKernel, tmp_path_factory) -> Iterator[Guest]:
    with Guest(newest, workdir=tmp_path_factory.mktemp("newest")) as guest:
        yield guest


def test_the_newest_release_builds_and_loads_a_patch(newest, newest_guest, tmp_path):
    release = newest.release.release
    built = kpatch_build(release, tmp_path, [EXAMPLES / "cmdline-string.patch"])
    assert built.rc == 0, f"{release}: {built.stderr}"
    guest = newest_guest
    assert guest.check("uname -r").strip() == release
    before = guest.check("cat /proc/cmdline")
    guest.check("dmesg -C")
    load(guest, built)
    assert guest.check("cat /proc/cmdline") == before.rstrip("\n") + " pykpatch=live\n"
    unload(guest, built)
    assert guest.check("cat /proc/cmdline") == before
    assert kernel_health(guest) == {"bad_dmesg": [], "unexpected_taint": 0}


def _modinfo(path, field: str) -> str:
    return subprocess.run(["modinfo", "-F", field, str(path)], check=True, capture_output=True,
                          text=True).stdout.rstrip("\n")


def test_shipped_modules_read_as_modinfo_reads_them(kernel):
    modules = sorted((kernel.modules_dir / "kernel/fs").rglob("*.ko"))[:6]
    assert len(modules) == 6
    for path in modules:
        info = read_module_info(path)
        assert info.name == _modinfo(path, "name")
        assert info.vermagic == _modinfo(path, "vermagic")
        assert not info.is_livepatch
        assert info.build_id is not None


def test_module_dependencies_follow_depends_transitively(kernel):
    found = module_dependencies(kernel.modules_dir, "nfsv4")
    direct = set(_modinfo(kernel.modules_dir / "kernel/fs/nfs/nfsv4.ko", "depends").split(","))
    assert direct < found
    assert {"lockd", "grace"} <= found - direct  # through nfs
    assert module_dependencies(kernel.modules_dir, "binfmt_misc") == frozenset()
