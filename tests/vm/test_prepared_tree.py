"""The prepared source tree of the Debian kernel and the object index made with it.

A new tree lists its objects while ``modules_prepare`` runs, builds single
objects without remaking ``prepare``, takes objtool from linux-kbuild instead
of building it, and reads a debug vmlinux whose DWARF was never unpacked;
these tests check that none of these shortcuts changes what the build sees.
No guest is booted.
"""

import subprocess
from pathlib import Path

import pytest

from pykpatch.build.compile import compile_objects
from pykpatch.build.objindex import parse_make_dry_run
from pykpatch.build.target import prepared_tree
from pykpatch.build.workspace import PatchedTree
from pykpatch.kernel import kbuild
from pykpatch.provider.debian import DebianKernel, newest_release
from world import skip_branch

# Files `prepare` makes that are compiled with KCFLAGS themselves.
PREPARE_OUTPUTS = ("arch/x86/kernel/asm-offsets.s", "kernel/bounds.s", "scripts/mod/empty.o",
                   "scripts/mod/modpost")


@pytest.fixture(scope="module")
def tree_and_index(kernel):
    return prepared_tree(kernel, jobs=2)


def test_objects_listed_during_preparation_are_those_of_the_finished_tree(kernel, tree_and_index):
    tree, index = tree_and_index
    # The plain, one-job dry run of the finished tree.  (Without -o, kbuild
    # would rebuild objtool, -n or not: see pykpatch.kernel.kbuild.)
    proc = subprocess.run(["make", "-n", "-k", *kernel.make_args(),
                           *kbuild.not_remade(kbuild.OBJTOOL_GOAL), "vmlinux", "modules"],
                          cwd=tree, capture_output=True, text=True)
    expected = parse_make_dry_run(proc.stdout)
    assert len(expected) > 4000
    assert index.objects == expected


def test_resolve_btfids_is_not_built(tree_and_index):
    tree, _ = tree_and_index
    assert (tree / "tools/objtool/objtool").is_file()
    assert not (tree / "tools/bpf/resolve_btfids/resolve_btfids").exists()


@pytest.fixture(scope="module", params=["pinned", "newest"])
def any_tree(request, kernel):
    """The pinned release's tree and the newest release's: today linux-kbuild
    is the version of only one of them, so both branches of objtool run."""
    chosen = kernel if request.param == "pinned" else DebianKernel(newest_release())
    return (chosen, *prepared_tree(chosen, jobs=2))


def _kbuild_is_the_kernels(kernel) -> bool:
    return kernel.packages.versions["kbuild"] == kernel.packages.version


def _versions(kernel) -> str:
    return (f"{kernel.release.release}: linux-kbuild-{kernel.release.series} "
            f"{kernel.packages.versions['kbuild']}, kernel packages {kernel.packages.version}")


def test_objtool_is_the_packaged_one_when_linux_kbuild_is_the_kernels_version(any_tree, tmp_path):
    kernel, tree, index = any_tree
    if not _kbuild_is_the_kernels(kernel):
        skip_branch(f"{_versions(kernel)}: objtool is built (see the next test)")
    packaged = kernel.headers_dir / "tools/objtool/objtool"  # (linux-kbuild's, through a link)
    assert (tree / "tools/objtool/objtool").read_bytes() == packaged.read_bytes()
    assert not (tree / "tools/objtool/check.o").exists()  # nothing of objtool compiled here
    # objtool built from this very source, outside the tree, as kbuild would build it.
    out = tmp_path / "built"
    (out / "tools").mkdir(parents=True)
    subprocess.run(["make", "-s", "-j2", "-C", tree / "tools", f"O={out}", "subdir=tools",
                    "HOSTPKG_CONFIG=pkg-config", "objtool"], check=True, capture_output=True)
    built = out / "tools/objtool/objtool"
    assert built.read_bytes() != packaged.read_bytes()  # (another binary, same behaviour)
    objects = [index.for_source(src) for src in ("fs/proc/cmdline.c",
                                                  "arch/x86/kernel/alternative.c")]
    results = {}
    with PatchedTree(tree, [], tmp_path / "build.log"):
        for name, override in (("packaged", []), ("built", [f"objtool={built}"])):
            results[name] = compile_objects(
                tree, [*kernel.make_args(), *override], objects, tmp_path / name, jobs=2,
                extra_cflags="-ffunction-sections -fdata-sections", logfile=tmp_path / "build.log",
                what=f"with the {name} objtool")
    for obj in objects:
        packaged_obj = Path(results["packaged"][obj.obj]).read_bytes()
        assert b".orc_unwind" in packaged_obj  # objtool did run
        assert packaged_obj == Path(results["built"][obj.obj]).read_bytes(), obj.obj


def test_objtool_is_built_from_the_tree_when_linux_kbuild_is_another_version(any_tree, tmp_path):
    kernel, tree, index = any_tree
    if _kbuild_is_the_kernels(kernel):
        skip_branch(f"{_versions(kernel)}: objtool is the packaged one (see the previous test)")
    packaged = kernel.headers_dir / "tools/objtool/objtool"
    in_tree = tree / "tools/objtool/objtool"
    assert (tree / "tools/objtool/check.o").is_file()  # kbuild compiled it here
    assert in_tree.read_bytes() != packaged.read_bytes()
    obj = index.for_source("fs/proc/cmdline.c")
    with PatchedTree(tree, [], tmp_path / "build.log"):
        built = compile_objects(tree, kernel.make_args(), [obj], tmp_path / "out", jobs=2,
                                extra_cflags="-ffunction-sections -fdata-sections",
                                logfile=tmp_path / "build.log", what="with the tree's objtool")
    assert b".orc_unwind" in Path(built[obj.obj]).read_bytes()  # objtool did run


def test_the_debug_vmlinux_has_what_the_build_reads_and_no_dwarf(kernel, tmp_path):
    lean = kernel.vmlinux
    # The packaged file in full, the slow way, to compare with.
    whole = tmp_path / "vmlinux"
    member = f"./usr/lib/debug/boot/vmlinux-{kernel.release.release}"
    with open(whole, "wb") as out:
        fsys = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", kernel.deb("dbg")],
                                stdout=subprocess.PIPE)
        subprocess.run(["tar", "-xO", member], stdin=fsys.stdout, stdout=out, check=True)
        fsys.stdout.close()
        assert fsys.wait() == 0
    assert lean.stat().st_size == whole.stat().st_size
    assert lean.stat().st_blocks * 512 < whole.stat().st_size / 5  # sparse: DWARF never written
    for args in (["-S"], ["-s"], ["-p", ".comment"]):
        assert _readelf(args, lean) == _readelf(args, whole), args
    for section in (".text", ".rodata", ".data", ".init.text", ".altinstructions", "__ex_table"):
        code = _section_bytes(lean, section, tmp_path)
        assert code and code == _section_bytes(whole, section, tmp_path), section


def _readelf(args, path):
    return subprocess.run(["readelf", "-W", *args, path], check=True, capture_output=True,
                          text=True).stdout


def _section_bytes(elf, section, tmp_path):
    dump = tmp_path / "section.bin"
    subprocess.run(["objcopy", "-O", "binary", f"--only-section={section}", elf, dump], check=True)
    return dump.read_bytes()
