"""The test bed proves itself: a hand-written livepatch module changes the real kernel."""

from pathlib import Path

from pykpatch.kernel.livepatch import SYSFS_LIVEPATCH

MODULES = Path(__file__).parent / "modules"
MARKER = "pykpatch-selftest: /proc/cmdline is live patched"


def test_guest_runs_the_target_kernel(guest, kernel):
    assert guest.check("uname -r").strip() == kernel.release.release
    assert guest.run("exit 7").rc == 7
    assert guest.check(f"test -d {SYSFS_LIVEPATCH} && echo yes").strip() == "yes"


def test_put_copies_bytes_exactly(guest, tmp_path):
    blob = tmp_path / "blob"
    blob.write_bytes(bytes(range(256)) * 1000)
    guest.put(blob, "/tmp/blob")
    assert guest.check("sha256sum /tmp/blob").split()[0] == __import__("hashlib").sha256(
        blob.read_bytes()).hexdigest()


def test_selftest_livepatch_changes_and_reverts_proc_cmdline(guest, build_module):
    ko = build_module(MODULES / "selftest_cmdline")
    before = guest.check("cat /proc/cmdline")
    assert MARKER not in before

    guest.put(ko, "/tmp/selftest_cmdline.ko")
    guest.check("insmod /tmp/selftest_cmdline.ko")
    sysfs = f"{SYSFS_LIVEPATCH}/selftest_cmdline"
    guest.check(f"for i in $(seq 100); do [ $(cat {sysfs}/transition) = 0 ] && exit 0; sleep 0.2; done; exit 1")
    assert guest.check(f"cat {sysfs}/enabled").strip() == "1"
    assert guest.check("cat /proc/cmdline").strip() == MARKER

    guest.check(f"echo 0 > {sysfs}/enabled")
    guest.check(f"for i in $(seq 100); do [ -d {sysfs} ] || exit 0; sleep 0.2; done; exit 1")
    assert guest.check("cat /proc/cmdline") == before
    guest.check("rmmod selftest_cmdline")
    assert "selftest_cmdline" not in guest.check("cat /proc/modules")

    dmesg = guest.dmesg()
    assert "livepatch: 'selftest_cmdline': patching complete" in dmesg
    assert "livepatch: 'selftest_cmdline': unpatching complete" in dmesg
    for bad in ("Call Trace", "BUG:", "WARNING:", "Oops"):
        assert bad not in dmesg


def test_a_guest_that_does_not_boot_is_an_error_with_its_log_and_no_qemu_left(kernel, tmp_path):
    import subprocess

    import pytest

    from pykpatch.testbed.vm import Guest, GuestError

    # init=/bin/false exits at once: the kernel panics, and with panic=-1 QEMU stops.
    # (systemd mode: fast mode would put its own init= after ours.)
    guest = Guest(kernel, mode="systemd", workdir=tmp_path / "g",
                  cmdline_extra="pykpatch.test=1 init=/bin/false")
    with pytest.raises(GuestError) as err:
        with guest:
            pass
    assert "QEMU exited" in str(err.value)
    assert f"log: {tmp_path / 'g' / 'console.log'}" in str(err.value)
    assert "Kernel panic" in (tmp_path / "g" / "console.log").read_text()
    qemus = subprocess.run(["pgrep", "-f", "pykpatch.test=1"], capture_output=True, text=True)
    assert qemus.stdout.strip() == ""


def test_an_unknown_release_is_an_error_naming_the_packages(tmp_path):
    import pytest

    from pykpatch.errors import KpatchError
    from pykpatch.provider.debian import DebianKernel

    with pytest.raises(KpatchError, match="linux-image-6.1.0-999-cloud-amd64-unsigned"):
        DebianKernel("6.1.0-999-cloud-amd64", cache=tmp_path).packages
