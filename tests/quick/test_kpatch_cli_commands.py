"""The `kpatch` command line against a fake kernel tree (see the support module).

These check arguments, refusals before the kernel is touched, error
messages and the sequence of actions; the real kernel's answers are the
VM tests' business.
"""

import subprocess
from pathlib import Path

import pytest

from pykpatch.cli import kpatch as kpatch_cli
from test_kpatch_cli_support import (  # noqa: F401  (fixtures)
    RELEASE, FakeKernel, FakeTask, cli, fake, make_ko, no_real_kernel, origin_fields,
)


# --- arguments -------------------------------------------------------------------

@pytest.mark.parametrize("args", [
    [], ["load"], ["load", "x.ko", "--all"], ["unload"], ["load", "x.ko", "--timeout", "0"],
    ["load", "x.ko", "--timeout", "soon"], ["install"], ["info"], ["force"], ["frobnicate"],
])
def test_argument_errors_exit_2(cli, args) -> None:
    code, _out, err = cli(*args)
    assert code == 2
    assert "usage: kpatch" in err


def test_version(cli) -> None:
    code, out, _ = cli("version")
    assert code == 0 and out.startswith("kpatch (pykpatch) ")


def test_console_script_runs_as_non_root_with_one_line(tmp_path: Path) -> None:
    # The real entry point, in a child process as a normal user would run it.
    script = ("import os, sys; os.geteuid = lambda: 1000; "
              "from pykpatch.cli.kpatch import main; sys.exit(main(sys.argv[1:]))")
    proc = subprocess.run(["python3", "-c", script, "load", str(tmp_path / "x.ko")],
                          capture_output=True, text=True, cwd=Path(__file__).parents[2])
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert proc.stderr.count("\n") == 1
    assert "must run as root" in proc.stderr


@pytest.mark.parametrize("args", [["load", "--all"], ["unload", "x"], ["install", "x.ko"],
                                  ["uninstall", "x"], ["signal"], ["force", "x", "--confirm"]])
def test_non_root_gets_one_line(cli, monkeypatch, fake, args) -> None:
    monkeypatch.setattr(kpatch_cli, "_is_root", lambda: False)
    code, out, err = cli(*args)
    assert code == 1
    assert err.strip().count("\n") == 0 and "must run as root" in err
    assert fake.commands == []


def test_list_works_without_root(cli, monkeypatch) -> None:
    monkeypatch.setattr(kpatch_cli, "_is_root", lambda: False)
    code, out, _ = cli("list")
    assert code == 0 and "Loaded patch modules:" in out


# --- load: refusals before the kernel sees anything ---------------------------------

def _nothing_loaded(fake: FakeKernel) -> bool:
    return fake.ran("insmod") == [] and list(fake.host.livepatch.iterdir()) == []


def test_load_refuses_a_file_that_is_not_a_module(cli, fake, tmp_path) -> None:
    junk = tmp_path / "junk.ko"
    junk.write_text("not elf")
    code, _, err = cli("load", str(junk))
    assert code == 2 and "not a kernel module" in err
    assert _nothing_loaded(fake)


def test_load_refuses_an_ordinary_module(cli, fake, tmp_path) -> None:
    ko = make_ko(tmp_path, "plain.ko", name="plain", livepatch=False)
    code, _, err = cli("load", str(ko))
    assert code == 1 and "not a livepatch module" in err
    assert _nothing_loaded(fake)


def test_load_refuses_a_module_for_another_kernel(cli, fake, tmp_path) -> None:
    ko = make_ko(tmp_path, vermagic="6.1.0-99-cloud-amd64 SMP preempt mod_unload modversions ")
    code, _, err = cli("load", str(ko))
    assert code == 1
    assert "built for kernel 6.1.0-99-cloud-amd64" in err and RELEASE in err
    assert _nothing_loaded(fake)


def test_load_missing_file_and_unknown_name(cli, fake, tmp_path) -> None:
    code, _, err = cli("load", str(tmp_path / "missing.ko"))
    assert code == 2 and "no such file" in err
    code, _, err = cli("load", "no_such_patch")
    assert code == 2 and "neither a .ko file nor a patch installed" in err
    assert _nothing_loaded(fake)


def test_load_without_livepatch_support(cli, fake, tmp_path) -> None:
    fake.host.livepatch.rmdir()
    code, _, err = cli("load", str(make_ko(tmp_path)))
    assert code == 1 and "CONFIG_LIVEPATCH" in err


# --- load and unload ------------------------------------------------------------------

def test_load_then_unload(cli, fake, tmp_path) -> None:
    ko = make_ko(tmp_path, modinfo=origin_fields())
    code, out, err = cli("load", str(ko))
    assert code == 0, err
    assert "livepatch 'livepatch_test' is enabled (vmlinux: cmdline_proc_show)" in out
    assert fake.read("livepatch_test", "enabled") == "1"
    assert fake.read("livepatch_test", "transition") == "0"
    assert (fake.host.runtime / "livepatch_test.ko").is_file()

    code, out, err = cli("load", str(ko))
    assert code == 0 and "already enabled" in out
    assert len(fake.ran("insmod")) == 1

    code, out, err = cli("unload", "livepatch-test")      # '-' or '_' both name it
    assert code == 0, err
    assert "disabled and its module removed" in out
    assert not (fake.host.livepatch / "livepatch_test").exists()
    assert not (fake.host.sys_module / "livepatch_test").exists()
    assert fake.ran("rmmod") == [["rmmod", "livepatch_test"]]
    assert not (fake.host.runtime / "livepatch_test.ko").exists()


def test_load_reports_replaced_patches(cli, fake, tmp_path) -> None:
    fake.add_patch("livepatch_old")
    ko = make_ko(tmp_path)
    real_insmod = fake._cmd_insmod

    def insmod_with_replace(argv):
        result = real_insmod(argv)
        import shutil
        shutil.rmtree(fake.host.livepatch / "livepatch_old")   # atomic replace
        return result

    fake._cmd_insmod = insmod_with_replace
    code, out, err = cli("load", str(ko))
    assert code == 0, err
    assert "replaced livepatch_old" in out and "kpatch unload" in out


def test_load_removes_a_lingering_disabled_module_first(cli, fake, tmp_path) -> None:
    fake.add_module("livepatch_test")              # module loaded, patch freed
    code, _, err = cli("load", str(make_ko(tmp_path)))
    assert code == 0, err
    assert [argv[0] for argv in fake.commands if argv[0] != "dmesg"] == ["rmmod", "insmod"]


def test_load_reenables_a_disabling_patch(cli, fake, tmp_path) -> None:
    fake.add_patch("livepatch_test", enabled=1)
    fake.write_enabled("livepatch_test", 0)        # someone is disabling it
    code, out, err = cli("load", str(make_ko(tmp_path)))
    assert code == 0, err
    assert fake.read("livepatch_test", "enabled") == "1"
    assert fake.ran("insmod") == []


def test_load_refuses_when_another_build_is_loaded(cli, fake, tmp_path) -> None:
    fake.add_patch("livepatch_test", with_module=False)
    fake.add_module("livepatch_test", refcnt=1, build_id=b"\x01" * 20)
    code, _, err = cli("load", str(make_ko(tmp_path, build_id=b"\x02" * 20)))
    assert code == 1 and "another build of 'livepatch_test' is loaded" in err


@pytest.mark.parametrize("errno_text, dmesg, advice", [
    ("Unknown symbol in module", ["livepatch_test: Unknown symbol foo_bar (err -2)"],
     "needs symbols this kernel does not have"),
    ("Invalid module format",
     ["livepatch_test: disagrees about version of symbol module_layout"],
     "symbol CRCs differ"),
    ("Invalid module format", [], "rejected the module's format"),
    ("Invalid argument", ["livepatch: symbol 'nope' not found in symbol table"],
     "could not be enabled"),
])
def test_load_errors_say_what_to_do_with_dmesg(cli, fake, tmp_path, errno_text, dmesg,
                                               advice) -> None:
    fake.insmod_errors = [errno_text]
    fake.dmesg_after_failure = ["unrelated: eth0 link up"] + dmesg
    code, _, err = cli("load", str(make_ko(tmp_path)))
    assert code == 1
    first, *rest = err.strip().splitlines()
    assert first.startswith("kpatch: error: loading livepatch-test.ko failed: ")
    assert advice in first
    assert f"  insmod: insmod: ERROR: could not insert module {tmp_path}/livepatch-test.ko: " \
        f"{errno_text}" in rest
    assert [line for line in rest if line.startswith("  dmesg:")] == \
        [f"  dmesg: {line}" for line in dmesg]
    assert list(fake.host.livepatch.iterdir()) == []


def test_load_retries_while_another_patch_is_in_transition(cli, fake, tmp_path) -> None:
    fake.insmod_errors = ["Device or resource busy", "Device or resource busy"]
    code, out, err = cli("load", str(make_ko(tmp_path)))
    assert code == 0, err
    assert len(fake.ran("insmod")) == 3
    assert fake.sleeps.count(2.0) == 2
    assert err.count("another livepatch is in transition; retrying") == 2


def test_load_gives_up_after_busy_retries(cli, fake, tmp_path) -> None:
    fake.insmod_errors = ["Device or resource busy"] * 6
    code, _, err = cli("load", str(make_ko(tmp_path)))
    assert code == 1 and "another livepatch is in transition" in err
    assert len(fake.ran("insmod")) == 6


def test_load_of_a_module_that_registers_no_patch_removes_it(cli, fake, tmp_path) -> None:
    def insmod_without_patch(argv):
        fake.add_module("livepatch_test")
        return 0, ""

    fake._cmd_insmod = insmod_without_patch
    code, _, err = cli("load", str(make_ko(tmp_path)))
    assert code == 1 and "registered no livepatch" in err
    assert fake.ran("rmmod") == [["rmmod", "livepatch_test"]]


# --- unload ---------------------------------------------------------------------------

def test_unload_unknown_name(cli, fake) -> None:
    fake.add_patch("livepatch_other")
    code, _, err = cli("unload", "livepatch_nope")
    assert code == 2
    assert "no livepatch named 'livepatch_nope' is loaded (loaded: livepatch_other)" in err


def test_unload_of_a_replaced_patch_only_removes_the_module(cli, fake) -> None:
    fake.add_module("livepatch_old")
    code, out, err = cli("unload", "livepatch_old")
    assert code == 0, err
    assert "already disabled" in out
    assert fake.ran("rmmod") == [["rmmod", "livepatch_old"]]


def test_unload_all(cli, fake) -> None:
    fake.add_patch("livepatch_a")
    fake.add_module("livepatch_b")
    fake.add_module("not_a_patch", livepatch=False)
    code, out, err = cli("unload", "--all")
    assert code == 0, err
    assert sorted(argv[1] for argv in fake.ran("rmmod")) == ["livepatch_a", "livepatch_b"]


def test_unload_of_a_forced_patch_explains_it_cannot_be_removed(cli, fake) -> None:
    fake.add_patch("livepatch_forced")

    def rmmod_in_use(argv):
        return 1, "rmmod: ERROR: Module livepatch_forced is in use\n"

    fake._cmd_rmmod = rmmod_in_use
    code, _, err = cli("unload", "livepatch_forced")
    assert code == 1 and "a forced patch can never be removed" in err


# --- force and signal -----------------------------------------------------------------

def test_force_needs_confirmation_and_says_why(cli, fake) -> None:
    fake.add_patch("livepatch_test", transition=1)
    code, _, err = cli("force", "livepatch_test")
    assert code == 1 and "can never be removed" in err and "--confirm" in err
    assert fake.read("livepatch_test", "force") == ""


def test_force_with_confirmation(cli, fake) -> None:
    fake.add_patch("livepatch_test", transition=1)
    code, out, _ = cli("force", "livepatch_test", "--confirm")
    assert code == 0 and "can never be removed" in out
    assert fake.read("livepatch_test", "force") == "1"


def test_force_outside_a_transition_is_refused(cli, fake) -> None:
    fake.add_patch("livepatch_test")
    code, _, err = cli("force", "livepatch_test", "--confirm")
    assert code == 1 and "not in transition" in err


def test_signal_without_transition(cli, fake) -> None:
    code, out, _ = cli("signal")
    assert code == 0 and "no livepatch is in transition" in out


def test_signal_on_a_kernel_that_signals_by_itself(cli, fake) -> None:
    fake.add_task(FakeTask(42, 43, "sleeper", ["sleeper_wait+0x1/0x2 [sleeper]", "kthread+0x1"]),
                  state=0)
    fake.add_patch("livepatch_test", transition=1)
    code, out, _ = cli("signal")
    assert code == 0
    assert "by itself (every 15 s)" in out
    assert "task 42/43 (sleeper) has not switched yet" in out
    assert "sleeper_wait+0x1/0x2 [sleeper]" in out


def test_signal_writes_the_signal_file_where_it_exists(cli, fake) -> None:
    directory = fake.add_patch("livepatch_test", transition=1)
    (directory / "signal").write_text("")
    code, out, _ = cli("signal")
    assert code == 0 and "signalled" in out
    assert fake.read("livepatch_test", "signal") == "1"
