"""kpatch-build end to end: patches built for the real Debian kernels, loaded in them.

Every test runs on Debian 12's 6.1 and on Debian 13's 6.12 (built from this
host in the trixie build root, loaded in a trixie guest); the test id names
the line.  Each line's release is its pinned one while the archive has it,
else the newest of the line (printed).
"""

import hashlib
import re
import shutil
import subprocess

import pytest

from kpatch_build_support import (
    EXAMPLES, INOTIFY_MASK, Build, kernel_health, kpatch_build, load, patch_path, unload, wait_for,
)
from pykpatch.build.target import module_dependencies
from pykpatch.kernel.livepatch import SYSFS_LIVEPATCH
from pykpatch.provider.archive import DEBIAN_CODENAMES
from pykpatch.provider.debian import (
    BACKPORTS_7_RELEASE, BOOKWORM_612_RELEASE, GENERIC_RELEASE, TRIXIE_RELEASE, DebianKernel,
    host_suite, preferred_release,
)
from pykpatch.testbed.vm import Guest

# Every test runs on the first two lines; the basic cases (BASIC) also on
# the others.  Each line's release: its pinned one while the archive has it,
# else the newest of its line, flavour and Debian release (printed).
KERNEL_LINES = {
    "debian12-6.1": lambda: DebianKernel(),
    "debian13-6.12": lambda: DebianKernel(preferred_release(TRIXIE_RELEASE)),
    "debian12-backports-6.12": lambda: DebianKernel(preferred_release(BOOKWORM_612_RELEASE)),
    "debian12-6.1-generic": lambda: DebianKernel(preferred_release(GENERIC_RELEASE)),
    "debian13-backports-7.x": lambda: DebianKernel(preferred_release(BACKPORTS_7_RELEASE,
                                                                     any_series=True)),
}
FULL_LINES = ("debian12-6.1", "debian13-6.12")
BASIC = {
    "test_the_guest_runs_the_kernel_and_debian_release_under_test",
    "test_string_change_in_proc_cmdline",
    "test_meminfo_calls_static_functions_through_klp_relocations",
    "test_new_function",
    "test_module_function_patched_while_the_module_is_loaded",
    "test_module_function_patched_when_the_module_loads_later",
    "test_syscall_behaviour",
}


# Linux 7.x (beside the kernel's own klp-build): the basic cases and a changed static inline.
SEVEN = BASIC | {"test_changed_static_inline_in_a_header_patches_its_callers"}


def pytest_generate_tests(metafunc) -> None:
    if "kernel_line" in metafunc.fixturenames:
        name = metafunc.function.__name__
        lines = [line for line in KERNEL_LINES
                 if line in FULL_LINES or name in BASIC
                 or (line == "debian13-backports-7.x" and name in SEVEN)]
        metafunc.parametrize("kernel_line", lines, scope="module")


@pytest.fixture(scope="module")
def kernel(kernel_line: str) -> DebianKernel:
    kernel = KERNEL_LINES[kernel_line]()
    print(f"{kernel_line}: {kernel.release.release} (Debian {kernel.packages.version})")
    return kernel


def line(kernel: DebianKernel) -> str:
    """"6.1", "6.12": the kernel line, for the few facts that differ by compiler."""
    return ".".join(kernel.release.release.split(".")[:2])


@pytest.fixture(scope="module")
def guest(kernel: DebianKernel, tmp_path_factory):
    with Guest(kernel, workdir=tmp_path_factory.mktemp("guest")) as g:
        yield g


@pytest.fixture(scope="module")
def built(kernel, tmp_path_factory):
    """Build each patch (set) once per kernel: name -> Build."""
    cache = {}

    def build(*names: str, extra=()) -> Build:
        key = (names, tuple(extra))
        if key not in cache:
            out = tmp_path_factory.mktemp("kb")
            paths = [patch_path(n, kernel.release.release) for n in names]
            cache[key] = kpatch_build(kernel.release.release, out, paths, *extra)
        return cache[key]

    return build


@pytest.fixture
def healthy(guest):
    """Clear dmesg first; afterwards, no oops/warning and no unexpected taint."""
    guest.check("dmesg -C")
    yield guest
    assert kernel_health(guest) == {"bad_dmesg": [], "unexpected_taint": 0}


def ok(b: Build) -> Build:
    assert b.rc == 0, f"kpatch-build failed:\n{b.stderr}"
    return b


def test_the_guest_runs_the_kernel_and_debian_release_under_test(kernel, guest):
    assert guest.check("uname -r").strip() == kernel.release.release
    number = next(n for n, name in DEBIAN_CODENAMES.items() if name == kernel.release.suite)
    assert guest.check("cut -d. -f1 /etc/debian_version").strip() == str(number)


def test_string_change_in_proc_cmdline(built, healthy):
    guest, b = healthy, ok(built("cmdline-string.patch"))
    before = guest.check("cat /proc/cmdline")
    assert "pykpatch=live" not in before
    load(guest, b)
    assert guest.check("cat /proc/cmdline") == before.rstrip("\n") + " pykpatch=live\n"
    unload(guest, b)
    assert guest.check("cat /proc/cmdline") == before
    assert b.functions() == ["cmdline_proc_show"]


def test_meminfo_calls_static_functions_through_klp_relocations(built, healthy):
    guest, b = healthy, ok(built("meminfo-klp.patch"))
    sections = subprocess.run(["readelf", "-S", "--wide", str(b.module)], capture_output=True,
                              text=True).stdout
    # 7.x links a module's .text.* sections into one .text (scripts/module.lds)
    assert re.search(r"\.klp\.rela\.vmlinux\.\.text(\.meminfo_proc_show)? ", sections), sections
    symbols = subprocess.run(["readelf", "-s", "--wide", str(b.module)], capture_output=True,
                             text=True).stdout
    assert any("[0xff20] .klp.sym.vmlinux.si_swapinfo,0" in line for line in symbols.splitlines())
    total_swap = guest.check("awk '/^SwapTotal/ {print $2}' /proc/meminfo").strip()
    assert "PykpatchSwap" not in guest.check("cat /proc/meminfo")
    load(guest, b)
    assert guest.check("awk '/^PykpatchSwap/ {print $2}' /proc/meminfo").strip() == total_swap
    unload(guest, b)
    assert "PykpatchSwap" not in guest.check("cat /proc/meminfo")


def test_new_function(built, healthy):
    guest, b = healthy, ok(built("new-function.patch"))
    report = {f["name"]: f for o in b.report["objects"] for f in o["functions"]}
    assert report["pykpatch_version_note"]["status"] == "new"
    assert report["version_proc_show"]["patched"] is True
    load(guest, b)
    assert guest.check("cat /proc/version").endswith("pykpatch: new function\n")
    unload(guest, b)
    assert "pykpatch" not in guest.check("cat /proc/version")


BINFMT = "/proc/sys/fs/binfmt_misc"


def _binfmt_up(guest):
    guest.check(f"modprobe binfmt_misc && (mountpoint -q {BINFMT} || mount -t binfmt_misc none {BINFMT})")


def _binfmt_down(guest):
    guest.check(f"umount {BINFMT}; rmmod binfmt_misc")


def test_module_function_patched_while_the_module_is_loaded(built, healthy):
    guest, b = healthy, ok(built("module-binfmt-misc.patch"))
    _binfmt_up(guest)
    assert guest.check(f"cat {BINFMT}/status").strip() == "enabled"
    load(guest, b)
    assert guest.check(f"cat {BINFMT}/status").strip() == "enabled (pykpatch)"
    unload(guest, b)
    assert guest.check(f"cat {BINFMT}/status").strip() == "enabled"
    _binfmt_down(guest)


def test_module_function_patched_when_the_module_loads_later(built, healthy):
    guest, b = healthy, ok(built("module-binfmt-misc.patch"))
    assert "binfmt_misc" not in guest.check("cat /proc/modules")
    load(guest, b)
    _binfmt_up(guest)
    assert guest.check(f"cat {BINFMT}/status").strip() == "enabled (pykpatch)"
    unload(guest, b)
    assert guest.check(f"cat {BINFMT}/status").strip() == "enabled"
    _binfmt_down(guest)


# nfsd_show() (/proc/net/rpc/nfsd) calls svc_seq_show(), an export of sunrpc,
# which nfsd depends on; the patch also changes /proc/cmdline (vmlinux).
NFSD_PATCH = "module-nfsd-sunrpc.patch"
NFSD_STATS = "/proc/net/rpc/nfsd"
NFSD_MARKER = "pykpatch nfsd stats"


def _modules(guest):
    return set(guest.check("cut -d' ' -f1 /proc/modules").split())


def _relocations_of(module, section):
    """The symbols of one relocation section of *module*, as readelf shows them."""
    text = subprocess.run(["readelf", "-rW", str(module)], capture_output=True, text=True,
                          check=True).stdout
    for block in text.split("\nRelocation section ")[1:]:
        if block.startswith(f"'{section}'"):
            return [line.split()[4] for line in block.splitlines()[2:] if len(line.split()) > 4]
    raise AssertionError(f"{module.name} has no relocation section {section}")


def test_module_patch_calling_another_modules_export_loads_before_both(built, healthy, kernel):
    guest, b = healthy, ok(built(NFSD_PATCH))
    depends = subprocess.run(["modinfo", "-F", "depends", str(b.module)], capture_output=True,
                             text=True, check=True).stdout.strip()
    assert depends == ""
    # The export is resolved when nfsd loads, from sunrpc's symbols.
    assert ".klp.sym.sunrpc.svc_seq_show,0" in _relocations_of(
        b.module, ".klp.rela.nfsd..text.nfsd_show")
    before = _modules(guest)
    assert not {"nfsd", "sunrpc"} & before
    cmdline = guest.check("cat /proc/cmdline").rstrip("\n")
    load(guest, b)
    assert guest.check("cat /proc/cmdline") == f"{cmdline} pykpatch=nfsd\n"
    guest.check("modprobe nfsd")
    assert _modules(guest) - before - {b.name} == {"nfsd"} | module_dependencies(
        kernel.modules_dir, "nfsd")
    assert guest.check(f"cat {SYSFS_LIVEPATCH}/{b.name}/nfsd/patched").strip() == "1"
    assert NFSD_MARKER in guest.check(f"cat {NFSD_STATS}")
    unload(guest, b)
    assert NFSD_MARKER not in guest.check(f"cat {NFSD_STATS}")
    guest.check("modprobe -r nfsd")
    assert "nfsd" not in _modules(guest)


def test_installed_module_patch_loads_at_boot_and_patches_its_target_loaded_later(
        built, systemd_kpatch):
    guest, b = systemd_kpatch, ok(built(NFSD_PATCH))
    guest.check(f"kpatch install {guest.put(b.module, f'/tmp/{b.module.name}')}")
    guest.reboot()
    guest.check("dmesg -C")
    assert guest.check("systemctl is-active kpatch.service").strip() == "active"
    assert b.name in _modules(guest) and not {"nfsd", "sunrpc"} & _modules(guest)
    assert guest.check("cat /proc/cmdline").rstrip("\n").endswith(" pykpatch=nfsd")
    guest.check("modprobe nfsd")
    assert NFSD_MARKER in guest.check(f"cat {NFSD_STATS}")
    assert kernel_health(guest) == {"bad_dmesg": [], "unexpected_taint": 0}
    guest.check(f"kpatch uninstall {b.name} && kpatch unload {b.name} && modprobe -r nfsd")
    assert NFSD_MARKER not in guest.check(f"cat {NFSD_STATS} 2>/dev/null; true")


def test_shadow_variable_per_task(built, healthy):
    guest, b = healthy, ok(built("shadow-variable.patch"))
    load(guest, b)
    reads = "awk '/^PykpatchReads/ {print $2}' /proc/1/status"
    assert guest.check(reads).strip() == "1"
    assert guest.check(reads).strip() == "2"
    assert guest.check("grep PykpatchReads /proc/self/status").split() == ["PykpatchReads:", "1"]
    unload(guest, b)
    assert "PykpatchReads" not in guest.check("cat /proc/1/status")


def test_callbacks_run_at_patch_and_unpatch(built, healthy):
    guest, b = healthy, ok(built("callbacks.patch"))
    load(guest, b)
    assert guest.check("cat /proc/loadavg").rstrip().endswith(" pykpatch")
    lines = [l.split("pykpatch-callbacks: ")[1] for l in guest.dmesg().splitlines()
             if "pykpatch-callbacks:" in l]
    assert lines == ["pre_patch vmlinux", "post_patch vmlinux"]
    unload(guest, b)
    lines = [l.split("pykpatch-callbacks: ")[1] for l in guest.dmesg().splitlines()
             if "pykpatch-callbacks:" in l]
    assert lines[2:] == ["pre_unpatch vmlinux", "post_unpatch vmlinux"]


def test_static_local_variable(built, healthy):
    guest, b = healthy, ok(built("static-local.patch"))
    load(guest, b)
    assert guest.check("cat /proc/cmdline").rstrip().endswith("pykpatch-reads=1")
    assert guest.check("cat /proc/cmdline").rstrip().endswith("pykpatch-reads=2")
    unload(guest, b)


def test_static_key_of_the_kernel_image(built, healthy):
    guest, b = healthy, ok(built("static-key.patch"))
    sections = subprocess.run(["readelf", "-S", "--wide", str(b.module)], capture_output=True,
                              text=True).stdout
    assert "__jump_table" in sections
    smt = guest.check("cat /sys/devices/system/cpu/smt/active").strip()
    load(guest, b)
    assert guest.check("cat /proc/version").endswith(f"pykpatch: smt={smt}\n")
    unload(guest, b)


def test_function_with_a_tracepoint(built, healthy):
    guest, b = healthy, ok(built("comm-tracepoint.patch"))
    rename = "sh -c 'printf pykpatch-comm > /proc/$$/comm; cat /proc/$$/comm'"
    assert guest.check(rename).strip() == "pykpatch-comm"
    load(guest, b)
    assert guest.check(rename).strip() == "pykpatch-live"
    # The tracepoint inside the new function still fires.
    guest.check("mountpoint -q /sys/kernel/tracing || mount -t tracefs none /sys/kernel/tracing")
    guest.check("echo > /sys/kernel/tracing/trace; echo 1 > /sys/kernel/tracing/events/task/task_rename/enable")
    guest.check(rename)
    guest.check("echo 0 > /sys/kernel/tracing/events/task/task_rename/enable")
    assert "newcomm=pykpatch-comm" in guest.check("cat /sys/kernel/tracing/trace")
    unload(guest, b)
    assert guest.check(rename).strip() == "pykpatch-comm"


def test_line_number_shift_patches_only_the_changed_function(built):
    # comm-tracepoint.patch adds lines to fs/exec.c above functions with
    # WARN_ON_ONCE and BUG_ON, whose line numbers all move.
    b = ok(built("comm-tracepoint.patch"))
    assert b.functions(patched_only=True) == ["__set_task_comm"]
    # Its own split-off parts come with it (6.12: __set_task_comm.cold).
    assert all(f.startswith("__set_task_comm") for f in b.functions())


def test_function_with_a_user_copy(built, healthy, kernel):
    guest, b = healthy, ok(built("usercopy-filldir64.patch"))
    sections = subprocess.run(["readelf", "-S", "--wide", str(b.module)], capture_output=True,
                              text=True).stdout
    assert "__ex_table" in sections
    if line(kernel) != "6.1":
        # 6.11+: access_ok() reads USER_PTR_MAX as a runtime constant that
        # vmlinux fills in only in its own code; the patched copy loads it.
        assert "USER_PTR_MAX" in _relocations_of(b.module, ".rela.text.filldir64")
        assert "runtime_ptr_" not in sections
    guest.check("mkdir -p /tmp/d && touch /tmp/d/pykpatch-hidden /tmp/d/visible")
    assert guest.check("ls /tmp/d").split() == ["pykpatch-hidden", "visible"]
    load(guest, b)
    assert guest.check("ls /tmp/d").split() == ["visible"]
    unload(guest, b)
    assert guest.check("ls /tmp/d").split() == ["pykpatch-hidden", "visible"]


def test_syscall_behaviour(built, healthy):
    guest, b = healthy, ok(built("syscall-uname.patch"))
    assert guest.check("uname -s").strip() == "Linux"
    load(guest, b)
    assert guest.check("uname -s").strip() == "pykpatch"
    unload(guest, b)
    assert guest.check("uname -s").strip() == "Linux"


def test_kpatch_syscall_macros_build_the_same_patch(built):
    # An existing kpatch patch, using KPATCH_SYSCALL_DEFINE1 and adding an
    # #include at the top of kernel/sys.c (every later line number moves).
    plain, macro = ok(built("syscall-uname.patch")), ok(built("syscall-uname-kpatch-macro.patch"))
    assert sorted(macro.functions()) == sorted(plain.functions())
    assert sorted(macro.functions(patched_only=True)) == ["__ia32_sys_newuname", "__x64_sys_newuname"]


def test_five_files_at_once(built, healthy):
    guest, b = healthy, ok(built("five-files.patch"))
    assert len(b.report["objects"]) == 5
    load(guest, b)
    assert guest.check("cat /proc/cmdline").rstrip().endswith("pykpatch=five")
    assert guest.check("cat /proc/version").endswith("pykpatch: five files\n")
    assert guest.check("cat /proc/loadavg").rstrip().endswith(" five")
    assert guest.check("cat /proc/uptime").rstrip().endswith(" five")
    assert guest.check("awk '/^PykpatchFive/ {print $2}' /proc/meminfo").strip() == "20"
    unload(guest, b)
    assert "five" not in guest.check("cat /proc/cmdline /proc/version /proc/loadavg /proc/uptime")


def test_two_patches_in_a_row_with_atomic_replace(built, healthy):
    guest = healthy
    first, second = ok(built("cmdline-string.patch")), ok(built("cmdline-second.patch"))
    load(guest, first)
    load(guest, second)
    # Replace: once the second patch's transition is over, the first is disabled.
    wait_for(guest, f"[ ! -d /sys/kernel/livepatch/{first.name} ]")
    assert guest.check("cat /proc/cmdline").rstrip().endswith("pykpatch=second")
    guest.check(f"rmmod {first.name}")
    assert guest.check("cat /proc/cmdline").rstrip().endswith("pykpatch=second")
    unload(guest, second)
    assert "pykpatch=" not in guest.check("cat /proc/cmdline")


# Where inotify_mark_user_mask() ends up inlined, by compiler.
INOTIFY_MASK_CALLER = {"6.1": "inotify_fdinfo", "6.12": "inotify_show_fdinfo", "7.3": "inotify_show_fdinfo"}


def test_changed_static_inline_in_a_header_patches_its_callers(built, healthy, kernel):
    # fs/notify/inotify/inotify.h's inotify_mark_user_mask() is inlined into
    # fs/notify/fdinfo.c's fdinfo code (gcc-12: inotify_fdinfo(); gcc-14
    # inlines that too, into inotify_show_fdinfo()).
    guest, b = healthy, ok(built("header-static-inline.patch"))
    objects = {o["object"]: o for o in b.report["objects"]}
    assert set(objects) == {"fs/notify/fdinfo.o", "fs/notify/inotify/inotify_fsnotify.o",
                            "fs/notify/inotify/inotify_user.o"}
    assert all(o["why"] == "includes fs/notify/inotify/inotify.h" for o in objects.values())
    assert b.functions(patched_only=True) == [INOTIFY_MASK_CALLER[line(kernel)]]
    assert guest.check(INOTIFY_MASK).strip() == "100"
    load(guest, b)
    assert guest.check(INOTIFY_MASK).strip() == "40000100"
    unload(guest, b)
    assert guest.check(INOTIFY_MASK).strip() == "100"


# -- refusals --------------------------------------------------------------------

def _tree_digest(kernel, rel: str) -> str:
    return hashlib.sha256((kernel.source_tree() / rel).read_bytes()).hexdigest()


def test_changed_init_function_is_refused(built, kernel):
    before = _tree_digest(kernel, "fs/proc/cmdline.c")
    b = built("init-function-FAIL.patch")
    assert b.rc == 1
    assert "proc_cmdline_init" in b.stderr and "__init" in b.stderr
    assert "Traceback" not in b.stderr
    assert _tree_digest(kernel, "fs/proc/cmdline.c") == before


def test_a_new_function_that_nothing_calls_is_refused(built):
    # A single file of a commit whose callers live in another file: the
    # module would load and change nothing.
    b = built("uncalled-new-function-FAIL.patch")
    assert b.rc == 1 and "Traceback" not in b.stderr
    assert "nothing to redirect: the patch only adds pykpatch_uncalled" in b.stderr


def test_lib_function_built_without_ftrace_is_refused(built):
    # lib/Makefile removes the ftrace flags from every object of lib/, so
    # nothing there can be redirected (it used to be refused by path alone).
    b = built("lib-kobject-uevent-FAIL.patch")
    assert b.rc == 1, b.stderr
    assert "lib/kobject_uevent.o" in b.stderr
    assert "add_uevent_var: changed but has no __fentry__ call" in b.stderr
    assert "Traceback" not in b.stderr


def test_patch_that_does_not_apply_is_refused_with_patchs_message(kernel, tmp_path):
    before = _tree_digest(kernel, "fs/proc/cmdline.c")
    bad = tmp_path / "stale.patch"
    bad.write_text((EXAMPLES / "cmdline-string.patch").read_text().replace(
        "seq_puts(m, saved_command_line);", "seq_puts(m, saved_command_line_gone);"))
    b = kpatch_build(kernel.release.release, tmp_path, [bad])
    assert b.rc == 1
    assert "stale.patch does not apply" in b.stderr
    assert "FAILED" in b.stderr  # patch's own words: "Hunk #1 FAILED at 7."
    assert _tree_digest(kernel, "fs/proc/cmdline.c") == before
    assert not (kernel.source_tree() / ".pykpatch-backup").exists()


def test_source_that_does_not_match_the_kernel_is_refused(kernel, tmp_path):
    """A vmlinux whose cmdline_proc_show differs from what the source compiles to."""
    from pykpatch.build.verify import TargetBinary

    doctored = tmp_path / "vmlinux"
    shutil.copyfile(kernel.vmlinux, doctored)
    binary = TargetBinary(doctored)
    func = binary.candidates("cmdline_proc_show")[0]
    endbr = 4 if binary.code(func).startswith(ENDBR64) else 0
    with open(doctored, "r+b") as f:
        f.seek(binary.file_offset(func) + endbr + 5)  # right after the __fentry__ call
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0xFF]))
    b = kpatch_build(kernel.release.release, tmp_path, [EXAMPLES / "cmdline-string.patch"],
                     "-v", str(doctored))
    assert b.rc == 1
    assert "cmdline_proc_show: the source does not match the running kernel" in b.stderr
    assert not list(tmp_path.glob("*.ko"))


ENDBR64 = bytes.fromhex("f30f1efa")


def test_changed_struct_layout_in_a_header_is_refused(built):
    b = built("struct-layout-FAIL.patch")
    assert b.rc == 1
    assert "struct inotify_event_info changes layout (size 32 -> 40; member 'pykpatch_flags' " \
           "added at offset 20" in b.stderr
    assert "shadow variable" in b.stderr
    assert "Traceback" not in b.stderr


def test_a_prepared_tree_given_with_sourcedir(kernel, tmp_path):
    """-s/-v/--headers: the path for kernels that are not Debian's (here, the same tree).

    Such a tree is built with the host's tools: on a host of another Debian
    release than the kernel's (no build root for -s), the compiler the tree
    was configured with is missing, and that is the one-line answer."""
    tree = kernel.source_tree()
    config_before = (tree / ".config").read_bytes()
    b = kpatch_build(kernel.release.release, tmp_path, [EXAMPLES / "cmdline-string.patch"],
                     "-s", str(tree), "-c", str(tree / ".config"), "-v", str(kernel.vmlinux),
                     "--headers", str(kernel.headers_dir), "-n", "livepatch-sourcedir")
    assert (tree / ".config").read_bytes() == config_before
    if kernel.release.suite != host_suite():
        print(f"branch: host {host_suite()} is not the kernel's {kernel.release.suite}")
        assert b.rc == 1 and "Traceback" not in b.stderr
        assert f"cannot run '{kernel.compiler()}': not installed" in b.stderr
        return
    print("branch: the host is the kernel's Debian release")
    assert b.rc == 0, b.stderr
    assert b.module.name == "livepatch-sourcedir.ko"
    assert b.functions() == ["cmdline_proc_show"]
