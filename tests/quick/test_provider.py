"""The Debian kernel provider's decisions, on package listings written out here."""

import logging
import subprocess
import time
from pathlib import Path

import pytest

from pykpatch.errors import KpatchError
from pykpatch.process import run_pipeline
from pykpatch.provider import debian
from pykpatch.provider.debian import (DEFAULT_RELEASE, DebianKernel, DebianRelease,
                                      choose_versions, default_release, newest_release,
                                      source_exclusions)
from pykpatch.provider.archive import SUITES, Archive, Mirrors, host_mirrors, version_key
from pykpatch.testbed.rootfs import debian_mirror

REL = DebianRelease.parse("6.1.0-56-cloud-amd64")


def listing(**overrides):
    base = {role: ["6.1.192-2", "6.1.192-1"] for role in
            ("image", "headers", "headers_common", "dbg", "source", "kbuild")}
    base.update(overrides)
    return base


def test_release_is_split_into_package_name_parts():
    assert (REL.series, REL.abi, REL.flavour) == ("6.1", "6.1.0-56", "cloud-amd64")
    names = REL.package_names()
    assert names["image"] == "linux-image-6.1.0-56-cloud-amd64-unsigned"
    assert names["headers_common"] == "linux-headers-6.1.0-56-common"
    assert names["source"] == "linux-source-6.1"


@pytest.mark.parametrize("release,abi,kbuild,suite", [
    ("6.12.118+deb13-cloud-amd64", "6.12.118+deb13", "linux-kbuild-6.12.118+deb13", "trixie"),
    ("6.12.118+deb12-amd64", "6.12.118+deb12", "linux-kbuild-6.12.118+deb12", "bookworm"),
    ("7.3.4+deb13-cloud-amd64", "7.3.4+deb13", "linux-kbuild-7.3.4+deb13", "trixie"),
    ("6.1.0-57-amd64", "6.1.0-57", "linux-kbuild-6.1", "bookworm"),
])
def test_releases_of_every_naming_scheme(release, abi, kbuild, suite):
    parsed = DebianRelease.parse(release)
    assert (parsed.abi, parsed.package_names()["kbuild"], parsed.suite) == (abi, kbuild, suite)
    assert parsed.package_names()["headers_common"] == f"linux-headers-{abi}-common"


@pytest.mark.parametrize("bad", ["6.18.44-fc-v782x!", "linux", "6.1", "", "6.12.118+deb13",
                                 "6.1.5-56-cloud-amd64"])
def test_a_non_debian_release_is_an_error_naming_it(bad):
    with pytest.raises(KpatchError, match="not a Debian kernel release"):
        DebianRelease.parse(bad)


def test_the_pinned_version_wins_when_complete():
    chosen = choose_versions(REL, listing(), "6.1.192-1")
    assert chosen.version == "6.1.192-1"
    assert set(chosen.versions.values()) == {"6.1.192-1"}


def test_a_vanished_pin_falls_back_to_the_newest_complete_set_and_says_so(caplog):
    known = listing(dbg=["6.1.192-2", "6.1.190-1"], source=["6.1.192-2", "6.1.190-1"])
    with caplog.at_level(logging.WARNING, logger="pykpatch"):
        chosen = choose_versions(REL, known, "6.1.188-1")
    assert chosen.version == "6.1.192-2"
    assert "6.1.188-1 is gone" in caplog.text


def test_versions_that_never_agree_are_an_error_listing_them():
    known = listing(dbg=["6.1.190-1"])
    with pytest.raises(KpatchError, match="no Debian version is shared") as err:
        choose_versions(REL, known, None)
    assert "linux-image-6.1.0-56-cloud-amd64-dbg: 6.1.190-1" in str(err.value)


def test_a_missing_package_is_named():
    with pytest.raises(KpatchError, match="linux-image-6.1.0-56-cloud-amd64-dbg"):
        choose_versions(REL, listing(dbg=[]), None)


def test_kbuild_may_come_from_another_version_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="pykpatch"):
        chosen = choose_versions(REL, listing(kbuild=["6.1.200-1"]), None)
    assert chosen.versions["kbuild"] == "6.1.200-1"
    assert chosen.versions["image"] == "6.1.192-2"
    assert "linux-kbuild-6.1" in caplog.text


def test_deb_file_names_follow_apt_get_download():
    chosen = choose_versions(REL, listing(), None)
    assert chosen.deb_name("source") == "linux-source-6.1_6.1.192-2_all.deb"
    assert chosen.deb_name("dbg") == "linux-image-6.1.0-56-cloud-amd64-dbg_6.1.192-2_amd64.deb"


def test_mirror_comes_from_deb822_sources(tmp_path: Path):
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\n\n"
        "Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\n")
    assert debian_mirror(tmp_path) == "http://mirror.example/debian"


def test_mirror_comes_from_one_line_sources(tmp_path: Path):
    (tmp_path / "sources.list").write_text(
        "# comment\ndeb [arch=amd64] http://mirror.example/debian bookworm main\n")
    assert debian_mirror(tmp_path) == "http://mirror.example/debian"


def test_no_debian_source_is_a_clear_error(tmp_path: Path):
    (tmp_path / "sources.list").write_text("deb http://other.example/ubuntu jammy main\n")
    with pytest.raises(KpatchError, match="no apt source for a Debian suite"):
        debian_mirror(tmp_path)


def test_security_mirror_and_the_suites_of_our_own_sources_list(tmp_path: Path):
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\n\n"
        "Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\n")
    mirrors = host_mirrors(tmp_path)
    assert mirrors == Mirrors("http://mirror.example/debian", "http://mirror.example/debian-security")
    lines = Archive(tmp_path, mirrors).sources_list().splitlines()
    assert [line.split()[-2] for line in lines] == list(SUITES)
    assert any(line.endswith("debian-security trixie-security main") for line in lines)
    assert any(line.endswith("/debian trixie-backports main") for line in lines)


def test_debian_versions_order_backports_and_stable_updates_before_their_base():
    ordered = ["6.12.118-1", "6.12.118-1~deb12u1", "6.12.117-1", "6.12.95-1~bpo12+1",
               "6.1.192-10", "6.1.192-3"]
    assert sorted(reversed(ordered), key=version_key, reverse=True) == ordered


def _kernel_with_toy_tree(tmp_path, monkeypatch, recipe):
    """A DebianKernel whose tree is a directory with a toy Makefile (real make)."""
    (tmp_path / "Makefile").write_text(f"modules_prepare:\n\t{recipe}\n")
    kernel = DebianKernel("6.1.0-56-cloud-amd64", cache=tmp_path / "cache")
    monkeypatch.setattr(kernel, "make_args", lambda: [])
    monkeypatch.setattr(kernel, "_install_packaged_objtool", lambda tree: False)
    return kernel


def _failing_listing(tree):
    raise KpatchError("listing failed")


def test_a_failed_listing_waits_for_modules_prepare_then_raises(tmp_path, monkeypatch):
    kernel = _kernel_with_toy_tree(tmp_path, monkeypatch, "@sleep 0.5; touch done")
    with pytest.raises(KpatchError, match="listing failed"):
        kernel._prepare_modules(tmp_path, 1, tmp_path / "log", _failing_listing)
    assert (tmp_path / "done").exists()  # make finished before the error came back


def test_when_both_fail_the_preparation_is_the_error(tmp_path, monkeypatch):
    kernel = _kernel_with_toy_tree(tmp_path, monkeypatch, "@sleep 0.2; exit 3")
    with pytest.raises(KpatchError, match="make modules_prepare failed"):
        kernel._prepare_modules(tmp_path, 1, tmp_path / "log", _failing_listing)


def test_the_listing_runs_while_modules_prepare_does(tmp_path, monkeypatch):
    kernel = _kernel_with_toy_tree(tmp_path, monkeypatch, "@touch started; sleep 1; touch done")
    seen = {}

    def listing(tree):
        for _ in range(100):
            if (tree / "started").exists():
                break
            time.sleep(0.01)
        seen["prepare running"] = (tree / "started").exists() and not (tree / "done").exists()

    kernel._prepare_modules(tmp_path, 1, tmp_path / "log", listing)
    assert seen == {"prepare running": True}
    assert (tmp_path / "done").exists()


LEAN_TREE_CASES = {
    # path in the source tarball: kept in the lean tree?
    "arch/x86/kernel/cpu/bugs.c": True,
    "arch/x86/include/asm/alternative.h": True,
    "arch/arm64/Kconfig": True,            # kconfig reads every arch's Kconfig
    "arch/arm64/kernel/setup.c": False,
    "arch/xtensa/kernel/setup.c": False,
    "arch/riscv/boot/dts/sifive/board.dts": False,
    "arch/um/include/shared/os.h": False,
    "fs/proc/cmdline.c": True,
    "drivers/gpu/drm/i915/i915_drv.c": False,  # the config below has no DRM
    "drivers/gpu/drm/Kconfig": True,
    "Documentation/Kconfig": True,
    "Documentation/admin-guide/README.rst": False,
    "tools/perf/builtin-top.c": False,
    "tools/objtool/check.c": True,
}


def test_the_lean_tree_keeps_what_an_x86_build_reads(tmp_path: Path):
    # Real tar, with the patterns and options the unpack uses.
    top = tmp_path / "src" / "linux-source-6.1"
    for rel in LEAN_TREE_CASES:
        (top / rel).parent.mkdir(parents=True, exist_ok=True)
        (top / rel).write_text("x\n")
    subprocess.run(["tar", "-cf", tmp_path / "src.tar", "-C", tmp_path / "src", "linux-source-6.1"],
                   check=True)
    out = tmp_path / "tree"
    out.mkdir()
    patterns = source_exclusions("CONFIG_X86_64=y\n# CONFIG_DRM is not set\n")
    subprocess.run(["tar", "-xf", tmp_path / "src.tar", "-C", out, "--strip-components=1",
                    "--anchored", *[f"--exclude={p}" for p in patterns]], check=True)
    kept = {rel: (out / rel).exists() for rel in LEAN_TREE_CASES}
    assert kept == LEAN_TREE_CASES


def test_with_drm_configured_its_sources_are_unpacked():
    assert not any("drivers/gpu/drm" in p for p in source_exclusions("CONFIG_DRM=m\n"))


def test_a_pipeline_failure_names_the_command_that_failed(tmp_path: Path):
    with pytest.raises(KpatchError, match=r"unpacking the thing failed \(tar: exit 2\)"):
        run_pipeline([["printf", "not a tar archive"], ["tar", "-x", "-C", tmp_path]],
                     what="unpacking the thing")


def test_a_pipeline_passes_output_on(tmp_path: Path):
    out_path = tmp_path / "out"
    with open(out_path, "wb") as out:
        run_pipeline([["printf", "b\\na\\n"], ["sort"]], what="sorting", stdout=out)
    assert out_path.read_text() == "a\nb\n"


def test_a_pipeline_whose_last_command_stops_early_succeeds(tmp_path: Path):
    # yes never ends by itself: head stopping early kills it with SIGPIPE.
    out_path = tmp_path / "out"
    with open(out_path, "wb") as out:
        run_pipeline([["yes"], ["head", "-n", "2"]], what="two lines", stdout=out)
    assert out_path.read_text() == "y\ny\n"


def test_a_pipeline_with_a_missing_program_is_a_clear_error():
    with pytest.raises(KpatchError, match="cannot run 'no-such-program-pykpatch'"):
        run_pipeline([["true"], ["no-such-program-pykpatch"]], what="anything")


def test_a_producer_complaining_that_its_reader_stopped_early(tmp_path: Path):
    # dpkg-deb exits 2 when tar --occurrence stops reading: an error only
    # when the reader was not expected to stop early.
    producer = ["sh", "-c", "yes; exit 2"]
    with pytest.raises(KpatchError, match=r"\(sh: exit 2\)"):
        run_pipeline([producer, ["head", "-n", "1"]], what="one line")
    with open(tmp_path / "out", "wb") as out:
        run_pipeline([producer, ["head", "-n", "1"]], what="one line", stdout=out,
                     last_stops_early=True)
    assert (tmp_path / "out").read_text() == "y\n"


def _archive_of(monkeypatch, complete, listed):
    """The archive as if it listed debug images of *listed*, with whole sets of *complete*."""
    names = [f"linux-image-{r}-dbg" for r in sorted(listed)]
    names.append("linux-image-6.1.0-57-cloud-amd64-unsigned")
    monkeypatch.setattr(Archive, "package_names", lambda self, prefix: names)
    monkeypatch.setattr(DebianKernel, "in_archive", lambda self: self.release.release in complete)


def test_default_release_is_the_pinned_one_while_the_archive_has_it(tmp_path, monkeypatch):
    releases = {"6.1.0-55-cloud-amd64", DEFAULT_RELEASE, "6.1.0-57-cloud-amd64"}
    _archive_of(monkeypatch, releases, releases)
    assert default_release(tmp_path) == DEFAULT_RELEASE
    assert DebianKernel(cache=tmp_path).release.release == DEFAULT_RELEASE


def test_default_release_is_the_newest_complete_one_once_the_pinned_one_is_gone(
        tmp_path, monkeypatch, caplog):
    # 6.1.0-58's set is incomplete (a dbg package only), the other flavour and
    # the other line do not count, and ABIs compare as numbers (100 > 99).
    complete = {"6.1.0-55-cloud-amd64", "6.1.0-99-cloud-amd64", "6.1.0-100-cloud-amd64"}
    listed = complete | {"6.1.0-101-cloud-amd64", "6.1.0-200-amd64", "6.12.0-9-cloud-amd64"}
    _archive_of(monkeypatch, complete, listed)
    with caplog.at_level(logging.WARNING, logger="pykpatch"):
        assert default_release(tmp_path) == "6.1.0-100-cloud-amd64"
    assert f"kernel {DEFAULT_RELEASE} is gone from Debian's archive; using 6.1.0-100" in caplog.text


def test_no_complete_release_of_the_line_is_an_error(tmp_path, monkeypatch):
    _archive_of(monkeypatch, set(), {"6.1.0-58-cloud-amd64"})
    with pytest.raises(KpatchError, match="no complete package set of a release like"):
        newest_release(cache=tmp_path)


def test_debian_version_order_is_dpkgs_for_any_version():
    # Versions a user may type (a suffix, an epoch, tildes) must sort, never fail.
    versions = ["6.1.192-2", "6.1.192-2+no.such.version", "6.1.192-3+1", "6.12.118-1~deb12u1",
                "1:6.1-1", "6.1.192", "6.1.192~rc1-1", "7.3.4-1~bpo13+1", "6.1a-1", "6.1~~-1",
                "6.1~-1", "0+20261204183000", "6.12.118+deb13"]
    for a in versions:
        for b in versions:
            dpkg_lt = subprocess.run(["dpkg", "--compare-versions", a, "lt", b]).returncode == 0
            assert (version_key(a) < version_key(b)) is dpkg_lt, (a, b)


def test_a_release_whose_image_is_split_in_three_packages(tmp_path, monkeypatch):
    # Debian's 7.x: linux-image-<release> only depends on linux-base- (config),
    # linux-binary[-unsigned]- (vmlinuz) and linux-modules-<release>.
    release = "7.3.4+deb13-cloud-amd64"
    version = "7.3.4-1~bpo13+1"
    monkeypatch.setattr(Archive, "versions", lambda self, name: [] if name.startswith(
        f"linux-image-{release}-unsigned") else [version])
    packages = DebianKernel(release, cache=tmp_path).packages
    assert packages.split_image and packages.version == version
    assert [packages.deb_name(r) for r in packages.image_roles] == [
        f"linux-binary-unsigned-{release}_{version}_amd64.deb",
        f"linux-base-{release}_{version}_amd64.deb",
        f"linux-modules-{release}_{version}_amd64.deb"]
    assert packages.config_member() == ("base", f"./usr/lib/modules/{release}/config")
    assert packages.vmlinuz() == f"usr/lib/modules/{release}/vmlinuz.unsigned"
    assert packages.debug_vmlinux_member() == f"./usr/lib/debug/lib/modules/{release}/vmlinux"
    monkeypatch.setattr(Archive, "versions", lambda self, name: ["6.1.192-2"])
    classic = DebianKernel("6.1.0-56-cloud-amd64", cache=tmp_path).packages
    assert not classic.split_image and classic.image_roles == ("image",)
    assert classic.deb_name("image").startswith("linux-image-6.1.0-56-cloud-amd64-unsigned_")
    assert classic.config_member() == ("image", "./boot/config-6.1.0-56-cloud-amd64")


def test_a_release_with_no_packages_at_all_is_named_with_the_classic_packages(tmp_path, monkeypatch):
    monkeypatch.setattr(Archive, "versions", lambda self, name: [])
    with pytest.raises(KpatchError, match="linux-image-6.1.0-999-cloud-amd64-unsigned"):
        DebianKernel("6.1.0-999-cloud-amd64", cache=tmp_path).packages
