"""Helpers for the quick tests of the ``kpatch`` command (no tests here).

Nothing in these tests touches the real kernel:

* ``make_ko`` compiles a tiny ELF relocatable with gcc that carries the
  two sections a ``.ko`` is recognised by (``.modinfo`` and
  ``.gnu.linkonce.this_module``) and, optionally, a build-ID note.
* ``FakeKernel`` is a **fake** ``/sys`` + ``/proc`` tree under tmp_path,
  with a command runner whose ``insmod``/``rmmod`` edit that tree, and a
  ``tick`` (used as the sleep function) that moves transitions along the
  way the kernel does: unblocked tasks switch, a finished disable frees the
  patch directory.  It exercises our parsing and decision logic only; the
  real kernel's behaviour is checked by tests/vm/test_kpatch_cli.py.
* the autouse ``no_real_kernel`` fixture (imported by every test file)
  makes any attempt to run insmod/rmmod/modprobe/systemctl for real fail.
"""

import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import pytest

from pykpatch.manage.host import Host
from pykpatch.manage.transition import Timing

RELEASE = "6.1.0-28-cloud-amd64"
VERMAGIC = f"{RELEASE} SMP preempt mod_unload modversions "
SHA = "ab" * 32

_DANGEROUS = {"insmod", "rmmod", "modprobe", "systemctl"}


@pytest.fixture(autouse=True)
def no_real_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    real_run = subprocess.run

    def guarded(argv, *args, **kwargs):  # type: ignore[no-untyped-def]
        program = Path(str(argv[0] if isinstance(argv, (list, tuple)) else argv).split()[0]).name
        if program in _DANGEROUS:
            raise AssertionError(f"a quick test tried to run {program} for real: {argv}")
        return real_run(argv, *args, **kwargs)

    monkeypatch.setattr(subprocess, "run", guarded)


def needs_gcc() -> None:
    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed")


def _c_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def make_ko(directory: Path, filename: str = "livepatch-test.ko", *,
            name: Optional[str] = "livepatch_test",
            modinfo: Optional[List[Tuple[str, str]]] = None,
            livepatch: bool = True, vermagic: Optional[str] = VERMAGIC,
            build_id: Optional[bytes] = None, this_module: bool = True) -> Path:
    """Compile a .ko-like relocatable ELF file (no kernel headers needed)."""
    needs_gcc()
    fields: List[Tuple[str, str]] = []
    if livepatch:
        fields.append(("livepatch", "Y"))
    fields.append(("license", "GPL"))
    fields += modinfo or []
    if vermagic is not None:
        fields.append(("vermagic", vermagic))
    lines = []
    for index, (key, value) in enumerate(fields):
        lines.append(f'static const char modinfo_{index}[] __attribute__((section(".modinfo"), '
                     f'used, aligned(1))) = {_c_string(f"{key}={value}")};')
    if this_module:
        # struct module starts with an int state and a list_head: name at 24.
        lines.append("struct module_head { int state; void *next, *prev; char name[56]; };")
        lines.append('struct module_head __this_module __attribute__((section('
                     f'".gnu.linkonce.this_module"), used)) = {{ .name = {_c_string(name or "")} }};')
    if build_id is not None:
        desc = ", ".join(str(b) for b in build_id)
        lines.append("struct note { unsigned namesz, descsz, type; char name[4]; "
                     f"unsigned char desc[{len(build_id)}]; }};")
        lines.append('static const struct note build_id __attribute__((section('
                     '".note.gnu.build-id"), used, aligned(4))) = '
                     f'{{ 4, {len(build_id)}, 3, "GNU", {{ {desc} }} }};')
    source = directory / (filename + ".c")
    source.write_text("\n".join(lines) + "\n")
    out = directory / filename
    subprocess.run(["gcc", "-c", "-o", str(out), str(source)], check=True)
    return out


def origin_fields(patches: str = f"cmdline.patch:sha256:{SHA}") -> List[Tuple[str, str]]:
    return [("pykpatch.patches", patches), ("pykpatch.release", RELEASE),
            ("pykpatch.version", "0.1.0")]


@dataclass
class FakeTask:
    pid: int
    tid: int
    comm: str
    stack: List[str]
    stuck: bool = False   # never switches on its own (sleeps in a patched function)


@dataclass
class FakeKernel:
    """A fake livepatch sysfs/proc tree plus insmod/rmmod/dmesg/systemctl."""

    root: Path
    release: str = RELEASE
    commands: List[List[str]] = field(default_factory=list)
    insmod_errors: List[str] = field(default_factory=list)   # popped per insmod
    dmesg_after_failure: List[str] = field(default_factory=list)
    functions: Dict[str, List[str]] = field(default_factory=lambda: {"vmlinux": ["cmdline_proc_show,1"]})
    now: float = 0.0
    sleeps: List[float] = field(default_factory=list)
    dmesg_lines: List[str] = field(default_factory=lambda: ["[    0.0] Linux version 6.1"])

    def __post_init__(self) -> None:
        self.host = Host.under(self.root, self.release, self.run)
        self.host.livepatch.mkdir(parents=True)
        self.host.sys_module.mkdir(parents=True)
        self.host.proc.mkdir(parents=True)
        self.tasks: List[FakeTask] = []
        self._targets: Dict[str, int] = {}   # last `enabled` the kernel acted on
        self.add_task(FakeTask(1, 1, "systemd", ["do_epoll_wait+0x1/0x2"]))

    # --- the tree -----------------------------------------------------------

    def add_task(self, task: FakeTask, state: int = -1) -> None:
        directory = self.host.proc / str(task.pid) / "task" / str(task.tid)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "comm").write_text(task.comm + "\n")
        (directory / "stack").write_text("".join(f"[<0>] {f}\n" for f in task.stack))
        (directory / "patch_state").write_text(f"{state}\n")
        self.tasks.append(task)

    def add_module(self, name: str, livepatch: bool = True, refcnt: int = 0,
                   build_id: Optional[bytes] = None) -> None:
        directory = self.host.sys_module / name
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "taint").write_text("OEK\n" if livepatch else "OE\n")
        (directory / "refcnt").write_text(f"{refcnt}\n")
        if build_id is not None:
            notes = directory / "notes"
            notes.mkdir(exist_ok=True)
            (notes / ".note.gnu.build-id").write_bytes(
                (4).to_bytes(4, "little") + len(build_id).to_bytes(4, "little")
                + (3).to_bytes(4, "little") + b"GNU\0" + build_id)

    def add_patch(self, name: str, enabled: int = 1, transition: int = 0,
                  functions: Optional[Dict[str, List[str]]] = None,
                  with_module: bool = True) -> Path:
        directory = self.host.livepatch / name
        directory.mkdir(parents=True)
        (directory / "enabled").write_text(f"{enabled}\n")
        (directory / "transition").write_text(f"{transition}\n")
        self._targets[name] = enabled
        (directory / "force").write_text("")
        for obj, funcs in (functions or self.functions).items():
            (directory / obj).mkdir()
            (directory / obj / "patched").write_text("1\n")
            for func in funcs:
                (directory / obj / func).mkdir()
        if with_module:
            self.add_module(name, refcnt=1)
        return directory

    def read(self, name: str, attribute: str) -> str:
        return (self.host.livepatch / name / attribute).read_text().strip()

    def task_state(self, task: FakeTask) -> int:
        path = self.host.proc / str(task.pid) / "task" / str(task.tid) / "patch_state"
        return int(path.read_text())

    def _set_task_state(self, task: FakeTask, state: int) -> None:
        path = self.host.proc / str(task.pid) / "task" / str(task.tid) / "patch_state"
        path.write_text(f"{state}\n")

    # --- the kernel's part ------------------------------------------------------

    def tick(self, seconds: float) -> None:
        """Sleep function: time passes, the kernel reacts to `enabled` writes."""
        self.sleeps.append(seconds)
        self.now += seconds
        for directory in list(self.host.livepatch.iterdir()):
            self._notice_enabled_write(directory.name)
            if self.read(directory.name, "transition") == "1":
                self._advance(directory)

    def _notice_enabled_write(self, name: str) -> None:
        """A changed `enabled` starts a transition, or reverses the running one."""
        enabled = int(self.read(name, "enabled"))
        if self._targets.setdefault(name, enabled) == enabled:
            return
        self._targets[name] = enabled
        if self.read(name, "transition") == "0":
            self._start_transition(name, enabled)
        # In transition: reversed; tasks keep their state, the target flips.

    def clock(self) -> float:
        return self.now

    def timing(self, timeout: float = 5.0) -> Timing:
        return Timing(timeout=timeout, stall_after=1.0, poll=0.5, task_refresh=0.5,
                      clock=self.clock, sleep=self.tick)

    def _advance(self, directory: Path) -> None:
        target = int(self.read(directory.name, "enabled"))
        behind = False
        for task in self.tasks:
            state = self.task_state(task)
            if state in (-1, target):
                continue
            if task.stuck:
                behind = True
            else:
                self._set_task_state(task, target)
        if behind:
            return
        for task in self.tasks:
            self._set_task_state(task, -1)
        if target == 1:
            (directory / "transition").write_text("0\n")
        else:
            # A disabled patch is freed: directory gone, module reference dropped.
            shutil.rmtree(directory)
            (self.host.sys_module / directory.name / "refcnt").write_text("0\n")

    def _start_transition(self, name: str, target: int) -> None:
        self._targets[name] = target
        (self.host.livepatch / name / "transition").write_text("1\n")
        for task in self.tasks:
            self._set_task_state(task, 1 - target)

    def write_enabled(self, name: str, value: int) -> None:
        """What the kernel does on `echo value > enabled` (for set-up)."""
        (self.host.livepatch / name / "enabled").write_text(f"{value}\n")
        self._start_transition(name, value)

    # --- commands ---------------------------------------------------------------

    def run(self, argv, check: bool = False, **_: object) -> "subprocess.CompletedProcess[str]":
        argv = [str(a) for a in argv]
        self.commands.append(argv)
        handler: Callable[[List[str]], Tuple[int, str]] = getattr(
            self, "_cmd_" + Path(argv[0]).name.replace("-", "_"), self._cmd_unknown)
        rc, out = handler(argv)
        return subprocess.CompletedProcess(argv, rc, out)

    def _cmd_unknown(self, argv: List[str]) -> Tuple[int, str]:
        raise AssertionError(f"unexpected command {argv}")

    def _cmd_dmesg(self, argv: List[str]) -> Tuple[int, str]:
        return 0, "".join(line + "\n" for line in self.dmesg_lines)

    def _cmd_systemctl(self, argv: List[str]) -> Tuple[int, str]:
        return 0, ""

    def _cmd_insmod(self, argv: List[str]) -> Tuple[int, str]:
        from pykpatch.manage.modinfo import read_module_info
        if self.insmod_errors:
            error = self.insmod_errors.pop(0)
            self.dmesg_lines += self.dmesg_after_failure
            return 1, f"insmod: ERROR: could not insert module {argv[1]}: {error}\n"
        info = read_module_info(Path(argv[1]))
        self.add_patch(info.name, enabled=1, transition=1)
        (self.host.sys_module / info.name / "refcnt").write_text("1\n")
        self._start_transition(info.name, 1)
        self.dmesg_lines.append(f"livepatch: enabling patch '{info.name}'")
        return 0, ""

    def _cmd_rmmod(self, argv: List[str]) -> Tuple[int, str]:
        name = argv[1]
        module = self.host.sys_module / name
        if not module.is_dir():
            return 1, f"rmmod: ERROR: Module {name} is not currently loaded\n"
        if int((module / "refcnt").read_text()) > 0:
            return 1, f"rmmod: ERROR: Module {name} is in use\n"
        shutil.rmtree(module)
        return 0, ""

    def ran(self, program: str) -> List[List[str]]:
        return [argv for argv in self.commands if Path(argv[0]).name == program]


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeKernel:
    """A fake kernel tree under tmp_path/root (import this fixture to use it).

    The real kernel starts (or reverses) a transition within the write to
    `enabled`; the fake does it right after our write returns.
    """
    from pykpatch.manage.sysfs import LiveKernel
    kernel = FakeKernel(tmp_path / "root")
    original = LiveKernel.set_enabled

    def set_enabled(self: LiveKernel, name: str, enabled: bool) -> None:
        original(self, name, enabled)
        kernel._notice_enabled_write(name)

    monkeypatch.setattr(LiveKernel, "set_enabled", set_enabled)
    return kernel


@pytest.fixture
def cli(fake: FakeKernel, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
        ) -> Callable[..., Tuple[int, str, str]]:
    """Run `kpatch ARGS...` against the fake kernel, as root, with its clock.

    Returns (exit code, stdout, stderr).
    """
    from pykpatch.cli import kpatch as kpatch_cli
    monkeypatch.setattr(kpatch_cli, "_is_root", lambda: True)
    monkeypatch.setattr(kpatch_cli, "Timing", lambda timeout: fake.timing(timeout))

    def run(*args: str) -> Tuple[int, str, str]:
        capsys.readouterr()
        try:
            code = kpatch_cli.main(list(args), host=fake.host)
        except SystemExit as exit:       # argparse
            code = int(exit.code or 0)
        out, err = capsys.readouterr()
        return code, out, err

    return run
