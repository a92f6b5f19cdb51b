"""``kpatch-build --debian-update``: Debian's own kernel updates as live patches, loaded
in the kernel they were built for; and the ``.deb`` of such a patch installed,
rebooted with, upgraded and removed with apt in the guest.

The two updates are real: 6.1.192-2 (one ext4 fix) for 6.1.0-55-cloud-amd64,
and 6.1.192-3 (one nfsd fix, CVE-2026-99362) for 6.1.0-56-cloud-amd64.  When
the archive has dropped one, the newest update of the line that it still
has is used instead (printed), and the facts known of the pinned pair only
are not asserted.
"""

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

import pytest
from kpatch_build_support import EXPECTED_TAINT, kernel_health, wait_for

from pykpatch.kernel.livepatch import SYSFS_LIVEPATCH
from pykpatch.manage.host import STORE
from pykpatch.provider.archive import version_key
from pykpatch.provider.debian import DebianKernel, releases_in_archive
from pykpatch.testbed.vm import Guest


@dataclass(frozen=True)
class UpdateCase:
    """A kernel release and a newer Debian version of its source; *known*: what
    the pinned pair changes (file -> a changelog text), None for a substitute."""

    release: str
    version: str
    known: Optional[Dict[str, str]]


PINNED = {
    "ext4": UpdateCase("6.1.0-55-cloud-amd64", "6.1.192-2",
                       {"fs/ext4/mballoc.c": "ext4: fix NULL folio dereference in mballoc"}),
    "nfsd": UpdateCase("6.1.0-56-cloud-amd64", "6.1.192-3",
                       {"fs/nfsd/nfs4state.c": "CVE-2026-99362"}),
}


def update_case(pinned: UpdateCase) -> UpdateCase:
    """The pinned pair while the archive has both; else the newest release of the line
    that a newer source version exists for, with the next version."""
    kernel = DebianKernel(pinned.release)
    source = kernel.release.package_names()["source"]
    versions = kernel.archive.versions(source)
    if kernel.in_archive() and pinned.version in versions:
        print(f"pinned: {pinned.version} for {pinned.release}")
        return pinned
    for release in releases_in_archive(pinned.release):
        current = DebianKernel(release).packages.version
        newer = sorted((v for v in versions if version_key(v) > version_key(current)),
                       key=version_key)
        if newer:
            print(f"substitute (the pinned pair left the archive): {newer[0]} for {release}")
            return UpdateCase(release, newer[0], None)
    pytest.fail(f"the archive has no update of any {source} kernel release")


@dataclass
class UpdateBuild:
    rc: int
    stdout: str
    stderr: str
    out: Path

    @property
    def module(self) -> Path:
        assert self.rc == 0, self.stderr
        return next(self.out.glob("*.ko"))

    @property
    def name(self) -> str:
        return self.module.stem.replace("-", "_")

    @property
    def report(self) -> dict:
        return json.loads(next(self.out.glob("*.json")).read_text())

    @property
    def deb(self) -> Path:
        return next(self.out.glob("*.deb"))


def kpatch_build_update(case: UpdateCase, out: Path, *extra: str) -> UpdateBuild:
    argv = [sys.executable, "-m", "pykpatch", "build", "-k", case.release,
            "--debian-update", case.version, "-o", str(out), *extra]
    proc = subprocess.run(argv, capture_output=True, text=True)
    return UpdateBuild(proc.returncode, proc.stdout, proc.stderr, out)


@pytest.fixture(scope="module", params=sorted(PINNED))
def case(request) -> UpdateCase:
    return update_case(PINNED[request.param])


@pytest.fixture(scope="module")
def update_build(case, tmp_path_factory) -> UpdateBuild:
    return kpatch_build_update(case, tmp_path_factory.mktemp("update"))


def patched_functions(report: dict) -> Dict[str, List[str]]:
    """klp object ("vmlinux" or a module) -> the functions the module redirects."""
    out: Dict[str, List[str]] = {}
    for obj in report["objects"]:
        names = [f["name"] for f in obj["functions"] if f["patched"]]
        if names:
            out.setdefault(obj["target"], []).extend(names)
    return out


def test_update_builds_one_cumulative_patch_with_its_report(case, update_build):
    b = update_build
    assert b.rc == 0, b.stderr
    update = b.report["update"]
    assert (update["from"], update["to"]) == (DebianKernel(case.release).packages.version,
                                              case.version)
    patched = [f for f in update["files"] if f["status"] == "patched"]
    assert patched and all(f["functions"] for f in patched)
    assert update["module"] == b.module.name and update["partial"] is False
    assert "SUCCESS:" in b.stdout and "PARTIAL" not in b.stdout
    description = subprocess.run(["modinfo", "-F", "description", str(b.module)],
                                 capture_output=True, text=True, check=True).stdout
    assert case.version in description and "PARTIAL" not in description
    if case.known is None:
        return
    print("checked the pinned pair's own files and changelog")
    assert [f["path"] for f in patched] == list(case.known)
    for f in patched:
        assert any(case.known[f["path"]] in entry for entry in f["changelog"]), f
    for f in patched:
        assert case.known[f["path"]] in description, description


@pytest.fixture(scope="module")
def guest(case, tmp_path_factory):
    with Guest(DebianKernel(case.release), workdir=tmp_path_factory.mktemp("guest")) as g:
        yield g


def test_update_loads_and_patches_its_functions(case, update_build, guest):
    b = update_build
    guest.check("dmesg -C")
    targets = patched_functions(b.report)
    for target in targets:
        if target != "vmlinux":
            guest.check(f"modprobe {target}")
    remote = guest.put(b.module, f"/tmp/{b.module.name}")
    guest.check(f"insmod {remote}")
    sysfs = f"{SYSFS_LIVEPATCH}/{b.name}"
    wait_for(guest, f"[ $(cat {sysfs}/transition) = 0 ]")
    assert guest.check(f"cat {sysfs}/enabled").strip() == "1"
    for target, functions in targets.items():
        assert guest.check(f"cat {sysfs}/{target}/patched").strip() == "1"
        listed = guest.check(f"ls {sysfs}/{target}").split()
        for function in functions:
            assert f"{function},1" in listed, (function, listed)
    # The root file system is ext4: allocating blocks runs mballoc's code.
    guest.check("dd if=/dev/urandom of=/root/blob bs=64k count=64 status=none && sync && "
                "cmp /root/blob /root/blob && rm /root/blob && sync")
    assert kernel_health(guest) == {"bad_dmesg": [], "unexpected_taint": 0}
    guest.check(f"echo 0 > {sysfs}/enabled")
    wait_for(guest, f"[ ! -d {sysfs} ]")
    guest.check(f"rmmod {b.name}")


# -- bad input: one line, exit 2, nothing downloaded ------------------------------------------

@pytest.fixture(scope="module")
def empty_cache(tmp_path_factory) -> Path:
    """A cache of its own, which only ever gets package lists (shared by the cases)."""
    return tmp_path_factory.mktemp("cache")


@pytest.mark.parametrize("kind, says", [
    ("unknown", "is not in Debian's archive"),
    ("other line", "is not a version of Linux 6.1"),
    ("older", "is older than"),
    ("same", "is already built from"),
    ("garbage", "is not a Debian version"),
])
def test_bad_versions_are_refused_in_one_line_before_any_download(kind, says, empty_cache,
                                                                  tmp_path):
    case = update_case(PINNED["nfsd"])
    current = DebianKernel(case.release).packages.version
    version = {"unknown": current + "+no.such.version", "other line": "6.12.118-1",
               "older": "6.1.170-3", "same": current, "garbage": "not/a/version"}[kind]
    cache = empty_cache
    proc = subprocess.run([sys.executable, "-m", "pykpatch", "build", "-k", case.release,
                           "--debian-update", version, "--cache-dir", str(cache),
                           "-o", str(tmp_path / "out")], capture_output=True, text=True)
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert proc.returncode == 2, proc.stderr
    assert len(errors) == 1 and says in errors[0], proc.stderr
    assert not list(cache.glob("debs/*.deb")) and not (tmp_path / "out").exists()


# -- the .deb: apt install, reboot, upgrade without a gap, apt remove -------------------------

@pytest.fixture(scope="module")
def debs(tmp_path_factory) -> List[UpdateBuild]:
    """Two builds of the same update as packages, the second one newer."""
    case = update_case(PINNED["nfsd"])
    builds = [kpatch_build_update(case, tmp_path_factory.mktemp(f"deb{n}"), "--deb",
                                  "--deb-version", f"{case.version}+{n}") for n in (1, 2)]
    for b in builds:
        assert b.rc == 0, b.stderr
    return builds


@pytest.fixture(scope="module")
def kernel() -> DebianKernel:
    """The kernel of the package tests (the systemd guest of conftest boots it)."""
    return DebianKernel(update_case(PINNED["nfsd"]).release)


def _enabled_patches(guest) -> List[str]:
    out = guest.check(f"for d in {SYSFS_LIVEPATCH}/*/; do [ -d $d ] && "
                      "[ $(cat $d/enabled) = 1 ] && basename $d; done; true")
    return out.split()


def _package(b: UpdateBuild) -> str:
    return b.deb.name.split("_")[0]


def test_deb_installs_loads_survives_reboot_upgrades_without_gap_and_removes(debs, systemd_kpatch):
    guest, (first, second) = systemd_kpatch, debs
    release = guest.check("uname -r").strip()
    taint_before = int(guest.check("cat /proc/sys/kernel/tainted"))
    guest.check("modprobe nfsd")
    guest.check("dmesg -C")

    remote = guest.put(first.deb, f"/tmp/{first.deb.name}")
    guest.check(f"apt-get install -y {remote}", timeout=300)
    assert _enabled_patches(guest) == [first.name]
    assert guest.check(f"ls {STORE}/{release}").split() == [first.module.name]
    assert guest.check("systemctl is-enabled kpatch.service").strip() == "enabled"

    guest.reboot()
    assert _enabled_patches(guest) == [first.name]
    assert guest.check("systemctl is-active kpatch.service").strip() == "active"

    # Upgrade while a sampler records, every 20 ms, which patches are enabled.
    guest.check("modprobe nfsd")
    guest.check(f"nohup sh -c 'while [ ! -e /tmp/stop ]; do echo $(ls {SYSFS_LIVEPATCH}); "
                "sleep 0.02; done' > /tmp/samples 2>&1 &")
    remote = guest.put(second.deb, f"/tmp/{second.deb.name}")
    guest.check(f"apt-get install -y {remote}", timeout=300)
    guest.check("touch /tmp/stop; sleep 0.2")
    samples = guest.check("cat /tmp/samples").splitlines()
    assert len(samples) > 10
    assert all(s.strip() for s in samples), "a moment without any livepatch during the upgrade"
    assert samples[0].split() == [first.name] and samples[-1].split() == [second.name]
    assert _enabled_patches(guest) == [second.name]
    assert not guest.run(f"test -d /sys/module/{first.name}").ok, "the replaced module stayed"
    assert guest.check(f"ls {STORE}/{release}").split() == [second.module.name]
    assert guest.check(f"cat {SYSFS_LIVEPATCH}/{second.name}/nfsd/patched").strip() == "1"

    guest.check(f"apt-get remove -y {_package(second)}", timeout=300)
    assert _enabled_patches(guest) == []
    assert not guest.run(f"test -d /sys/module/{second.name}").ok
    assert not guest.run(f"test -e {STORE}/{release}").ok
    assert "ii" not in guest.run(f"dpkg -l {_package(second)}").out
    health = kernel_health(guest)
    assert health["bad_dmesg"] == []
    # The kernel keeps a livepatch's taint for good; nothing beyond it is new.
    assert int(guest.check("cat /proc/sys/kernel/tainted")) & ~(taint_before | EXPECTED_TAINT) == 0
