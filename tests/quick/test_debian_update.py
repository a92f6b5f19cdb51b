"""The pieces of ``kpatch-build --debian-update`` that need no kernel: the changelog,
the plan of what a changed file is, the version checks, a compile that keeps going,
and the report.  The real updates are built and loaded in tests/vm/test_debian_update_vm.py."""

import gzip
import io
import json
import subprocess
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List

import pytest

from pykpatch.build.compile import compile_each
from pykpatch.build.objindex import KernelObject
from pykpatch.cli import kpatch_build
from pykpatch.errors import InputError
from pykpatch.update import changelog, plan, report, sources
from pykpatch.update.driver import Update, check_version, description
from pykpatch.update.plan import FileChange, Selection

CHANGELOG = """\
linux (6.1.192-3) bookworm-security; urgency=high

  * nfsd: preflight SEQUENCE replies before accepting a slot (CVE-2026-99362)

 -- A Maintainer <a@example.org>  Thu, 26 Nov 2026 18:12:56 +0100

linux (6.1.192-2) bookworm-security; urgency=high

  * New upstream stable update:
    https://www.kernel.org/pub/linux/kernel/v6.x/ChangeLog-6.1.192
    - smb: client: fix OOB read/write from unvalidated DataOffset in
      coalesce_t2() (CVE-2026-89633)
    - io_uring/io-wq: don't lose the signal that ends work (CVE-2026-99228)
    - [arm*] pinctrl: sunxi: keep a shadow copy of the data register output
  * ext4: fix NULL folio dereference in mballoc (Closes: #1154101)

 -- A Maintainer <a@example.org>  Mon, 16 Nov 2026 11:17:40 +0100

linux (6.1.192-1) bookworm-security; urgency=high

  * ext4: something older (CVE-2025-1111)

 -- A Maintainer <a@example.org>  Mon, 02 Nov 2026 11:17:40 +0100
"""


def test_changelog_items_of_the_versions_after_the_target_up_to_the_update():
    items = changelog.items_between(CHANGELOG, "6.1.192-1", "6.1.192-3")
    assert [(i.version, i.text[:20]) for i in items] == [
        ("6.1.192-3", "nfsd: preflight SEQU"),
        ("6.1.192-2", "smb: client: fix OOB"),
        ("6.1.192-2", "io_uring/io-wq: don'"),
        ("6.1.192-2", "[arm*] pinctrl: sunx"),
        ("6.1.192-2", "ext4: fix NULL folio"),
    ]
    # continuation lines are joined; the stable-update heading and its URL are no item
    assert items[1].text.endswith("coalesce_t2() (CVE-2026-89633)")
    assert changelog.cves_of(items) == ["CVE-2026-89633", "CVE-2026-99228", "CVE-2026-99362"]
    assert changelog.items_between(CHANGELOG, "6.1.192-2", "6.1.192-2") == []


@pytest.mark.parametrize("text, path, functions, matches", [
    ("nfsd: preflight SEQUENCE replies (CVE-1)", "fs/nfsd/nfs4state.c", [], True),
    ("nfsd: preflight SEQUENCE replies (CVE-1)", "fs/ext4/mballoc.c", [], False),
    ("io_uring/io-wq: don't lose the signal", "io_uring/io-wq.c", [], True),
    ("io_uring/io-wq: don't lose the signal", "io_uring/io_uring.c", [], False),
    # an item naming a function matches only the file where that function changed
    ("smb: client: fix OOB in coalesce_t2() (CVE-2)", "fs/smb/client/connect.c",
     ["coalesce_t2"], True),
    ("smb: client: fix OOB in coalesce_t2() (CVE-2)", "fs/smb/client/file.c", ["cifs_open"], False),
    ("[arm*] pinctrl: sunxi: keep a copy", "drivers/pinctrl/sunxi/pinctrl-sunxi.c", [], True),
    ("New upstream stable update", "fs/ext4/super.c", [], False),
])
def test_a_changelog_item_names_a_file_by_its_functions_or_its_subsystem(text, path, functions,
                                                                           matches):
    assert changelog.Item("1", text).names_file(path, functions) is matches


@dataclass
class StubIndex:
    """An object index: source -> object, and who includes what."""

    objects: Dict[str, KernelObject] = field(default_factory=dict)
    includers: Dict[str, List[KernelObject]] = field(default_factory=dict)

    def for_source(self, src):
        return self.objects.get(src)

    def objects_including(self, path, jobs=2):
        return self.includers.get(path, [])


def _obj(src: str, module=None) -> KernelObject:
    return KernelObject(src[:-2] + ".o", src, module, "")


def test_every_changed_file_gets_a_status():
    built = _obj("fs/ext4/mballoc.c", "ext4")
    included = _obj("kernel/sched/build_policy.c")
    index = StubIndex({"fs/ext4/mballoc.c": built}, {"kernel/sched/rt.c": [included]})
    changes = sources.ChangedFiles(
        modified=["fs/ext4/mballoc.c", "kernel/sched/rt.c", "drivers/gpu/nouveau/x.c",
                  "include/linux/fs.h", "arch/x86/entry/entry_64.S", "net/Kconfig",
                  "Documentation/a.rst", "tools/perf/builtin.c",
                  "crypto/asymmetric_keys/x509.asn1"],
        added=["fs/new.c"], deleted=["fs/old.c"])
    statuses = {f.path: f.status for f in plan.plan_changes(changes, index, Selection())}
    assert statuses == {
        "fs/ext4/mballoc.c": plan.CANDIDATE, "kernel/sched/rt.c": plan.CANDIDATE,
        "drivers/gpu/nouveau/x.c": plan.NOT_BUILT, "include/linux/fs.h": plan.HEADER,
        "arch/x86/entry/entry_64.S": plan.UNPATCHABLE_FILE, "net/Kconfig": plan.UNPATCHABLE_FILE,
        "Documentation/a.rst": plan.OTHER, "tools/perf/builtin.c": plan.OTHER,
        "crypto/asymmetric_keys/x509.asn1": plan.UNPATCHABLE_FILE,
        "fs/new.c": plan.NEW_FILE, "fs/old.c": plan.DELETED_FILE,
    }


def test_only_and_exclude_choose_files_and_a_header_named_by_only_is_built():
    header_user = _obj("fs/inode.c")
    index = StubIndex({"fs/ext4/mballoc.c": _obj("fs/ext4/mballoc.c"),
                       "fs/nfsd/nfs4state.c": _obj("fs/nfsd/nfs4state.c")},
                      {"include/linux/fs.h": [header_user]})
    changes = sources.ChangedFiles(modified=["fs/ext4/mballoc.c", "fs/nfsd/nfs4state.c",
                                             "include/linux/fs.h"])
    only = plan.plan_changes(changes, index, Selection(only=["fs/ext4/", "include/linux/fs.h"]))
    assert {f.path: f.status for f in only} == {
        "fs/ext4/mballoc.c": plan.CANDIDATE, "fs/nfsd/nfs4state.c": plan.EXCLUDED,
        "include/linux/fs.h": plan.CANDIDATE}
    assert [o.obj for o in only[2].objects] == ["fs/inode.o"]
    excluded = plan.plan_changes(changes, index, Selection(exclude=["fs/nfsd/*"]))
    assert {f.path: f.status for f in excluded}["fs/nfsd/nfs4state.c"] == plan.EXCLUDED


def test_an_only_or_exclude_that_matches_no_changed_file_is_bad_input():
    changes = sources.ChangedFiles(modified=["fs/ext4/mballoc.c"])
    with pytest.raises(InputError, match="fs/ext4/mbaloc.c: no such file changed"):
        plan.plan_changes(changes, StubIndex(), Selection(only=["fs/ext4/mbaloc.c"]))


@dataclass
class StubArchive:
    known: List[str]

    def versions(self, package):
        return self.known


@dataclass
class StubKernel:
    """What check_version asks of a DebianKernel: its release, version and archive."""

    current: str
    known: List[str]

    def __post_init__(self):
        from pykpatch.provider.debian import DebianRelease
        self.release = DebianRelease.parse("6.1.0-56-cloud-amd64")
        self.archive = StubArchive(self.known)

    @property
    def packages(self):
        return type("Packages", (), {"version": self.current})


@pytest.mark.parametrize("version, message", [
    ("6.1.192-3", None),
    ("6.1.192-4", "not in Debian's archive (versions newer than 6.1.192-2 there: 6.1.192-3)"),
    ("6.12.118-1", "is not a version of Linux 6.1"),
    ("6.1.190-1", "is older than 6.1.192-2"),
    ("6.1.192-2", "is already built from linux-source-6.1 6.1.192-2"),
    ("6.1.192 -3", "is not a Debian version"),
])
def test_the_update_version_is_checked_against_the_target_before_anything_else(version, message):
    kernel = StubKernel("6.1.192-2", ["6.1.192-3", "6.1.192-2", "6.1.190-1"])
    if message is None:
        assert check_version(kernel, version) == "6.1.192-2"
    else:
        with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
            check_version(kernel, version)


def test_an_object_that_does_not_compile_is_recorded_and_the_others_are_built(tmp_path):
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "good.c").write_text("int good(void) { return 1; }\n")
    (tree / "bad.c").write_text("int bad(void) { return missing_from_header; }\n")
    # A kbuild stand-in: each object from its source, with the compiler's errors.
    (tree / "Makefile").write_text("%.o: %.c\n\tgcc -c -o $@ $<\n")
    good, bad = KernelObject("good.o", "good.c", None, ""), KernelObject("bad.o", "bad.c", None, "")
    (tree / "bad.o").write_text("stale object of an earlier build")
    compiled = compile_each(tree, [], [bad, good], tmp_path / "out", jobs=1,
                            logfile=tmp_path / "log", what="patched")
    assert list(compiled.copies) == ["good.o"] and compiled.copies["good.o"].is_file()
    assert list(compiled.failed) == ["bad.o"]
    assert "bad.c:1:" in compiled.failed["bad.o"] and "missing_from_header" in compiled.failed["bad.o"]


def _update(files: List[FileChange], module: bool = True) -> Update:
    update = Update("6.1.0-56-cloud-amd64", "linux-source-6.1", "6.1.192-2", "6.1.192-3",
                    files=files, items=changelog.items_between(CHANGELOG, "6.1.192-2", "6.1.192-3"))
    update.module = Path("/out/livepatch-6-1-192-3.ko") if module else None
    return update


def test_a_partial_patch_says_so_in_the_text_the_json_and_the_description():
    patched = FileChange("fs/nfsd/nfs4state.c", plan.PATCHED,
                         functions=[{"name": "nfsd4_sequence", "patched": True, "reason": "x"}],
                         cves=["CVE-2026-99362"],
                         changelog=["6.1.192-3: nfsd: preflight SEQUENCE replies (CVE-2026-99362)"])
    refused = FileChange("fs/ext4/mballoc.c", plan.REFUSED, "fs/ext4/mballoc.o: changes data")
    update = _update([patched, refused])
    assert update.partial
    text = "\n".join(report.text_lines(update)) + "\n" + report.summary_line(update)
    assert "refused (1):" in text and "fs/ext4/mballoc.o: changes data" in text
    assert "what to do:" in text and report.summary_line(update).startswith("PARTIAL:")
    data = report.to_json(update)
    assert data["partial"] is True and data["counts"] == {"patched": 1, "refused": 1}
    assert "PARTIAL" in description(update)
    assert "nfsd: preflight SEQUENCE replies (CVE-2026-99362)" in description(update)
    whole = _update([patched])
    assert not whole.partial and "PARTIAL" not in description(whole)
    assert report.summary_line(whole).startswith("SUCCESS:")
    json.dumps(data)  # (the report must be JSON)


def test_files_not_built_or_not_kernel_code_do_not_make_a_patch_partial():
    patched = FileChange("fs/nfsd/nfs4state.c", plan.PATCHED)
    update = _update([patched, FileChange("drivers/x.c", plan.NOT_BUILT),
                      FileChange("Documentation/y.rst", plan.OTHER)])
    assert not update.partial
    excluded = _update([patched, FileChange("fs/ext4/mballoc.c", plan.EXCLUDED)])
    assert excluded.partial and "PARTIAL" in report.summary_line(excluded)


def _source_deb(tmp_path: Path, version: str, files: Dict[str, str]) -> Path:
    """A linux-source-6.1 package as Debian makes it: a tarball and a changelog in a .deb."""
    root = tmp_path / f"deb-{version}"
    src = root / "usr/src"
    src.mkdir(parents=True)
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w") as tar:
        for path, text in files.items():
            info = tarfile.TarInfo(f"linux-source-6.1/{path}")
            info.size = len(text.encode())
            tar.addfile(info, io.BytesIO(text.encode()))
    subprocess.run(["xz", "-c"], input=data.getvalue(), stdout=open(src / "linux-source-6.1.tar.xz",
                                                                      "wb"), check=True)
    doc = root / "usr/share/doc/linux-source-6.1"
    doc.mkdir(parents=True)
    (doc / "changelog.Debian.gz").write_bytes(gzip.compress(CHANGELOG.encode()))
    (root / "DEBIAN").mkdir()
    (root / "DEBIAN/control").write_text(
        f"Package: linux-source-6.1\nVersion: {version}\nArchitecture: all\n"
        "Maintainer: A <a@example.org>\nDescription: test\n")
    deb = tmp_path / f"linux-source-6.1_{version}_all.deb"
    subprocess.run(["dpkg-deb", "-b", "-Zgzip", str(root), str(deb)], check=True,
                   capture_output=True)
    return deb


def test_two_source_packages_give_the_changed_files_and_their_patches(tmp_path):
    old = sources.SourceVersion("linux-source-6.1", "6.1.192-2", _source_deb(
        tmp_path, "6.1.192-2", {"fs/a.c": "int a;\n", "fs/b.c": "int b;\n", "fs/gone.c": ""}),
        tmp_path / "cache")
    new = sources.SourceVersion("linux-source-6.1", "6.1.192-3", _source_deb(
        tmp_path, "6.1.192-3", {"fs/a.c": "int a;\n", "fs/b.c": "int b = 1;\n", "fs/new.c": ""}),
        tmp_path / "cache")
    (tmp_path / "cache").mkdir()
    changes = sources.changed_files(sources.member_hashes(old), sources.member_hashes(new))
    assert (changes.modified, changes.added, changes.deleted) == (["fs/b.c"], ["fs/new.c"],
                                                                  ["fs/gone.c"])
    old_root = sources.extract_members(old, ["fs/b.c"], tmp_path / "old")
    new_root = sources.extract_members(new, ["fs/b.c"], tmp_path / "new")
    diff = sources.unified_diff("fs/b.c", old_root, new_root)
    assert diff.startswith("--- a/fs/b.c\n+++ b/fs/b.c\n") and "+int b = 1;" in diff
    assert "nfsd: preflight" in sources.changelog_text(new)


@pytest.mark.parametrize("argv, message", [
    (["--debian-update", "6.1.192-3", "x.patch"], "either PATCH files or --debian-update"),
    (["--only", "fs/a.c", "x.patch"], "--only and --exclude choose files of --debian-update"),
    (["--debian-update", "6.1.192-3", "-s", "/tmp"], "does not go with -s"),
    (["--deb-version", "1", "x.patch"], "--deb-version goes with --deb"),
    (["--deb", "--deb-version", "1.2_3", "x.patch"], "--deb-version 1.2_3: not a Debian version"),
])
def test_options_that_do_not_go_together_are_refused(argv, message, capsys):
    assert kpatch_build.main(argv) == 2
    assert message in capsys.readouterr().err


def test_every_deb_build_names_its_module_after_its_version():
    def build(*argv):
        return kpatch_build.deb_build(kpatch_build.build_parser().parse_args(list(argv)))

    deb = build("--debian-update", "6.1.192-3", "--deb", "--deb-version", "6.1.192-3+2")
    assert deb.version == "6.1.192-3+2" and deb.module_prefix == "livepatch-deb-"
    assert deb.module.startswith("livepatch-deb-6-1-192-3-2-")
    # versions that read alike still name different modules
    assert build("--deb", "--deb-version", "1.0+1", "x").module != \
        build("--deb", "--deb-version", "1.0.1", "x").module
    default = build("--deb", "x.patch")
    assert default.version.startswith("0+") and default.module.startswith("livepatch-deb-0-")
    with pytest.raises(InputError, match="too long for a module name"):
        build("--deb", "--deb-version", "1." + "2" * 60, "x")


def test_the_deb_module_name_and_atomic_replace_are_not_for_the_user_to_change(capsys):
    for extra in (["-n", "mine"], ["-R"]):
        assert kpatch_build.main(["--deb", *extra, "x.patch"]) == 2
        assert "leave out -n and -R" in capsys.readouterr().err


def test_objects_carrying_one_change_are_left_out_together():
    from pykpatch.build.pipeline import _leave_out_together
    groups = [{"fs/a.o", "fs/b.o"}, {"fs/b.o", "fs/c.o"}, {"fs/d.o"}]
    left_out = {"fs/a.o": ["refused"]}
    _leave_out_together(left_out, lambda out: {o for g in groups if g & out for o in g})
    assert sorted(left_out) == ["fs/a.o", "fs/b.o", "fs/c.o"]
    assert left_out["fs/c.o"] == ["left out with the other objects of the same changed file"]


def test_a_damaged_cached_tarball_is_one_line_and_removed(tmp_path):
    from pykpatch.errors import KpatchError
    source = sources.SourceVersion("linux-source-6.1", "6.1.192-3", tmp_path / "none.deb", tmp_path)
    source.tarball.write_bytes(b"\xfd7zXZ\x00 not really xz")
    with pytest.raises(KpatchError, match="removed, run again"):
        sources.member_hashes(source)
    assert not source.tarball.exists()
