"""Real stable-kernel fixes, built for the Debian kernel they fix and loaded in it.

Samples of the corpora of ``bench/real_fixes`` (docs/real-fixes.md,
docs/real-fixes-6.12.md): each patch is one ``.c`` file's change between two
Debian versions of linux-source, built here for the kernel made from the
older one.  Each either builds and loads cleanly (a module patch: with the
target module loaded before the patch, and again loaded after it) or is
refused with a reason the author can act on.  Test ids start with the line.
"""

import subprocess
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterator

import pytest

from kpatch_build_support import (
    Build, exercise_module_patch, kernel_health, kpatch_build, load, unload,
)
from pykpatch.provider.debian import DebianKernel
from pykpatch.testbed.vm import Guest
from world import skip_branch

FIXES = Path(__file__).parent / "real_fixes"


@dataclass(frozen=True)
class Corpus:
    release: str
    source_version: str  # the Debian version whose source the patches apply to
    fixes: Path
    loads: Dict[str, str] = field(default_factory=dict)    # patch -> vmlinux or module name
    refused: Dict[str, str] = field(default_factory=dict)  # patch -> part of the refusal


CORPORA = {
    "6.1": Corpus("6.1.0-54-cloud-amd64", "6.1.190-1", FIXES, loads={
        "fs-userfaultfd.patch": "vmlinux",        # references gcc .LC constants (copied, never twins)
        "fs-dcache.patch": "vmlinux",
        "mm-mlock.patch": "vmlinux",
        "net-bridge-br_arp_nd_proxy.patch": "bridge",   # .LC constants in a module
        "fs-erofs-xattr.patch": "erofs",
        "net-sched-sch_pie.patch": "sch_pie",
        "fs-btrfs-tree-log.patch": "btrfs",  # fill_inode_item is in two files of btrfs.ko
        "drivers-nvme-host-core.patch": "vmlinux",  # calls an export of namespace NVME_TARGET_PASSTHRU
    }, refused={
        "net-ipv4-ipmr.patch": "ip_mr_init: changed __init code",
        "net-netlink-genetlink.patch": "struct ctrl_dump_policy_ctx changes layout",
        "net-openvswitch-conntrack.patch": "uses a key that lives in module openvswitch",
        "net-ipv4-tcp_cong.patch": "no change: the patch changes no function",
        "arch-x86-pci-fixup.patch": ".pci_fixup_final: entries changed (added for quirk_tuxeo_rp_d3)",
    }),
    "6.12": Corpus("6.12.117+deb13-cloud-amd64", "6.12.117-1", FIXES / "6.12", loads={
        "mm-gup.patch": "vmlinux",             # access_ok(): the USER_PTR_MAX runtime constant
        "fs-proc-task_mmu.patch": "vmlinux",   # an ioctl with user copies
        "net-ipv4-route.patch": "vmlinux",
        "arch-x86-kernel-nmi.patch": "vmlinux",  # a .part function and its .cold part
        "block-bsg.patch": "vmlinux",          # an unchanged .cold part comes with its parent
        "fs-fat-inode.patch": "fat",
        "drivers-net-veth.patch": "veth",
    }, refused={
        "drivers-md-dm-bufio.patch": "uses a key that lives in module dm_bufio",
        "fs-xfs-xfs_discard.patch": "struct xfs_trim_cur changes layout",
        "drivers-nvme-host-tcp.patch": "__param: entries changed (added for tls_handshake_timeout_ops)",
    }),
}
LOAD_CASES = [(line, patch) for line, c in CORPORA.items() for patch in sorted(c.loads)]
REFUSED_CASES = [(line, patch) for line, c in CORPORA.items() for patch in sorted(c.refused)]


def _ids(cases):
    return [f"{line}/{patch}" for line, patch in cases]


@pytest.fixture(scope="module")
def corpus_kernel() -> Callable[[str], DebianKernel]:
    """The kernel a corpus was made for, while the archive (or the cache) has it."""
    kernels: Dict[str, DebianKernel] = {}

    def kernel_of(line: str) -> DebianKernel:
        corpus = CORPORA[line]
        if line not in kernels:
            kernels[line] = DebianKernel(corpus.release, version=corpus.source_version)
        kernel = kernels[line]
        if not kernel.in_archive():
            skip_branch(f"{corpus.release} has left Debian's archive; the corpus was made for it")
        if kernel.packages.version != corpus.source_version:
            skip_branch(f"{corpus.release} is now Debian {kernel.packages.version}; the corpus "
                        f"was made from {corpus.source_version}")
        return kernel

    return kernel_of


@pytest.fixture(scope="module")
def corpus_guest(corpus_kernel, tmp_path_factory) -> Iterator[Callable[[str], Guest]]:
    """The guest of one line at a time (the cases are grouped by line)."""
    with ExitStack() as stack:
        booted: Dict[str, Guest] = {}

        def guest_of(line: str) -> Guest:
            if line not in booted:
                stack.close()
                booted.clear()
                booted[line] = stack.enter_context(Guest(
                    corpus_kernel(line), workdir=tmp_path_factory.mktemp(f"guest{line}")))
            guest = booted[line]
            guest.check("dmesg -C")
            return guest

        yield guest_of


@pytest.fixture(scope="module")
def built_fix(corpus_kernel, tmp_path_factory):
    """kpatch-build of one sample patch, once per module."""
    cache: Dict[tuple, Build] = {}

    def build(line: str, patch: str) -> Build:
        if (line, patch) not in cache:
            corpus = CORPORA[line]
            corpus_kernel(line)
            cache[line, patch] = kpatch_build(corpus.release, tmp_path_factory.mktemp("rf"),
                                              [corpus.fixes / patch])
        return cache[line, patch]

    return build


@pytest.mark.parametrize("line,patch", LOAD_CASES, ids=_ids(LOAD_CASES))
def test_real_fix_builds_and_loads_cleanly(line: str, patch: str, built_fix,
                                           corpus_guest) -> None:
    target = CORPORA[line].loads[patch]
    b = built_fix(line, patch)
    assert b.rc == 0, f"kpatch-build failed:\n{b.stderr}"
    assert {o["target"] for o in b.report["objects"]} == {target}
    assert b.functions(patched_only=True)
    guest = corpus_guest(line)
    if target == "vmlinux":
        load(guest, b)
        unload(guest, b)
    else:
        exercise_module_patch(guest, b, target)
    assert kernel_health(guest) == {"bad_dmesg": [], "unexpected_taint": 0}


@pytest.mark.parametrize("line,patch", REFUSED_CASES, ids=_ids(REFUSED_CASES))
def test_real_fix_is_refused_with_its_reason(line: str, patch: str, corpus_kernel,
                                             tmp_path: Path) -> None:
    corpus = CORPORA[line]
    corpus_kernel(line)
    b = kpatch_build(corpus.release, tmp_path, [corpus.fixes / patch])
    assert b.rc == 1
    assert "Traceback" not in b.stderr
    assert corpus.refused[patch] in b.stderr
    assert not list(tmp_path.glob("*.ko"))


def test_same_named_module_function_is_told_apart_by_the_debug_module(
        built_fix, corpus_kernel) -> None:
    # btrfs.ko has a static fill_inode_item in inode.c and another in
    # tree-log.c; the shipped module has no FILE symbols to tell them apart.
    kernel54 = corpus_kernel("6.1")
    b = built_fix("6.1", "fs-btrfs-tree-log.patch")
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
