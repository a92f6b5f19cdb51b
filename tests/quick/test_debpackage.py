"""The Debian package of a live patch: its fields, files and maintainer scripts.

Packages are built with the real dpkg-deb and read back with dpkg-deb.  The
maintainer scripts run for real with /bin/sh, against a host tree under
tmp_path (Host.under: store, sysfs, unit) and a PATH that holds only stub
``kpatch``/``uname``/``systemctl`` commands (which log their arguments) and
the few real tools the scripts use.
"""

import gzip
import hashlib
import os
import shutil
import subprocess
from pathlib import Path
from typing import Dict, List, Optional

import pytest

from pykpatch import process
from pykpatch.build.debpackage import (
    PackageSpec, is_debian_version, maintainer_scripts, write_package,
)
from pykpatch.errors import InputError, KpatchError
from pykpatch.manage.host import Host
from pykpatch.manage.modinfo import read_module_info
from test_kpatch_cli_support import (  # noqa: F401  (no_real_kernel is autouse)
    RELEASE, make_ko, no_real_kernel,
)

KERNEL_VERSION = "6.1.192-2"
VERSION = "6.1.192-3+20261204183000"
PACKAGE = f"pykpatch-patch-{RELEASE}"
DEB_NAME = f"{PACKAGE}_{VERSION}_amd64.deb"
FILE = "livepatch-fix-2.ko"
NAME = "livepatch_fix_2"
OTHER = "6.1.0-99-cloud-amd64"
DESCRIPTION = ("Fix the use-after-free in /proc/PID/cmdline\n"
               "cmdline_proc_show no longer reads the arguments of a task after they were freed "
               "by a concurrent exec.\n"
               "\n"
               "  CVE-2026-00000\n")


def _needs_dpkg_deb() -> None:
    if shutil.which("dpkg-deb") is None:
        pytest.skip("dpkg-deb is not installed")


def _spec(module: Path, **changes: str) -> PackageSpec:
    fields: Dict[str, object] = dict(module=module, release=RELEASE,
                                     kernel_version=KERNEL_VERSION, version=VERSION,
                                     description=DESCRIPTION, module_prefix="livepatch-fix")
    fields.update(changes)
    return PackageSpec(**fields)  # type: ignore[arg-type]


@pytest.fixture
def ko(tmp_path: Path) -> Path:
    directory = tmp_path / "build"
    directory.mkdir()
    return make_ko(directory, FILE, name=NAME)


@pytest.fixture
def deb(ko: Path, tmp_path: Path) -> Path:
    _needs_dpkg_deb()
    return write_package(_spec(ko), tmp_path / "out", tmp_path / "work")


def _dpkg_deb(*args: object) -> str:
    return subprocess.run(["dpkg-deb", *map(str, args)], check=True, capture_output=True,
                          text=True).stdout


def _member(deb: Path, path: str) -> bytes:
    tar = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb)], check=True,
                         capture_output=True).stdout
    return subprocess.run(["tar", "-xO", path], input=tar, check=True,
                          capture_output=True).stdout


# --- the package ----------------------------------------------------------------

def test_fields(deb: Path, tmp_path: Path) -> None:
    assert deb == tmp_path / "out" / DEB_NAME
    fields = dict(line.split(": ", 1) for line in _dpkg_deb(
        "--field", deb, "Package", "Version", "Architecture", "Section", "Priority",
        "Maintainer", "Depends", "Installed-Size").splitlines())
    assert fields == {
        "Package": PACKAGE, "Version": VERSION, "Architecture": "amd64", "Section": "kernel",
        "Priority": "optional", "Maintainer": "pykpatch <pykpatch@localhost.invalid>",
        "Depends": f"linux-image-{RELEASE} (= {KERNEL_VERSION}) | "
                   f"linux-image-{RELEASE}-unsigned (= {KERNEL_VERSION})",
        "Installed-Size": fields["Installed-Size"],
    }
    assert int(fields["Installed-Size"]) >= 1
    assert "Built-Using" not in _dpkg_deb("--field", deb)


def test_description_follows_policy(deb: Path) -> None:
    lines = _dpkg_deb("--field", deb, "Description").splitlines()
    assert lines[:6] == [
        "Fix the use-after-free in /proc/PID/cmdline",
        " cmdline_proc_show no longer reads the arguments of a task after they were freed",
        " by a concurrent exec.",
        " .",
        "   CVE-2026-00000",       # verbatim
        " .",
    ]
    assert f" A live patch for Linux {RELEASE}" in lines[6]
    assert all(line.startswith(" ") and len(line) <= 80 for line in lines[1:])


def test_contents_modes_and_owner(deb: Path, ko: Path) -> None:
    entries = {}
    for line in _dpkg_deb("--contents", deb).splitlines():
        mode, owner, _size, _date, _time, path = line.split(maxsplit=5)
        entries[path] = (mode, owner)
    module = f"./var/lib/kpatch/{RELEASE}/{FILE}"
    doc = f"./usr/share/doc/{PACKAGE}/"
    assert entries[module] == ("-rw-r--r--", "root/root")
    assert entries[doc + "copyright"] == ("-rw-r--r--", "root/root")
    assert entries[doc + "changelog.Debian.gz"] == ("-rw-r--r--", "root/root")
    assert entries[f"./usr/share/lintian/overrides/{PACKAGE}"] == ("-rw-r--r--", "root/root")
    for path, (mode, owner) in entries.items():
        assert owner == "root/root", path
        assert mode in ("drwxr-xr-x", "-rw-r--r--"), path
    assert _member(deb, module) == ko.read_bytes()


def test_md5sums_list_every_file(deb: Path, tmp_path: Path) -> None:
    control = tmp_path / "control"
    _dpkg_deb("--control", deb, control)
    listed = dict(reversed(line.split("  ", 1))
                  for line in (control / "md5sums").read_text().splitlines())
    module = f"var/lib/kpatch/{RELEASE}/{FILE}"
    assert set(listed) == {module, f"usr/share/doc/{PACKAGE}/copyright",
                           f"usr/share/doc/{PACKAGE}/changelog.Debian.gz",
                           f"usr/share/lintian/overrides/{PACKAGE}"}
    assert listed[module] == hashlib.md5(_member(deb, "./" + module)).hexdigest()


def test_changelog_is_one_entry_compressed_like_gzip_9n(deb: Path) -> None:
    raw = _member(deb, f"./usr/share/doc/{PACKAGE}/changelog.Debian.gz")
    flags, mtime, extra = raw[3], raw[4:8], raw[8]
    assert flags & 0x08 == 0 and mtime == b"\0\0\0\0" and extra == 2   # -n, -9
    text = gzip.decompress(raw).decode()
    assert text.startswith(f"{PACKAGE} ({VERSION}) unstable; urgency=medium\n\n"
                           "  * Fix the use-after-free in /proc/PID/cmdline\n"
                           "    cmdline_proc_show no longer reads")
    assert text.count(" -- pykpatch <pykpatch@localhost.invalid>  ") == 1
    assert all(len(line) <= 80 for line in text.splitlines()[1:])   # the entry's lines


def test_copyright_is_machine_readable_gpl2(deb: Path) -> None:
    text = _member(deb, f"./usr/share/doc/{PACKAGE}/copyright").decode()
    assert text.startswith("Format: https://www.debian.org/doc/packaging-manuals/"
                           "copyright-format/1.0/\n")
    assert "\nLicense: GPL-2\n" in text and "/usr/share/common-licenses/GPL-2" in text


def test_maintainer_scripts_in_the_package(deb: Path, tmp_path: Path) -> None:
    control = tmp_path / "control"
    _dpkg_deb("--control", deb, control)
    for name in ("preinst", "postinst", "prerm", "postrm"):
        script = control / name
        assert script.stat().st_mode & 0o777 == 0o755
        text = script.read_text()
        assert text.startswith("#!/bin/sh\n") and "\nset -e\n" in text
        assert "@" not in text.replace("(pykpatch)", "")
        subprocess.run(["sh", "-n", str(script)], check=True)
    postinst = (control / "postinst").read_text()
    assert f"module='/var/lib/kpatch/{RELEASE}/{FILE}'" in postinst
    assert "livepatch_dir='/sys/kernel/livepatch'" in postinst
    assert "prefix='livepatch_fix'" in postinst
    assert "module_dir='/sys/module'" in (control / "prerm").read_text()
    assert "unit='/etc/systemd/system/kpatch.service'" in (control / "postrm").read_text()


def test_epoch_is_not_in_the_file_name_and_native_has_changelog_gz(ko: Path,
                                                                   tmp_path: Path) -> None:
    _needs_dpkg_deb()
    deb = write_package(_spec(ko, version="1:20261204"), tmp_path / "out", tmp_path / "work")
    assert deb.name == f"{PACKAGE}_20261204_amd64.deb"
    assert _dpkg_deb("--field", deb, "Version").strip() == "1:20261204"
    assert f"./usr/share/doc/{PACKAGE}/changelog.gz" in _dpkg_deb("--contents", deb)


def test_workdir_is_left_empty(deb: Path, tmp_path: Path) -> None:
    assert list((tmp_path / "work").iterdir()) == []


# --- bad input ------------------------------------------------------------------

def _refused(spec: PackageSpec, tmp_path: Path) -> str:
    with pytest.raises(InputError) as caught:
        write_package(spec, tmp_path / "out", tmp_path / "work")
    assert not (tmp_path / "out").exists()
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_refuses_a_module_that_is_not_a_livepatch(tmp_path: Path) -> None:
    plain = make_ko(tmp_path, "plain.ko", name="plain", livepatch=False)
    assert "is not a livepatch module" in _refused(_spec(plain, module_prefix="plain"), tmp_path)


def test_refuses_a_module_for_another_release(tmp_path: Path) -> None:
    other = make_ko(tmp_path, FILE, name=NAME, vermagic=f"{OTHER} SMP preempt mod_unload ")
    assert f"built for kernel {OTHER}, but the target is {RELEASE}" in _refused(
        _spec(other), tmp_path)


def test_refuses_what_is_not_a_module(tmp_path: Path) -> None:
    junk = tmp_path / "junk.ko"
    junk.write_bytes(b"not ELF")
    assert "not a kernel module" in _refused(_spec(junk), tmp_path)


@pytest.mark.parametrize("version", ["abc", "6.1-", "6.1_2", "6.1-3:4", "a:1.0", "", "6.1 -2"])
def test_refuses_an_invalid_version(ko: Path, tmp_path: Path, version: str) -> None:
    assert "is not a Debian version" in _refused(_spec(ko, version=version), tmp_path)


def test_refuses_an_invalid_kernel_version(ko: Path, tmp_path: Path) -> None:
    message = _refused(_spec(ko, kernel_version="6.1.192-2)"), tmp_path)
    assert message.startswith("kernel package version '6.1.192-2)' is not a Debian version")


def test_refuses_a_release_that_cannot_name_a_package(tmp_path: Path) -> None:
    release = "6.1.0-56-Cloud_amd64"
    ko = make_ko(tmp_path, FILE, name=NAME, vermagic=f"{release} SMP ")
    assert "cannot be part of a package name" in _refused(_spec(ko, release=release), tmp_path)


@pytest.mark.parametrize("change, words", [
    ({"description": ""}, "needs a synopsis"),
    ({"description": "x" * 81}, "at most 80"),
    ({"maintainer": "root"}, "'Name <address>'"),
    ({"module_prefix": "livepatch-other"}, "does not begin the module's name"),
    ({"module_prefix": "livepatch*"}, "is not letters, digits"),
])
def test_refuses_other_bad_fields(ko: Path, tmp_path: Path, change: Dict[str, str],
                                  words: str) -> None:
    assert words in _refused(_spec(ko, **change), tmp_path)


def test_says_so_when_dpkg_deb_is_missing(ko: Path, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(process.shutil, "which", lambda name: None)
    with pytest.raises(KpatchError, match="^'dpkg-deb' is not installed; install the Debian "
                                          "package 'dpkg'$"):
        write_package(_spec(ko), tmp_path / "out", tmp_path / "work")


VERSIONS = ["1.0", "1.0-1", "1:1.0-1", "6.1.192-3+20261204183000", "1.0~rc1-1~bpo12+1",
            "1.0-1-2", "0", "abc", "1.0-", "1_0", "a:1.0", ":1.0", "1.0-a:b", "-1", "1.0 -1",
            "1:", "1.0-1_2", "1.0+", "1.0.-x.y"]


def test_version_check_agrees_with_dpkg() -> None:
    if shutil.which("dpkg") is None:
        pytest.skip("dpkg is not installed")
    for version in VERSIONS:
        dpkg = subprocess.run(["dpkg", "--validate-version", version],
                              capture_output=True).returncode == 0
        assert is_debian_version(version) == dpkg, version


def test_version_check_follows_policy_on_colons() -> None:
    # dpkg still takes colons in the upstream part after an epoch; policy no longer does.
    assert not is_debian_version("1:2:3")
    assert is_debian_version("1:2.3")


# --- the maintainer scripts, run ---------------------------------------------------

_KPATCH_STUB = """#!/bin/sh
echo "kpatch $*" >> "$STUB_LOG"
if [ "$1" = version ]; then echo "$KPATCH_VERSION"; fi
case " $KPATCH_FAILS " in *" $1 "*) echo "kpatch: error: $1 failed" >&2; exit 1;; esac
exit 0
"""
_UNAME_STUB = """#!/bin/sh
echo "$RUNNING"
"""
_SYSTEMCTL_STUB = """#!/bin/sh
echo "systemctl $*" >> "$STUB_LOG"
"""
_REAL_TOOLS = ("grep", "cat", "find", "rmdir")


class Machine:
    """A host tree under tmp_path with stub commands, to run the scripts in."""

    def __init__(self, tmp_path: Path, spec: PackageSpec) -> None:
        self.root = tmp_path / "root"
        self.host = Host.under(self.root, RELEASE, run=process.run)
        self.bin = tmp_path / "bin"
        self.log = tmp_path / "stub.log"
        self.scripts = tmp_path / "scripts"
        self.bin.mkdir()
        self.scripts.mkdir()
        for tool in _REAL_TOOLS:
            (self.bin / tool).symlink_to(shutil.which(tool))
        self.stub("kpatch", _KPATCH_STUB)
        self.stub("uname", _UNAME_STUB)
        self.stub("systemctl", _SYSTEMCTL_STUB)
        scripts = maintainer_scripts(spec, read_module_info(spec.module), self.host)
        for name, text in scripts.items():
            (self.scripts / name).write_text(text)
        self.module = self.host.store / RELEASE / FILE

    def stub(self, name: str, text: str) -> None:
        (self.bin / name).write_text(text)
        (self.bin / name).chmod(0o755)

    def loaded(self, name: str, taint: str = "OEK", enabled: Optional[str] = None) -> None:
        (self.host.sys_module / name).mkdir(parents=True)
        (self.host.sys_module / name / "taint").write_text(taint + "\n")
        if enabled is not None:
            (self.host.livepatch / name).mkdir(parents=True)
            (self.host.livepatch / name / "enabled").write_text(enabled + "\n")

    def run(self, script: str, *args: str, running: str = RELEASE, fails: str = "",
            version: str = "kpatch (pykpatch) 0.1.0") -> "subprocess.CompletedProcess[str]":
        env = {"PATH": str(self.bin), "STUB_LOG": str(self.log), "RUNNING": running,
               "KPATCH_FAILS": fails, "KPATCH_VERSION": version}
        return subprocess.run(["/bin/sh", str(self.scripts / script), *args], env=env,
                              capture_output=True, text=True)

    def calls(self) -> List[str]:
        return self.log.read_text().splitlines() if self.log.exists() else []


@pytest.fixture
def machine(ko: Path, tmp_path: Path) -> Machine:
    return Machine(tmp_path, _spec(ko))


def test_preinst_needs_pykpatchs_kpatch(machine: Machine) -> None:
    assert machine.run("preinst", "install").returncode == 0
    assert machine.run("preinst", "upgrade", "6.1.192-3+1").returncode == 0
    upstream = machine.run("preinst", "install", version="0.9.10")
    (machine.bin / "kpatch").unlink()
    missing = machine.run("preinst", "install")
    for proc in (upstream, missing):
        assert proc.returncode == 1
        assert proc.stderr == (f"{PACKAGE}: pykpatch's 'kpatch' command is needed and not on "
                               "PATH; install it first (pip install pykpatch)\n")


def test_postinst_on_the_running_release_installs_loads_and_removes_replaced(
        machine: Machine) -> None:
    machine.host.livepatch.mkdir(parents=True)
    machine.loaded(NAME, enabled="1")                  # the new patch, after its load
    machine.loaded("livepatch_fix_1")                  # replaced: no livepatch directory
    machine.loaded("livepatch_fix_0", enabled="0")     # replaced, not freed yet
    machine.loaded("livepatch_fix_9", enabled="1")     # still enabled: not replaced
    machine.loaded("livepatch_fix_plain", taint="OE")  # not a livepatch module
    machine.loaded("livepatch_other")                  # another prefix
    proc = machine.run("postinst", "configure", "")
    assert proc.returncode == 0, proc.stderr
    assert machine.calls() == [
        f"kpatch install -k {RELEASE} {machine.module}",
        f"kpatch load {machine.module}",
        "kpatch unload livepatch_fix_0",
        "kpatch unload livepatch_fix_1",
    ]
    assert "livepatch 'livepatch_fix_9' is still enabled" in proc.stderr


def test_postinst_for_another_release_only_installs(machine: Machine) -> None:
    machine.host.livepatch.mkdir(parents=True)
    proc = machine.run("postinst", "configure", "", running=OTHER)
    assert proc.returncode == 0, proc.stderr
    assert machine.calls() == [f"kpatch install -k {RELEASE} {machine.module}"]
    assert f"the patch will be loaded when {RELEASE} boots" in proc.stdout


def test_postinst_without_livepatch_support_only_installs(machine: Machine) -> None:
    proc = machine.run("postinst", "configure", "")
    assert proc.returncode == 0, proc.stderr
    assert machine.calls() == [f"kpatch install -k {RELEASE} {machine.module}"]


def test_postinst_fails_when_the_load_fails_and_removes_nothing(machine: Machine) -> None:
    machine.host.livepatch.mkdir(parents=True)
    machine.loaded("livepatch_fix_1", enabled="1")
    proc = machine.run("postinst", "configure", "", fails="load")
    assert proc.returncode == 1
    assert machine.calls() == [f"kpatch install -k {RELEASE} {machine.module}",
                               f"kpatch load {machine.module}"]
    assert "could not be applied now" in proc.stderr


def test_postinst_fails_when_install_fails(machine: Machine) -> None:
    proc = machine.run("postinst", "configure", "", fails="install")
    assert proc.returncode == 1
    assert machine.calls() == [f"kpatch install -k {RELEASE} {machine.module}"]


def test_postinst_goes_on_when_a_replaced_module_stays(machine: Machine) -> None:
    machine.host.livepatch.mkdir(parents=True)
    machine.loaded("livepatch_fix_1")
    proc = machine.run("postinst", "configure", "", fails="unload")
    assert proc.returncode == 0
    assert "'kpatch unload livepatch_fix_1' removes it" in proc.stderr


def test_prerm_remove_unloads_a_loaded_patch(machine: Machine) -> None:
    machine.loaded(NAME, enabled="1")
    for action in ("remove", "deconfigure"):
        proc = machine.run("prerm", action)
        assert proc.returncode == 0, proc.stderr
    assert machine.calls() == [f"kpatch unload {NAME}"] * 2


def test_prerm_remove_of_a_patch_not_loaded_does_nothing(machine: Machine) -> None:
    assert machine.run("prerm", "remove").returncode == 0
    machine.loaded(NAME, enabled="1")
    assert machine.run("prerm", "remove", running=OTHER).returncode == 0
    assert machine.calls() == []


def test_prerm_fails_when_the_unload_fails(machine: Machine) -> None:
    machine.loaded(NAME, enabled="1")
    proc = machine.run("prerm", "remove", fails="unload")
    assert proc.returncode == 1
    assert "it stays applied and the package stays installed" in proc.stderr


def test_prerm_upgrade_leaves_the_patch_alone(machine: Machine) -> None:
    machine.loaded(NAME, enabled="1")
    assert machine.run("prerm", "upgrade", "6.1.192-3+2").returncode == 0
    assert machine.run("prerm", "failed-upgrade", "6.1.192-3+0").returncode == 0
    assert machine.calls() == []


def _unit(machine: Machine) -> Path:
    unit = machine.host.unit_dir / "kpatch.service"
    unit.parent.mkdir(parents=True)
    unit.write_text("[Unit]\n")
    return unit


def test_postrm_disables_the_unit_when_no_patch_is_left(machine: Machine) -> None:
    _unit(machine)
    (machine.host.store / RELEASE).mkdir(parents=True)
    proc = machine.run("postrm", "remove")
    assert proc.returncode == 0, proc.stderr
    assert machine.calls() == ["systemctl disable kpatch.service"]
    assert not (machine.host.store / RELEASE).exists()


def test_postrm_keeps_the_unit_while_patches_remain(machine: Machine) -> None:
    _unit(machine)
    (machine.host.store / OTHER).mkdir(parents=True)
    (machine.host.store / OTHER / "livepatch-x.ko").write_bytes(b"")
    assert machine.run("postrm", "purge").returncode == 0
    assert machine.calls() == []


def test_postrm_without_systemctl_or_unit(machine: Machine) -> None:
    assert machine.run("postrm", "remove").returncode == 0      # no unit
    _unit(machine)
    (machine.bin / "systemctl").unlink()
    assert machine.run("postrm", "remove").returncode == 0
    machine.stub("systemctl", "#!/bin/sh\nexit 1\n")             # failure is ignored
    assert machine.run("postrm", "remove").returncode == 0
    assert machine.calls() == []


def test_scripts_refuse_unknown_actions(machine: Machine) -> None:
    for script in ("preinst", "postinst", "prerm", "postrm"):
        proc = machine.run(script, "frobnicate")
        assert proc.returncode == 1 and "unknown argument 'frobnicate'" in proc.stderr


# --- lintian ----------------------------------------------------------------------

def test_lintian_finds_no_errors(deb: Path) -> None:
    if shutil.which("lintian") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("lintian is not installed (scripts/setup installs it)")
        pytest.skip("lintian is not installed")
    proc = subprocess.run(["lintian", "--no-tag-display-limit", str(deb)],
                          capture_output=True, text=True)
    errors = [line for line in proc.stdout.splitlines() if line.startswith("E:")]
    assert errors == [], proc.stdout
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_prerm_remove_also_unloads_an_earlier_build_still_loaded(machine: Machine) -> None:
    # An upgrade whose load failed leaves the old build applied: removing the
    # package must not leave it behind.
    machine.loaded(NAME, enabled="1")
    machine.loaded("livepatch_fix_1", enabled="1")
    machine.loaded("livepatch_fixer", taint="OE")      # not a livepatch: left alone
    assert machine.run("prerm", "remove").returncode == 0
    assert machine.calls() == [f"kpatch unload {NAME}", "kpatch unload livepatch_fix_1"]
