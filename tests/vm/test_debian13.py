"""Debian 13's kernel (6.12, gcc-14), built from this Debian 12 host in a
trixie build root and loaded in a trixie guest.

The release is Debian 13's pinned cloud kernel while the archive has it,
else the newest of its line (each test's output names it).  The patches are
the 6.1 tests' own where they apply to 6.12 unchanged.
"""

import subprocess
from typing import Iterator

import pytest

from kpatch_build_support import (
    EXAMPLES, PATCHES, Build, kernel_health, kpatch_build, load, unload,
)
from pykpatch.build.target import module_dependencies
from pykpatch.kernel.livepatch import SYSFS_LIVEPATCH
from pykpatch.provider.debian import TRIXIE_RELEASE, DebianKernel, preferred_release
from pykpatch.testbed.vm import Guest


@pytest.fixture(scope="module")
def trixie() -> DebianKernel:
    kernel = DebianKernel(preferred_release(TRIXIE_RELEASE))
    print(f"Debian 13 kernel: {kernel.release.release} (Debian {kernel.packages.version})")
    return kernel


@pytest.fixture(scope="module")
def trixie_guest(trixie: DebianKernel, tmp_path_factory) -> Iterator[Guest]:
    with Guest(trixie, workdir=tmp_path_factory.mktemp("trixie")) as guest:
        yield guest


@pytest.fixture(scope="module")
def built13(trixie, tmp_path_factory):
    cache = {}

    def build(name: str) -> Build:
        if name not in cache:
            path = EXAMPLES / name if (EXAMPLES / name).exists() else PATCHES / name
            out = tmp_path_factory.mktemp("kb13")
            cache[name] = kpatch_build(trixie.release.release, out, [path])
            assert cache[name].rc == 0, f"kpatch-build failed:\n{cache[name].stderr}"
        return cache[name]

    return build


@pytest.fixture
def healthy13(trixie_guest: Guest) -> Iterator[Guest]:
    trixie_guest.check("dmesg -C")
    yield trixie_guest
    assert kernel_health(trixie_guest) == {"bad_dmesg": [], "unexpected_taint": 0}


def test_the_guest_runs_debian_13s_kernel(trixie, trixie_guest):
    assert trixie_guest.check("uname -r").strip() == trixie.release.release
    assert trixie_guest.check("cut -d. -f1 /etc/debian_version").strip() == "13"


def test_string_change_in_proc_cmdline(built13, healthy13):
    guest, b = healthy13, built13("cmdline-string.patch")
    before = guest.check("cat /proc/cmdline")
    load(guest, b)
    assert guest.check("cat /proc/cmdline") == before.rstrip("\n") + " pykpatch=live\n"
    unload(guest, b)
    assert guest.check("cat /proc/cmdline") == before
    assert b.functions() == ["cmdline_proc_show"]


def test_static_functions_through_klp_relocations(built13, healthy13):
    guest, b = healthy13, built13("meminfo-klp.patch")
    symbols = subprocess.run(["readelf", "-sW", str(b.module)], capture_output=True, text=True,
                             check=True).stdout
    assert "[0xff20] .klp.sym.vmlinux.si_swapinfo,0" in symbols
    total_swap = guest.check("awk '/^SwapTotal/ {print $2}' /proc/meminfo").strip()
    load(guest, b)
    assert guest.check("awk '/^PykpatchSwap/ {print $2}' /proc/meminfo").strip() == total_swap
    unload(guest, b)
    assert "PykpatchSwap" not in guest.check("cat /proc/meminfo")


def test_new_function(built13, healthy13):
    guest, b = healthy13, built13("new-function.patch")
    load(guest, b)
    assert guest.check("cat /proc/version").endswith("pykpatch: new function\n")
    unload(guest, b)
    assert "pykpatch" not in guest.check("cat /proc/version")


def test_changed_static_syscall_body_is_carried_by_its_callers(built13, healthy13):
    guest, b = healthy13, built13("syscall-uname.patch")
    load(guest, b)
    assert guest.check("uname -s").strip() == "pykpatch"
    unload(guest, b)
    assert guest.check("uname -s").strip() == "Linux"


def test_module_patch_loads_before_its_target_and_the_module_it_calls(trixie, built13,
                                                                        healthy13):
    guest, b = healthy13, built13("module-nfsd-sunrpc.patch")
    depends = subprocess.run(["modinfo", "-F", "depends", str(b.module)], capture_output=True,
                             text=True, check=True).stdout.strip()
    assert depends == ""
    before = set(guest.check("cut -d' ' -f1 /proc/modules").split())
    assert not {"nfsd", "sunrpc"} & before
    load(guest, b)
    assert guest.check("cat /proc/cmdline").rstrip("\n").endswith(" pykpatch=nfsd")
    guest.check("modprobe nfsd")
    loaded = set(guest.check("cut -d' ' -f1 /proc/modules").split()) - before - {b.name}
    assert loaded == {"nfsd"} | module_dependencies(trixie.modules_dir, "nfsd")
    assert guest.check(f"cat {SYSFS_LIVEPATCH}/{b.name}/nfsd/patched").strip() == "1"
    assert "pykpatch nfsd stats" in guest.check("cat /proc/net/rpc/nfsd")
    unload(guest, b)
    assert "pykpatch nfsd stats" not in guest.check("cat /proc/net/rpc/nfsd")
    guest.check("modprobe -r nfsd")
