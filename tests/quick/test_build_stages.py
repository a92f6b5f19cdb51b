"""kpatch-build's stages that need no kernel: patches, the tree guard, object lists, layouts."""

import subprocess
from pathlib import Path

import pytest

from pykpatch.build.compile import compile_objects
from pykpatch.build.layout import layout_changes, parse_pahole
from pykpatch.build.module import module_name
from pykpatch.build.objindex import (IncompleteTree, KernelObject, check_nothing_missing,
                                     parse_make_dry_run)
from pykpatch.build.patchfile import refuse_unpatchable, touched_files
from pykpatch.build.target import custom_target
from pykpatch.build.workspace import BACKUP_DIR, JOURNAL, PatchedTree
from pykpatch.errors import InputError, KpatchError, Refusal

PATCH = """\
--- a/fs/proc/cmdline.c
+++ b/fs/proc/cmdline.c
@@ -1,3 +1,3 @@
 one
-two
+TWO
 three
--- /dev/null
+++ b/fs/proc/new.c
@@ -0,0 +1 @@
+created
"""


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "tree"
    (root / "fs/proc").mkdir(parents=True)
    (root / "fs/proc/cmdline.c").write_text("one\ntwo\nthree\n")
    return root


def write_patch(tmp_path: Path, text: str = PATCH, name: str = "fix.patch") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_touched_files_of_a_unified_diff():
    files = touched_files(PATCH)
    assert [(f.path, f.created, f.kind) for f in files] == [
        ("fs/proc/cmdline.c", False, "source"), ("fs/proc/new.c", True, "source")]


def test_text_that_is_not_a_diff_is_bad_input():
    with pytest.raises(InputError, match="not a unified diff"):
        touched_files("hello\n", "notes.txt")


def test_unpatchable_places_are_refused_all_at_once():
    text = "".join(f"--- a/{p}\n+++ b/{p}\n@@ -1 +1 @@\n-a\n+b\n"
                   for p in ("arch/x86/entry/entry_64.S", "arch/x86/boot/main.c", "fs/Makefile",
                             "fs/ok.c", "lib/seq_buf.c"))
    with pytest.raises(Refusal) as err:
        refuse_unpatchable(touched_files(text), "x.patch")
    message = str(err.value)
    assert "entry_64.S: assembly" in message and "arch/x86/boot/main.c" in message
    assert "fs/Makefile" in message and "fs/ok.c" not in message
    # lib.a members are not refused by path: the build checks vmlinux has them.
    assert "lib/seq_buf.c" not in message


def test_patch_applies_inside_the_block_and_is_gone_after(tmp_path, tree):
    with PatchedTree(tree, [write_patch(tmp_path)]) as pt:
        pt.apply()
        assert (tree / "fs/proc/cmdline.c").read_text() == "one\nTWO\nthree\n"
        assert (tree / "fs/proc/new.c").exists()
    assert (tree / "fs/proc/cmdline.c").read_text() == "one\ntwo\nthree\n"
    assert not (tree / "fs/proc/new.c").exists()
    assert not (tree / BACKUP_DIR).exists()


def test_an_error_inside_the_block_still_restores(tmp_path, tree):
    with pytest.raises(RuntimeError):
        with PatchedTree(tree, [write_patch(tmp_path)]) as pt:
            pt.apply()
            raise RuntimeError("compiler crashed")
    assert (tree / "fs/proc/cmdline.c").read_text() == "one\ntwo\nthree\n"


def test_second_patch_that_does_not_apply_undoes_the_first(tmp_path, tree):
    bad = write_patch(tmp_path, PATCH.replace("-two", "-zwei").split("--- /dev/null")[0], "bad.patch")
    with PatchedTree(tree, [write_patch(tmp_path), bad]) as pt:
        with pytest.raises(Refusal, match="bad.patch does not apply") as err:
            pt.apply()
        assert "FAILED" in str(err.value) or "Reversed" in str(err.value)
        assert (tree / "fs/proc/cmdline.c").read_text() == "one\ntwo\nthree\n"
        assert not (tree / "fs/proc/new.c").exists()


def test_a_killed_build_is_undone_by_the_next_one(tmp_path, tree):
    patch = write_patch(tmp_path)
    # Simulate a build killed with the patch applied: the journal stays behind.
    pt = PatchedTree(tree, [patch])
    pt._save_originals()
    subprocess.run(["patch", "-p1", "-s", "-i", str(patch)], cwd=tree, check=True)
    assert (tree / BACKUP_DIR / JOURNAL).exists()
    with PatchedTree(tree, []):
        assert (tree / "fs/proc/cmdline.c").read_text() == "one\ntwo\nthree\n"
        assert not (tree / "fs/proc/new.c").exists()


def test_restored_files_are_newer_than_objects_built_from_the_patch(tmp_path, tree):
    with PatchedTree(tree, [write_patch(tmp_path)]) as pt:
        pt.apply()
        obj = tree / "fs/proc/cmdline.o"
        obj.write_text("built from the patched text")
    assert (tree / "fs/proc/cmdline.c").stat().st_mtime >= obj.stat().st_mtime


MAKE_N = (
    "set -e;  echo '  CC      fs/proc/cmdline.o';  trap 'rm -f fs/proc/cmdline.o' HUP; "
    "gcc-12 -Wp,-MMD,fs/proc/.cmdline.o.d -nostdinc -I./include -O2 "
    "-DKBUILD_MODFILE='\"fs/proc/proc\"' -DKBUILD_BASENAME='\"cmdline\"' "
    "-DKBUILD_MODNAME='\"proc\"' -D__KBUILD_MODNAME=kmod_proc -c -o fs/proc/cmdline.o fs/proc/cmdline.c   ; "
    "./tools/objtool/objtool --orc fs/proc/cmdline.o\n"
    "set -e;  echo '  CC [M]  fs/ext4/super.o';  "
    "gcc-12 -Wp,-MMD,fs/ext4/.super.o.d -nostdinc -O2  -DMODULE  -DKBUILD_BASENAME='\"super\"' "
    "-DKBUILD_MODNAME='\"ext4\"' -D__KBUILD_MODNAME=kmod_ext4 -c -o fs/ext4/super.o fs/ext4/super.c   ; x\n"
    "set -e;  echo '  AR      fs/built-in.a'; ar cDPrST fs/built-in.a\n"
    "set -e;  echo '  CC      scripts/mod/empty.o';  "
    "gcc-12 -Wp,-MMD,scripts/mod/.empty.o.d -nostdinc -O2 -c -o scripts/mod/empty.o scripts/mod/empty.c ; x\n"
)


def test_objects_and_their_destination_come_from_kbuilds_dry_run():
    objects = parse_make_dry_run(MAKE_N)  # prepare's own scripts/mod/empty.o is not one of them
    assert set(objects) == {"fs/proc/cmdline.c", "fs/ext4/super.c"}
    assert objects["fs/proc/cmdline.c"].target == "vmlinux"
    assert objects["fs/ext4/super.c"].target == "ext4"
    assert objects["fs/ext4/super.c"].command.endswith("-c -o fs/ext4/super.o fs/ext4/super.c")


def _cc(obj: str, src: str) -> str:
    return (f"set -e;  echo '  CC      {obj}';  x86_64-linux-gnu-gcc-14 -Wp,-MMD,{obj}.d "
            f"-nostdinc -O2 -c -o {obj} {src} ; x\n")


@pytest.mark.parametrize("order", ["stub first", "stub last"])
def test_a_source_the_efi_stub_compiles_again_indexes_the_kernels_object(order):
    # 6.12's EFI stub builds lib/cmdline.c a second time, as
    # drivers/firmware/efi/libstub/lib-cmdline.o (boot code, no debug info).
    lines = [_cc("drivers/firmware/efi/libstub/lib-cmdline.o", "lib/cmdline.c"),
             _cc("lib/cmdline.o", "lib/cmdline.c")]
    objects = parse_make_dry_run("".join(lines if order == "stub first" else lines[::-1]))
    assert objects["lib/cmdline.c"].obj == "lib/cmdline.o"


NO_RULE = "make[3]: *** No rule to make target '{}', needed by '{}'.  Stop.\n"


def test_a_dry_run_that_could_not_reach_the_link_is_complete(tmp_path):
    check_nothing_missing(MAKE_N + NO_RULE.format("vmlinux.a", "vmlinux.o"), tmp_path)
    # 7.x: vmlinux.a is made by a sub-make, which has no rule for its archives
    for archive in ("built-in.a", "lib/lib.a", "arch/x86/lib/lib.a"):
        check_nothing_missing(MAKE_N + NO_RULE.format(archive, "vmlinux.a"), tmp_path)
    with pytest.raises(KpatchError, match="no rule for fs/built-in.a.o"):
        check_nothing_missing(MAKE_N + NO_RULE.format("fs/built-in.a.o", "x"), tmp_path)


def test_a_source_missing_from_the_dry_run_asks_for_the_whole_tree(tmp_path):
    text = MAKE_N + NO_RULE.format("drivers/gpu/drm/tiny/bochs.c", "drivers/gpu/drm/tiny/bochs.o")
    with pytest.raises(IncompleteTree) as missing:
        check_nothing_missing(text, tmp_path)
    assert missing.value.missing == ["drivers/gpu/drm/tiny/bochs.c"]


def test_a_host_tool_missing_from_the_dry_run_is_an_unprepared_tree(tmp_path):
    # Without selinux's genheaders, make skips every object needing flask.h
    # and prints nothing for them: an index made so would silently miss them.
    text = MAKE_N + NO_RULE.format("scripts/selinux/genheaders/genheaders",
                                   "security/selinux/flask.h")
    with pytest.raises(KpatchError, match="genheaders.*is the tree prepared") as error:
        check_nothing_missing(text, tmp_path)
    assert not isinstance(error.value, IncompleteTree)


@pytest.mark.parametrize("patches,name,expected", [
    (["fix.patch"], "", "livepatch-fix"),
    (["a.patch", "b.patch"], "", "livepatch-patch"),
    (["x.patch"], "my fix!", "my-fix-"),
    (["x.patch"], "n" * 80, "n" * 55),
])
def test_module_names_follow_kpatch(patches, name, expected):
    assert module_name([Path(p) for p in patches], name) == expected


PAHOLE_BEFORE = """struct pair {
\tint                        a;                    /*     0     4 */
\tint                        b;                    /*     4     4 */

\t/* size: 8, cachelines: 1, members: 2 */
};
struct other {
\tlong                       x;                    /*     0     8 */

\t/* size: 8, cachelines: 1, members: 1 */
};
"""


def test_pahole_layouts_are_parsed():
    layouts = parse_pahole(PAHOLE_BEFORE)
    assert layouts["struct pair"].key() == (8, [("a", 0, 4), ("b", 4, 4)])
    assert layouts["struct other"].size == 8


def test_a_moved_member_is_a_layout_change(tmp_path, monkeypatch):
    after = PAHOLE_BEFORE.replace("b;                    /*     4     4 */",
                                  "b;                    /*     8     4 */").replace("size: 8,", "size: 12,", 1)
    outputs = {"orig.o": PAHOLE_BEFORE, "patched.o": after}
    monkeypatch.setattr("pykpatch.build.layout.struct_layouts",
                        lambda p: parse_pahole(outputs[Path(p).name]))
    changes = layout_changes(Path("orig.o"), Path("patched.o"))
    assert len(changes) == 1
    assert changes[0].startswith("struct pair changes layout (size 8 -> 12; member 'b' moved "
                                 "from offset 4 to 8)")


@pytest.mark.parametrize("src, lib_reason", [
    ("lib/seq_buf.c", True), ("arch/x86/lib/misc.c", True),
    ("fs/proc/cmdline.c", False), ("drivers/lib/x.c", False),
])
def test_missing_function_of_a_library_object_says_it_is_not_linked(src, lib_reason):
    from pykpatch.build.objindex import KernelObject
    from pykpatch.build.pipeline import mismatch_reason
    from pykpatch.build.verify import Mismatch

    obj = KernelObject(src[:-2] + ".o", src, None, "gcc ...")
    missing = mismatch_reason(obj, Mismatch("f", "no function f in vmlinux", missing=True),
                              Path("/x/vmlinux"))
    differs = mismatch_reason(obj, Mismatch("f", "its code differs"), Path("/x/vmlinux"))
    assert ("lib.a members" in missing) is lib_reason
    assert ("does not match the running kernel" in missing) is not lib_reason
    assert "does not match the running kernel (its code differs)" in differs


PAHOLE_ATTRIBUTES = """struct tipc_crypto {
	struct net *               net;                  /*     0     8 */
	atomic64_t                 sndnxt __attribute__((__aligned__(64))); /*    64     8 */
	union {
		int                a;                    /*    72     4 */
		long               b;                    /*    72     8 */
	};                                               /*    72     8 */
	struct {
		int                x;                    /*    80     4 */
	} __attribute__((__aligned__(8))) named;         /*    80     8 */
	/* size: 128, cachelines: 2, members: 4 */
};
"""


def test_pahole_members_with_attributes_and_anonymous_unions_keep_their_names():
    # As pahole prints net/tipc/crypto.c's struct (seen in the real-fixes corpus).
    layout = parse_pahole(PAHOLE_ATTRIBUTES)["struct tipc_crypto"]
    assert layout.members == [("net", 0, 8), ("sndnxt", 64, 8), ("<anonymous #1>", 72, 8),
                              ("named", 80, 8)]
    assert layout.size == 128


@pytest.mark.parametrize("present,missing", [
    ([], ".config"),
    ([".config", "include/generated/autoconf.h"], "include/generated/asm-offsets.h"),
    ([".config", "include/generated/autoconf.h", "include/generated/asm-offsets.h"],
     "tools/objtool/objtool"),
])
def test_a_sourcedir_that_is_not_prepared_is_refused_naming_what_it_lacks(tmp_path, present,
                                                                          missing):
    for rel in present:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("CONFIG_OBJTOOL=y\n")
    with pytest.raises(InputError, match=f"not a prepared kernel tree \\(no {missing}\\)"):
        custom_target(tmp_path, None, tmp_path / "vmlinux", None, None, None)


def test_an_object_two_parallel_compilers_raced_on_is_made_again_alone(tmp_path):
    # Like kbuild for arch/x86/pci/ (reached twice): both runs announce the
    # object and append to its command file, which then holds both.
    tree = tmp_path / "tree"
    (tree / "pci").mkdir(parents=True)
    (tree / "Makefile").write_text(
        "pci/fixup.o: first second\n"
        "first second:\n"
        "\t@echo '  CC      pci/fixup.o'; touch pci/fixup.o; echo $@ "
        "$(if $(findstring jobserver,$(MAKEFLAGS)),parallel,alone) >> pci/.fixup.o.cmd\n"
        ".PHONY: first second\n")
    obj = KernelObject("pci/fixup.o", "pci/fixup.c", None, "")
    copies = compile_objects(tree, [], [obj], tmp_path / "out", jobs=2,
                             logfile=tmp_path / "log", what="test")
    assert copies["pci/fixup.o"].is_file()
    # made again from scratch, one job at a time
    assert (tree / "pci/.fixup.o.cmd").read_text() == "first alone\nsecond alone\n"
