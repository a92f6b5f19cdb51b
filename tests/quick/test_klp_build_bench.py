"""The klp-build bench's own logic (bench/klp_build/): how it reads klp-build's output,
judges a guest check and writes what the kernel said.  The bench itself takes hours and
runs by hand; these are the parts a wrong result in docs/klp-build-comparison.md would
come from.  The inotify probe runs for real on this machine (user space only)."""

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "klp_build"
sys.path.insert(0, str(BENCH))

import patches  # noqa: E402
import report  # noqa: E402
import run  # noqa: E402

# What klp-build printed for the bench's init-function patch (7.3.4).
INIT_REFUSAL = """Diffing objects
vmlinux.o: error: objtool: proc_cmdline_init: can't patch or reference init code/data
vmlinux.o: changed function: proc_cmdline_init
error: klp-build: objtool klp diff failed
"""


def test_klp_build_refusing_init_code_is_a_refusal():
    decision, message = run.klp_decision(1, INIT_REFUSAL, made_module=False, timed_out=False)
    assert decision == "refused"
    assert "proc_cmdline_init: can't patch or reference init code" in message


def test_klp_build_success_is_a_module_only_with_the_module_file():
    output = "vmlinux.o: changed function: cmdline_proc_show\nBuilding patch module: x.ko\nSUCCESS\n"
    assert run.klp_decision(0, output, made_module=True, timed_out=False) == ("module", "")
    assert run.klp_decision(0, output, made_module=False, timed_out=False)[0] == "tool error"
    assert run.objtool_lines(output, "changed function") == ["vmlinux.o: cmdline_proc_show"]


def test_a_fix_check_must_show_only_while_enabled():
    check = patches.Behaviour("cat /proc/cmdline", "pykpatch=live")
    assert check.behaves({"before": "ro", "enabled": "ro pykpatch=live", "after": "ro"})
    assert not check.behaves({"before": "ro pykpatch=live", "enabled": "ro pykpatch=live", "after": "ro"})
    assert not check.behaves({"before": "ro", "enabled": "ro", "after": "ro"})
    assert check.behaves({"before": "ro"}) is None


def test_a_keeps_check_must_pass_in_all_three_runs():
    check = patches.Behaviour("probe", "probe ok", keeps=True)
    assert check.behaves({"before": "probe ok: f0", "enabled": "probe ok: f1", "after": "probe ok: f2"})
    assert not check.behaves({"before": "probe ok: f0", "enabled": "cat: no such file",
                              "after": "probe ok: f2"})


STRUCT_LAYOUT_LOAD = {
    "outcome": "trouble", "behaves": False, "errors": ["dmesg: kernel BUG at mm/usercopy.c:102!"],
    "bad_dmesg": ["[    9.77] kernel BUG at mm/usercopy.c:102!", "[    9.77] Oops: invalid opcode"],
    "dmesg_excerpt": [
        "[    9.45] livepatch: 'klp_struct_layout_FAIL': patching complete",
        "[    9.76] usercopy: Kernel memory exposure attempt detected from SLUB object "
        "'kmalloc-cg-64' (offset 36, size 12646)!",
        "[    9.77] ------------[ cut here ]------------",
        "[    9.77] kernel BUG at mm/usercopy.c:102!",
        "[    9.77] Oops: invalid opcode",
    ],
}


def test_the_report_quotes_what_the_kernel_said_up_to_the_first_bad_line():
    said = report.kernel_said(STRUCT_LAYOUT_LOAD)
    assert said[0].endswith("(offset 36, size 12646)!")
    assert said[-1].endswith("kernel BUG at mm/usercopy.c:102!")
    assert not any("livepatch:" in l or "cut here" in l for l in said)


def test_a_module_that_loads_then_breaks_the_kernel_is_not_a_load_error():
    entry = patches.select(["struct-layout-FAIL"])[0]
    assert report.guest_cell(STRUCT_LAYOUT_LOAD, entry) == "loads, WRONG behaviour; then kernel BUG"
    assert report.guest_cell({"outcome": "not loaded", "behaves": None, "errors": ["insmod failed"]},
                             entry) == "load error"
    fat = patches.select(["fix-fat-inode"])[0]
    assert report.guest_cell({"outcome": "loaded", "behaves": True, "errors": []}, fat) == \
        "loads, still works"


def sh(script: str) -> str:
    return subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60).stdout


def test_the_inotify_probe_reads_each_event_queued_before_it_was_asked():
    check = patches.INOTIFY_QUEUED_EVENT
    try:
        subprocess.run(["bash", "-c", check.setup], check=True, timeout=60)
        answers = [sh(check.command).strip() for _ in range(3)]
    finally:
        subprocess.run(["bash", "-c", check.teardown], timeout=60)
    assert answers == ["probe ok: f0", "probe ok: f1", "probe ok: f2"]
    assert check.behaves(dict(zip(("before", "enabled", "after"), answers)))


@pytest.mark.parametrize("name", [p.name for p in patches.PATCHES])
def test_every_bench_patch_file_exists(name):
    entry = patches.select([name])[0]
    assert entry.path(run.BACKPORTS_7_RELEASE).is_file()


class _Tree:
    """What undo_killed_run() reads of a Bench: the tree and its klp-tmp."""

    def __init__(self, root: Path) -> None:
        self.tree = root
        self.klp_tmp = root / "klp-tmp"


def test_a_run_killed_hard_is_undone_before_the_next(tmp_path):
    # What klp-build leaves after SIGKILL: its #line copy of the patch applied, and
    # setlocalversion edited with the original in klp-tmp/stash.
    tree = _Tree(tmp_path)
    (tmp_path / "fs").mkdir()
    (tmp_path / "scripts").mkdir()
    original = "int a;\nint b;\n"
    (tmp_path / "fs" / "x.c").write_text("int a;\nint pykpatch;\n#line 2\nint b;\n")
    (tmp_path / "scripts" / "setlocalversion").write_text("#!/bin/sh\necho 7.3.4; exit 0\n")
    stash = tree.klp_tmp / "stash" / "scripts"
    stash.mkdir(parents=True)
    (stash / "setlocalversion").write_text("#!/bin/sh\n# the original\n")
    (tree.klp_tmp / "0001-fixed-x.patch").write_text(
        "--- a/fs/x.c\n+++ b/fs/x.c\n@@ -1,2 +1,4 @@\n int a;\n+int pykpatch;\n+#line 2\n int b;\n")
    run.undo_killed_run(tree)
    assert (tmp_path / "fs" / "x.c").read_text() == original
    assert (tmp_path / "scripts" / "setlocalversion").read_text() == "#!/bin/sh\n# the original\n"
    assert not (stash / "setlocalversion").exists()
    run.undo_killed_run(tree)  # nothing stashed: a no-op
    assert (tmp_path / "fs" / "x.c").read_text() == original


def test_a_refusal_cell_shows_the_reason_not_the_headings():
    message = ("the patch cannot be live patched:\nfs/proc/cmdline.o: cannot live patch this object "
               "(1 problem):\n  - proc_cmdline_init: changed __init code in .init.text")
    cell = report.decision_cell({"decision": "refused", "message": message})
    assert cell == "refused (proc_cmdline_init: changed __init code in .init.text)"
