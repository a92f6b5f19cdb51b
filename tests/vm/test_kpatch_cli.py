"""The `kpatch` command against the real Debian kernel in a QEMU guest.

Fixtures from tests/vm/conftest.py: ``guest_kpatch`` (the session guest,
fast boot, pykpatch pip-installed so `kpatch` is on its PATH),
``systemd_guest`` (full systemd boot), ``pykpatch_wheel``, ``kernel`` and
``build_module(src_dir) -> Path`` (first .ko of an out-of-tree build; the
other .ko files of that directory lie beside it).

Modules (tests/vm/modules/): livepatch_cmdline_a/b replace
cmdline_proc_show() with a marker (cumulative, replace=true, with origin
keys); sleeper/ holds kpatch_sleeper (an ordinary module whose kthread
sleeps in kpatch_sleeper_wait() until `echo 1 > /proc/kpatch_sleeper`) and
livepatch_sleeper (patches that function, so its transition stalls).
"""

import json
from pathlib import Path
from typing import Callable, Iterator, List

import pytest

from pykpatch.kernel.livepatch import SYSFS_LIVEPATCH

pytestmark = pytest.mark.vm

MODULES = Path(__file__).parent / "modules"
MARKER_A = "kpatch-cli-test: cmdline patch a"
MARKER_B = "kpatch-cli-test: cmdline patch b"
STORE = "/var/lib/kpatch"


def _put_module(guest, build_module: Callable[[Path], Path], name: str) -> str:
    """Build tests/vm/modules/<dir> and copy <name>.ko into the guest's /tmp."""
    directory = "sleeper" if name in ("kpatch_sleeper", "livepatch_sleeper") else name
    ko = build_module(MODULES / directory).parent / f"{name}.ko"
    return guest.put(ko, f"/tmp/{name}.ko")


def _loaded_state(guest) -> List[str]:
    """Everything a failed command must leave untouched."""
    modules = guest.check("cut -d' ' -f1 /proc/modules | sort").split()
    patches = guest.check(f"ls {SYSFS_LIVEPATCH}").split()
    return modules + ["|"] + patches


def _kpatch_json(guest, *args: str) -> dict:
    return json.loads(guest.check("kpatch " + " ".join(args) + " --json"))


@pytest.fixture
def kguest(guest_kpatch) -> Iterator[object]:
    """The guest, left without our patches and sleeper whatever a test did."""
    yield guest_kpatch
    guest_kpatch.run("echo 1 > /proc/kpatch_sleeper 2>/dev/null; kpatch unload --all; "
                     "rmmod kpatch_sleeper 2>/dev/null; true", timeout=180)
    # Fail here, in the test that left something behind, not in the next one.
    left = [m for m in _loaded_state(guest_kpatch)
            if m.startswith(("livepatch_", "kpatch_sleeper"))]
    assert not left, f"left loaded after the test: {left}"


# --- load / list / info / unload -------------------------------------------------------

def test_load_list_info_unload(kguest, build_module) -> None:
    ko = _put_module(kguest, build_module, "livepatch_cmdline_a")
    original = kguest.check("cat /proc/cmdline")
    assert MARKER_A not in original

    out = kguest.check(f"kpatch load {ko}")
    assert "livepatch 'livepatch_cmdline_a' is enabled (vmlinux: cmdline_proc_show)" in out
    assert kguest.check("cat /proc/cmdline").strip() == MARKER_A
    assert kguest.check(f"cat {SYSFS_LIVEPATCH}/livepatch_cmdline_a/transition").strip() == "0"

    text = kguest.check("kpatch list")
    assert "livepatch_cmdline_a [enabled]" in text
    assert "    vmlinux: cmdline_proc_show" in text
    assert "cmdline-a.patch (sha256 39f651859a24)" in text

    report = _kpatch_json(kguest, "list")
    (patch,) = [p for p in report["patches"] if p["name"] == "livepatch_cmdline_a"]
    assert patch["state"] == "enabled" and patch["registered"] and patch["module_loaded"]
    assert patch["objects"] == [{"name": "vmlinux", "patched": True,
                                 "functions": [{"name": "cmdline_proc_show", "sympos": 1}]}]
    assert patch["origin"]["patches"][0]["file"] == "cmdline-a.patch"
    assert report["kernel"]["livepatch"] is True

    info = _kpatch_json(kguest, "info", "livepatch_cmdline_a")
    assert info["loaded"]["state"] == "enabled"
    assert info["module"]["modinfo"]["livepatch"] == ["Y"]

    out = kguest.check("kpatch unload livepatch_cmdline_a")
    assert "disabled and its module removed" in out
    assert kguest.check("cat /proc/cmdline") == original
    assert "livepatch_cmdline_a" not in _loaded_state(kguest)
    dmesg = kguest.dmesg()
    assert "livepatch: 'livepatch_cmdline_a': unpatching complete" in dmesg
    assert "Call Trace" not in dmesg


def test_atomic_replace_then_unload_both(kguest, build_module) -> None:
    a = _put_module(kguest, build_module, "livepatch_cmdline_a")
    b = _put_module(kguest, build_module, "livepatch_cmdline_b")
    original = kguest.check("cat /proc/cmdline")
    kguest.check(f"kpatch load {a}")
    out = kguest.check(f"kpatch load {b}")
    assert "replaced livepatch_cmdline_a" in out
    assert kguest.check("cat /proc/cmdline").strip() == MARKER_B

    patches = {p["name"]: p for p in _kpatch_json(kguest, "list")["patches"]}
    assert patches["livepatch_cmdline_b"]["state"] == "enabled"
    assert patches["livepatch_cmdline_a"]["registered"] is False
    assert patches["livepatch_cmdline_a"]["module_loaded"] is True
    assert "livepatch_cmdline_a [disabled: replaced" in kguest.check("kpatch list")

    kguest.check("kpatch unload livepatch_cmdline_a")
    assert kguest.check("cat /proc/cmdline").strip() == MARKER_B
    kguest.check("kpatch unload livepatch_cmdline_b")
    assert kguest.check("cat /proc/cmdline") == original
    state = _loaded_state(kguest)
    assert "livepatch_cmdline_a" not in state and "livepatch_cmdline_b" not in state


# --- stalled transitions -----------------------------------------------------------------

# The sleeper kthread's stack (no pgrep in a minimal Debian).
SLEEPER_STACK = "/proc/$(grep -lx kpatch-sleeper /proc/[0-9]*/comm | cut -d/ -f3)/stack"


def _wait_for_sleeper_in(guest, function: str) -> None:
    guest.check(f"for i in $(seq 50); do grep -q {function} {SLEEPER_STACK} && exit 0; "
                "sleep 0.2; done; exit 1")


def _start_sleeper(guest, build_module) -> str:
    sleeper = _put_module(guest, build_module, "kpatch_sleeper")
    guest.check(f"insmod {sleeper}")
    _wait_for_sleeper_in(guest, "kpatch_sleeper_wait")
    return _put_module(guest, build_module, "livepatch_sleeper")


def test_stalled_load_times_out_and_leaves_nothing(kguest, build_module) -> None:
    ko = _start_sleeper(kguest, build_module)
    before = _loaded_state(kguest)
    result = kguest.run(f"kpatch load --timeout 10 {ko}", timeout=120)
    assert result.rc == 3, result.out
    assert "timed out after 10 s" in result.out
    assert "(kpatch-sleeper) has not switched yet" in result.out
    assert "kpatch_sleeper_wait" in result.out
    assert "the kernel is as before" in result.out
    assert _loaded_state(kguest) == before
    assert "livepatch_sleeper" not in kguest.check("cat /proc/modules")


def test_stalled_load_finishes_once_the_task_is_released(kguest, build_module) -> None:
    ko = _start_sleeper(kguest, build_module)
    kguest.check(f"setsid sh -c 'kpatch load --timeout 120 {ko} > /tmp/load.out 2>&1; "
                 "echo $? > /tmp/load.rc' < /dev/null > /dev/null 2>&1 &")
    # the plain (non-TTY) progress names the blocked task and where it sleeps
    kguest.check("for i in $(seq 100); do grep -q kpatch_sleeper_wait /tmp/load.out "
                 "&& exit 0; sleep 0.3; done; exit 1", timeout=60)
    progress = kguest.check("cat /tmp/load.out")
    assert "enabling livepatch 'livepatch_sleeper'" in progress
    assert "(kpatch-sleeper) has not switched yet" in progress
    listing = _kpatch_json(kguest, "list")
    (patch,) = [p for p in listing["patches"] if p["name"] == "livepatch_sleeper"]
    assert patch["state"] == "enabling"
    assert [t["comm"] for t in patch["behind"]] == ["kpatch-sleeper"]

    kguest.check("echo 1 > /proc/kpatch_sleeper")
    kguest.check("for i in $(seq 200); do [ -s /tmp/load.rc ] && exit 0; sleep 0.3; done; "
                 "exit 1", timeout=90)
    assert kguest.check("cat /tmp/load.rc").strip() == "0", kguest.check("cat /tmp/load.out")
    assert "livepatch 'livepatch_sleeper' is enabled (kpatch_sleeper: kpatch_sleeper_wait)" \
        in kguest.check("cat /tmp/load.out")


def test_stalled_unload_is_reversed(kguest, build_module) -> None:
    ko = _start_sleeper(kguest, build_module)
    kguest.check("echo 1 > /proc/kpatch_sleeper")
    kguest.check(f"kpatch load {ko}")
    kguest.check("echo 0 > /proc/kpatch_sleeper")     # back into the (new) function
    _wait_for_sleeper_in(kguest, "livepatch_kpatch_sleeper_wait")
    result = kguest.run("kpatch unload --timeout 8 livepatch_sleeper", timeout=120)
    assert result.rc == 3, result.out
    assert "the patch stays active, as before" in result.out
    assert kguest.check(f"cat {SYSFS_LIVEPATCH}/livepatch_sleeper/enabled").strip() == "1"
    assert kguest.check(f"cat {SYSFS_LIVEPATCH}/livepatch_sleeper/transition").strip() == "0"
    kguest.check("echo 1 > /proc/kpatch_sleeper")
    kguest.check("kpatch unload livepatch_sleeper", timeout=120)


# --- bad input -------------------------------------------------------------------------------

def test_bad_input_is_refused_and_nothing_is_loaded(kguest, build_module, tmp_path) -> None:
    plain = _put_module(kguest, build_module, "kpatch_sleeper")
    good = build_module(MODULES / "livepatch_cmdline_a")
    release = kguest.check("uname -r").strip()
    abi = release.split("-")[1]                       # 6.1.0-<abi>-cloud-amd64
    other = release.replace(f"-{abi}-", f"-{'9' * len(abi)}-", 1)
    assert other != release and len(other) == len(release)   # keeps the ELF layout
    foreign = tmp_path / "livepatch_foreign.ko"
    foreign.write_bytes(good.read_bytes().replace(
        f"vermagic={release} ".encode(), f"vermagic={other} ".encode()))
    foreign_in_guest = kguest.put(foreign, "/tmp/livepatch_foreign.ko")
    kguest.check("echo hello > /tmp/text.ko")
    before = _loaded_state(kguest)

    cases = [
        ("/tmp/text.ko", 2, "not a kernel module"),
        (plain, 1, "is not a livepatch module"),
        (foreign_in_guest, 1, f"built for kernel {other}"),
        ("/tmp/missing.ko", 2, "no such file"),
        ("no_such_patch", 2, "neither a .ko file nor a patch installed"),
    ]
    for argument, code, message in cases:
        result = kguest.run(f"kpatch load {argument}")
        assert result.rc == code, (argument, result.out)
        assert message in result.out, (argument, result.out)
        assert result.out.startswith("kpatch: error: ")
        assert _loaded_state(kguest) == before, argument
    result = kguest.run("kpatch unload no_such_patch")
    assert result.rc == 2 and "no livepatch named 'no_such_patch' is loaded" in result.out
    result = kguest.run(f"kpatch install {foreign_in_guest}")
    assert result.rc == 1 and not kguest.run(f"ls {STORE}/{release}/*.ko").ok


def test_non_root_user_gets_one_line(kguest) -> None:
    result = kguest.run("setpriv --reuid=65534 --regid=65534 --clear-groups kpatch load --all")
    assert result.rc == 1
    assert result.out.strip().count("\n") == 0 and "must run as root" in result.out


# --- install and boot ----------------------------------------------------------------------

def test_install_survives_reboot_and_uninstall_removes_it(systemd_kpatch, build_module) -> None:
    guest = systemd_kpatch
    ko = _put_module(guest, build_module, "livepatch_cmdline_a")
    release = guest.check("uname -r").strip()
    out = guest.check(f"kpatch install {ko}")
    assert f"{STORE}/{release}/livepatch_cmdline_a.ko" in out
    assert guest.check("systemctl is-enabled kpatch.service").strip() == "enabled"

    guest.reboot()
    assert guest.check("cat /proc/cmdline").strip() == MARKER_A
    assert guest.check("systemctl is-active kpatch.service").strip() == "active"
    report = _kpatch_json(guest, "list")
    assert [p["name"] for p in report["patches"]] == ["livepatch_cmdline_a"]
    assert report["installed"][0]["enabled"] is True

    guest.check("kpatch uninstall livepatch_cmdline_a")
    assert not guest.run(f"ls {STORE}/{release}").ok
    guest.reboot()
    assert MARKER_A not in guest.check("cat /proc/cmdline")
    assert _kpatch_json(guest, "list")["patches"] == []


def test_kpatch_enable_0_skips_the_unit(kernel, pykpatch_wheel, build_module, tmp_path) -> None:
    from pykpatch.testbed.vm import Guest
    ko = build_module(MODULES / "livepatch_cmdline_a")
    with Guest(kernel, mode="systemd", workdir=tmp_path / "g",
               cmdline_extra="kpatch.enable=0") as guest:
        remote = guest.put(pykpatch_wheel, f"/tmp/{pykpatch_wheel.name}")
        guest.check("python3 -m pip install -q --no-deps --break-system-packages "
                    f"{remote}", timeout=300)
        guest.check(f"kpatch install {guest.put(ko, '/tmp/livepatch_cmdline_a.ko')}")
        guest.reboot()
        assert "kpatch.enable=0" in guest.check("cat /proc/cmdline")
        assert MARKER_A not in guest.check("cat /proc/cmdline")
        condition = guest.check("systemctl show -p ConditionResult kpatch.service").strip()
        assert condition == "ConditionResult=no"
        assert _kpatch_json(guest, "list")["patches"] == []
