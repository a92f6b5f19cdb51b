"""Real stable-kernel fixes, built for the Debian kernel they fix and loaded in it.

A sample of the corpus of ``bench/real_fixes`` (see docs/real-fixes.md): each
patch under ``real_fixes/`` is one ``.c`` file's change between Debian's
linux-source-6.1 6.1.190-1 and 6.1.192-1, built here for
6.1.0-54-cloud-amd64 (Debian 6.1.190-1).  Each one either builds and loads
cleanly (for a module patch: with the target module loaded before the patch,
and again loaded after it) or is refused with a reason the author can act on.
"""

import subprocess
from pathlib import Path
from typing import Iterator

import pytest

from kpatch_build_support import Build, kernel_health, kpatch_build, load, unload, wait_for
from pykpatch.kernel.livepatch import SYSFS_LIVEPATCH
from pykpatch.provider.debian import DebianKernel
from pykpatch.testbed.vm import Guest
from world import skip_branch

RELEASE = "6.1.0-54-cloud-amd64"
SOURCE_VERSION = "6.1.190-1"  # the Debian version whose source the patches apply to
FIXES = Path(__file__).parent / "real_fixes"

# patch file -> where it goes (vmlinux or the module's name)
LOADS = {
    "fs-userfaultfd.patch": "vmlinux",        # references gcc .LC constants (copied, never twins)
    "fs-dcache.patch": "vmlinux",
    "mm-mlock.patch": "vmlinux",
    "net-bridge-br_arp_nd_proxy.patch": "bridge",   # .LC constants in a module
    "fs-erofs-xattr.patch": "erofs",
    "net-sched-sch_pie.patch": "sch_pie",
    "fs-btrfs-tree-log.patch": "btrfs",  # fill_inode_item is in two files of btrfs.ko
    "drivers-nvme-host-core.patch": "vmlinux",  # calls an export of namespace NVME_TARGET_PASSTHRU
}

# patch file -> a substring of the refusal (or of "no change")
REFUSED = {
    "net-ipv4-ipmr.patch": "ip_mr_init: changed __init code",
    "net-netlink-genetlink.patch": "struct ctrl_dump_policy_ctx changes layout",
    "net-openvswitch-conntrack.patch": "uses a key that lives in module openvswitch",
    "net-ipv4-tcp_cong.patch": "no change: the patch changes no function",
    "arch-x86-pci-fixup.patch": ".pci_fixup_final: entries changed (added for quirk_tuxeo_rp_d3)",
}


@pytest.fixture(scope="module")
def kernel54() -> DebianKernel:
    """The kernel the corpus was made for, while the archive (or the cache) has it."""
    kernel = DebianKernel(RELEASE, version=SOURCE_VERSION)
    if not kernel.in_archive():
        skip_branch(f"{RELEASE} has left Debian's archive; the corpus was made for it")
    if kernel.packages.version != SOURCE_VERSION:
        skip_branch(f"{RELEASE} is now Debian {kernel.packages.version}; the corpus was made "
                    f"from {SOURCE_VERSION}")
    return kernel


@pytest.fixture(scope="module")
def guest54(kernel54: DebianKernel, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Guest]:
    """The 6.1.0-54 kernel booted once for this file (fast mode)."""
    with Guest(kernel54, workdir=tmp_path_factory.mktemp("guest54")) as g:
        yield g


@pytest.fixture
def healthy54(guest54: Guest) -> Iterator[Guest]:
    guest54.check("dmesg -C")
    yield guest54
    assert kernel_health(guest54) == {"bad_dmesg": [], "unexpected_taint": 0}


def _loaded(guest: Guest, module: str) -> bool:
    return module in guest.check("cut -d' ' -f1 /proc/modules").split()


def _exercise_with_module(guest: Guest, b: Build, module: str) -> None:
    """Target loaded before the patch, then loaded after it; patched both times."""
    patched = f"{SYSFS_LIVEPATCH}/{b.name}/{module}/patched"
    guest.check(f"modprobe {module}")
    load(guest, b)
    assert guest.check(f"cat {patched}").strip() == "1"
    unload(guest, b)
    guest.check(f"modprobe -r {module}")
    assert not _loaded(guest, module)
    load(guest, b)
    guest.check(f"modprobe {module}")
    wait_for(guest, f"[ $(cat {SYSFS_LIVEPATCH}/{b.name}/transition) = 0 ]")
    assert guest.check(f"cat {patched}").strip() == "1"
    unload(guest, b)
    guest.check(f"modprobe -r {module}")


@pytest.fixture(scope="module")
def built54(tmp_path_factory: pytest.TempPathFactory):
    """kpatch-build of one sample patch, once per module."""
    cache = {}

    def build(patch: str) -> Build:
        if patch not in cache:
            cache[patch] = kpatch_build(RELEASE, tmp_path_factory.mktemp("rf"), [FIXES / patch])
        return cache[patch]

    return build


@pytest.mark.parametrize("patch", sorted(LOADS))
def test_real_fix_builds_and_loads_cleanly(patch: str, built54, healthy54: Guest) -> None:
    b = built54(patch)
    assert b.rc == 0, f"kpatch-build failed:\n{b.stderr}"
    assert {o["target"] for o in b.report["objects"]} == {LOADS[patch]}
    assert b.functions(patched_only=True)
    if LOADS[patch] == "vmlinux":
        load(healthy54, b)
        unload(healthy54, b)
    else:
        _exercise_with_module(healthy54, b, LOADS[patch])


@pytest.mark.parametrize("patch", sorted(REFUSED))
def test_real_fix_is_refused_with_its_reason(patch: str, kernel54: DebianKernel,
                                             tmp_path: Path) -> None:
    b = kpatch_build(RELEASE, tmp_path, [FIXES / patch])
    assert b.rc == 1
    assert "Traceback" not in b.stderr
    assert REFUSED[patch] in b.stderr
    assert not list(tmp_path.glob("*.ko"))


def test_same_named_module_function_is_told_apart_by_the_debug_module(
        built54, kernel54: DebianKernel) -> None:
    # btrfs.ko has a static fill_inode_item in inode.c and another in
    # tree-log.c; the shipped module has no FILE symbols to tell them apart.
    b = built54("fs-btrfs-tree-log.patch")
    assert b.rc == 0, b.stderr
    assert "using its debug module" in b.stderr
    [func] = [f for o in b.report["objects"] for f in o["functions"]
              if f["name"] == "fill_inode_item"]
    assert func["sympos"] == _rank_in_file(kernel54, "fs/btrfs/btrfs.ko", "fill_inode_item",
                                           "tree-log.c")


def _rank_in_file(kernel: DebianKernel, module: str, name: str, source_file: str) -> int:
    """1-based rank by address of the *name* defined after FILE *source_file*."""
    debug = kernel.debug_module(kernel.modules_dir / "kernel" / module)
    text = subprocess.run(["readelf", "-sW", str(debug)], capture_output=True, text=True,
                          check=True).stdout
    current, found = None, []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 8 and fields[3] == "FILE":
            current = fields[7]
        elif len(fields) >= 8 and fields[7] == name and fields[3] == "FUNC":
            found.append((int(fields[1], 16), current))
    assert len(found) > 1, found
    ranked = sorted(found)
    return 1 + ranked.index(next(f for f in found if f[1] == source_file))
