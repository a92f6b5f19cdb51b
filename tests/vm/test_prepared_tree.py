"""The prepared source tree of the Debian kernel and the object index made with it.

A new tree lists its objects while ``modules_prepare`` runs, and builds
single objects without remaking ``prepare``; these tests check that neither
shortcut changes what the build sees.  No guest is booted.
"""

import subprocess
from pathlib import Path

import pytest

from pykpatch.build.compile import compile_objects
from pykpatch.build.objindex import parse_make_dry_run
from pykpatch.build.target import prepared_tree
from pykpatch.build.workspace import PatchedTree

# Files `prepare` makes that are compiled with KCFLAGS themselves.
PREPARE_OUTPUTS = ("arch/x86/kernel/asm-offsets.s", "kernel/bounds.s", "scripts/mod/empty.o",
                   "scripts/mod/modpost")


@pytest.fixture(scope="module")
def tree_and_index(kernel):
    return prepared_tree(kernel, jobs=2)


def test_objects_listed_during_preparation_are_those_of_the_finished_tree(kernel, tree_and_index):
    tree, index = tree_and_index
    # The plain, one-job dry run of the finished tree, as a user would type it.
    proc = subprocess.run(["make", "-n", "-k", *kernel.make_args(), "vmlinux", "modules"],
                          cwd=tree, capture_output=True, text=True)
    expected = parse_make_dry_run(proc.stdout)
    assert len(expected) > 4000
    assert index.objects == expected


def test_resolve_btfids_is_not_built(tree_and_index):
    tree, _ = tree_and_index
    assert (tree / "tools/objtool/objtool").is_file()
    assert not (tree / "tools/bpf/resolve_btfids/resolve_btfids").exists()


def test_compiling_with_other_flags_leaves_prepare_alone(kernel, tree_and_index, tmp_path):
    tree, index = tree_and_index
    before = {f: (tree / f).stat().st_mtime_ns for f in PREPARE_OUTPUTS}
    obj = index.for_source("fs/proc/cmdline.c")
    with PatchedTree(tree, [], tmp_path / "build.log"):
        for flag in ("-DPYKPATCH_TEST_A", "-DPYKPATCH_TEST_B"):
            built = compile_objects(tree, kernel.make_args(), [obj], tmp_path / flag.lstrip("-"), jobs=2,
                                    extra_cflags=flag, logfile=tmp_path / "build.log",
                                    what="test")
            assert Path(built[obj.obj]).stat().st_size > 0
            assert flag in (tree / "fs/proc/.cmdline.o.cmd").read_text()
    assert {f: (tree / f).stat().st_mtime_ns for f in PREPARE_OUTPUTS} == before
