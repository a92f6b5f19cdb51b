"""install / uninstall: the /var/lib/kpatch/<release>/ store and kpatch.service.

The install root is a tmp directory (Host.under); systemctl is the fake
kernel's, which only records the calls.
"""

import configparser
import os

from pykpatch.manage.install import unit_text
from test_kpatch_cli_support import (  # noqa: F401  (fixtures)
    RELEASE, cli, fake, make_ko, no_real_kernel, origin_fields,
)

OTHER = "6.1.0-99-cloud-amd64"


def test_install_copies_into_the_release_directory_and_enables_the_unit(cli, fake, tmp_path):
    ko = make_ko(tmp_path, modinfo=origin_fields())
    code, out, err = cli("install", str(ko))
    assert code == 0, err
    installed = fake.host.store / RELEASE / "livepatch-test.ko"
    assert installed.read_bytes() == ko.read_bytes()
    assert sorted(p.name for p in (fake.host.store / RELEASE).iterdir()) == ["livepatch-test.ko"]
    assert f"installed livepatch_test as {installed}" in out
    unit = (fake.host.unit_dir / "kpatch.service").read_text()
    assert "@KPATCH@" not in unit
    assert "load --all" in unit
    assert ["systemctl", "enable", "kpatch.service"] in fake.commands
    assert fake.ran("insmod") == []          # install does not load


def test_install_refuses_a_module_for_another_kernel(cli, fake, tmp_path):
    ko = make_ko(tmp_path, vermagic=f"{OTHER} SMP preempt mod_unload modversions ")
    code, _, err = cli("install", str(ko))
    assert code == 1 and f"built for kernel {OTHER}" in err
    assert not fake.host.store.exists()


def test_install_for_another_release_with_k(cli, fake, tmp_path):
    ko = make_ko(tmp_path, vermagic=f"{OTHER} SMP preempt mod_unload modversions ")
    code, _, err = cli("install", "-k", OTHER, str(ko))
    assert code == 0, err
    assert (fake.host.store / OTHER / "livepatch-test.ko").is_file()


def test_install_refuses_non_livepatch_and_non_modules(cli, fake, tmp_path):
    code, _, err = cli("install", str(make_ko(tmp_path, "plain.ko", livepatch=False)))
    assert code == 1 and "not a livepatch module" in err
    junk = tmp_path / "junk.ko"
    junk.write_bytes(b"\x7fELF garbage")
    code, _, err = cli("install", str(junk))
    assert code == 2
    assert not fake.host.store.exists()


def test_reinstall_under_a_new_file_name_replaces_the_old_file(cli, fake, tmp_path):
    first = make_ko(tmp_path, "livepatch-test.ko")
    second = make_ko(tmp_path, "livepatch-test-v2.ko", name="livepatch_test")
    assert cli("install", str(first))[0] == 0
    assert cli("install", str(second))[0] == 0
    assert [p.name for p in (fake.host.store / RELEASE).iterdir()] == ["livepatch-test-v2.ko"]


def test_install_of_the_file_in_the_store_registers_it_in_place(cli, fake, tmp_path):
    # What a package's postinst does: dpkg already unpacked the file there.
    store = fake.host.store / RELEASE
    store.mkdir(parents=True)
    ko = make_ko(store)
    (store / "livepatch-test.ko.c").unlink()
    os.utime(ko, (1000, 1000))
    inode = ko.stat().st_ino
    via_dotdot = store / ".." / RELEASE / ko.name
    code, out, err = cli("install", str(via_dotdot))
    assert code == 0, err
    assert ko.stat().st_ino == inode                 # not copied over itself
    assert ko.stat().st_mtime > 1000                 # dated as installed now
    assert sorted(p.name for p in store.iterdir()) == ["livepatch-test.ko"]
    assert f"installed livepatch_test as {ko}" in out
    assert ["systemctl", "enable", "kpatch.service"] in fake.commands


def test_install_in_place_still_checks_the_file(cli, fake, tmp_path):
    store = fake.host.store / RELEASE
    store.mkdir(parents=True)
    ko = make_ko(store, vermagic=f"{OTHER} SMP preempt mod_unload modversions ")
    code, _, err = cli("install", str(ko))
    assert code == 1 and f"built for kernel {OTHER}" in err
    assert ["systemctl", "enable", "kpatch.service"] not in fake.commands


def test_load_all_loads_installed_patches_in_install_order(cli, fake, tmp_path):
    store = fake.host.store / RELEASE
    store.mkdir(parents=True)
    newer = make_ko(store, "b-first.ko", name="livepatch_first")
    older = make_ko(store, "a-second.ko", name="livepatch_second")
    os.utime(newer, (1000, 1000))
    os.utime(older, (2000, 2000))
    code, out, err = cli("load", "--all")
    assert code == 0, err
    assert [argv[1] for argv in fake.ran("insmod")] == [str(newer), str(older)]
    assert "livepatch 'livepatch_first' is enabled" in out


def test_load_by_installed_name(cli, fake, tmp_path):
    assert cli("install", str(make_ko(tmp_path)))[0] == 0
    code, out, err = cli("load", "livepatch-test")
    assert code == 0, err
    assert fake.ran("insmod")[0][1] == str(fake.host.store / RELEASE / "livepatch-test.ko")


def test_load_all_reports_every_failure(cli, fake, tmp_path):
    store = fake.host.store / RELEASE
    store.mkdir(parents=True)
    make_ko(store, "good.ko", name="livepatch_good")
    make_ko(store, "stale.ko", name="livepatch_stale",
            vermagic=f"{OTHER} SMP preempt mod_unload modversions ")
    code, out, err = cli("load", "--all")
    assert code == 1
    assert "1 of 2 installed patches" in err
    assert "stale.ko: " in err and f"built for kernel {OTHER}" in err
    assert [argv[1] for argv in fake.ran("insmod")] == [str(store / "good.ko")]


def test_load_all_with_nothing_installed(cli, fake):
    code, out, _ = cli("load", "--all")
    assert code == 0 and f"no patches installed for {RELEASE}" in out


def test_uninstall_removes_the_file_and_empty_directories(cli, fake, tmp_path):
    assert cli("install", str(make_ko(tmp_path)))[0] == 0
    code, out, err = cli("uninstall", "livepatch_test")
    assert code == 0, err
    assert not (fake.host.store / RELEASE).exists()
    assert not fake.host.store.exists()
    assert ["systemctl", "disable", "kpatch.service"] in fake.commands


def test_uninstall_keeps_the_unit_while_other_patches_remain(cli, fake, tmp_path):
    assert cli("install", str(make_ko(tmp_path, "a.ko", name="livepatch_a")))[0] == 0
    assert cli("install", str(make_ko(tmp_path, "b.ko", name="livepatch_b")))[0] == 0
    assert cli("uninstall", "b.ko")[0] == 0
    assert [p.name for p in (fake.host.store / RELEASE).iterdir()] == ["a.ko"]
    assert ["systemctl", "disable", "kpatch.service"] not in fake.commands


def test_uninstall_of_a_loaded_patch_says_it_is_still_loaded(cli, fake, tmp_path):
    assert cli("install", str(make_ko(tmp_path)))[0] == 0
    assert cli("load", "livepatch_test")[0] == 0
    code, out, _ = cli("uninstall", "livepatch_test")
    assert code == 0 and "still loaded; 'kpatch unload livepatch_test'" in out


def test_uninstall_unknown_name(cli, fake, tmp_path):
    assert cli("install", str(make_ko(tmp_path)))[0] == 0
    code, _, err = cli("uninstall", "nope")
    assert code == 2
    assert f"no patch named 'nope' is installed for {RELEASE} (installed: livepatch_test)" in err


def test_unit_file():
    parser = configparser.ConfigParser(strict=False)
    parser.read_string(unit_text("/usr/local/bin/kpatch"))
    assert parser["Unit"]["ConditionKernelCommandLine"] == "!kpatch.enable=0"
    assert "network-pre.target" in parser["Unit"]["Before"]
    assert parser["Service"]["Type"] == "oneshot"
    assert parser["Service"]["RemainAfterExit"] == "yes"
    assert parser["Service"]["ExecStart"] == "/usr/local/bin/kpatch load --all"
    assert parser["Install"]["WantedBy"] == "multi-user.target"
