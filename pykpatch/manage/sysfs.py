"""Reading and writing the kernel's livepatch state.

``/sys/kernel/livepatch/<patch>/`` holds ``enabled``, ``transition`` and
(write-only) ``force``; each object directory holds ``patched`` and one
attribute-less directory per function, named ``<func>,<sympos>``.  Loaded
modules are in ``/sys/module``, per-task progress in
``/proc/<pid>/task/<tid>/patch_state``.  What exists is probed, never
deduced from a version number: later kernels add ``replace`` and
``stack_order``, earlier ones had ``signal``.
"""

import errno
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from pykpatch.errors import KpatchError
from pykpatch.kernel import livepatch as klp
from pykpatch.kernel import module as kmod
from pykpatch.manage.host import Host
from pykpatch.manage.modinfo import parse_build_id_note


class PatchBusy(KpatchError):
    """The kernel refused a write because some patch is in transition."""


class PatchGone(KpatchError):
    """The patch's sysfs directory vanished (it was disabled and freed)."""


@dataclass(frozen=True)
class PatchedFunction:
    name: str
    sympos: int


@dataclass(frozen=True)
class PatchedObject:
    name: str                  # "vmlinux" or a module name
    patched: Optional[bool]    # None when the kernel has no `patched` file
    functions: Tuple[PatchedFunction, ...]


@dataclass(frozen=True)
class PatchStatus:
    """One patch as /sys/kernel/livepatch/<name> shows it right now."""

    name: str
    enabled: bool
    transition: bool
    objects: Tuple[PatchedObject, ...]
    attributes: Tuple[str, ...]   # the files present: the kernel's features

    @property
    def state(self) -> str:
        """enabled, enabling, disabled or disabling (as upstream kpatch says)."""
        if self.transition:
            return "enabling" if self.enabled else "disabling"
        return "enabled" if self.enabled else "disabled"

    @property
    def target_patch_state(self) -> int:
        """The patch_state tasks are moving to: `enabled` is the target."""
        return klp.PATCH_STATE_PATCHED if self.enabled else klp.PATCH_STATE_UNPATCHED


@dataclass(frozen=True)
class Task:
    """A task that has not yet switched to the transition's target."""

    pid: int
    tid: int
    comm: str
    patch_state: int
    stack: Tuple[str, ...]   # empty when unreadable (not root, no STACKTRACE)

    def to_json(self) -> Dict[str, Any]:
        return {"pid": self.pid, "tid": self.tid, "comm": self.comm,
                "patch_state": self.patch_state, "stack": list(self.stack)}


class LiveKernel:
    """The livepatch view of the running kernel (paths from :class:`Host`)."""

    def __init__(self, host: Host) -> None:
        self.host = host

    # --- patches ---------------------------------------------------------

    def patch_names(self) -> List[str]:
        try:
            return sorted(p.name for p in self.host.livepatch.iterdir() if p.is_dir())
        except FileNotFoundError:
            return []

    def has_patch(self, name: str) -> bool:
        return (self.host.livepatch / name).is_dir()

    def livepatch_supported(self) -> bool:
        return self.host.livepatch.is_dir()

    def status(self, name: str) -> PatchStatus:
        """Current state of patch *name*; PatchGone if it is not (or no longer) there."""
        directory = self.host.livepatch / name
        # The kernel removes the whole directory when a disabled patch is
        # freed, possibly while we read it: any part vanishing means gone.
        try:
            enabled = _read_int(directory / klp.ATTR_ENABLED) == 1
            transition = _read_int(directory / klp.ATTR_TRANSITION) == 1 \
                if (directory / klp.ATTR_TRANSITION).exists() else False
            entries = sorted(directory.iterdir())
            attributes = tuple(p.name for p in entries if p.is_file())
            objects = tuple(_read_object(p) for p in entries if p.is_dir())
        except (FileNotFoundError, NotADirectoryError):
            raise PatchGone(f"livepatch '{name}' is not loaded") from None
        return PatchStatus(name, enabled, transition, objects, attributes)

    def find_status(self, name: str) -> Optional[PatchStatus]:
        try:
            return self.status(name)
        except PatchGone:
            return None

    def set_enabled(self, name: str, enabled: bool) -> None:
        """Start (or reverse) a transition by writing `enabled`."""
        self._write(name, klp.ATTR_ENABLED, "1" if enabled else "0")

    def has_attribute(self, name: str, attribute: str) -> bool:
        return (self.host.livepatch / name / attribute).exists()

    def force(self, name: str) -> None:
        self._write(name, klp.ATTR_FORCE, "1")

    def signal(self, name: str) -> None:
        self._write(name, klp.ATTR_SIGNAL, "1")

    def in_transition(self) -> Optional[PatchStatus]:
        """The patch currently in transition (the kernel allows one), if any."""
        for name in self.patch_names():
            status = self.find_status(name)
            if status and status.transition:
                return status
        return None

    def _write(self, name: str, attribute: str, value: str) -> None:
        path = self.host.livepatch / name / attribute
        # os.write, not open().write(): the kernel's answer (EBUSY, EINVAL)
        # comes back from this very write and must not be lost in buffering.
        try:
            fd = os.open(path, os.O_WRONLY)
        except FileNotFoundError:
            raise PatchGone(f"livepatch '{name}' is not loaded") from None
        try:
            os.write(fd, value.encode())
        except OSError as err:
            if err.errno == errno.EBUSY:
                raise PatchBusy(f"cannot write {attribute} of '{name}': another "
                                "livepatch is in transition; wait until it finishes") from None
            raise KpatchError(f"cannot write {value} to {path}: {err.strerror}") from None
        finally:
            os.close(fd)

    # --- modules ---------------------------------------------------------

    def module_loaded(self, name: str) -> bool:
        return (self.host.sys_module / name).is_dir()

    def module_refcnt(self, name: str) -> Optional[int]:
        try:
            return _read_int(self.host.sys_module / name / kmod.ATTR_REFCNT)
        except (FileNotFoundError, ValueError):
            return None

    def livepatch_modules(self) -> List[str]:
        """Loaded modules marked livepatch, with or without a sysfs patch.

        A patch that was disabled or replaced loses its directory under
        /sys/kernel/livepatch, but its module stays until rmmod; the taint
        flag still tells it apart from other modules.
        """
        found = []
        try:
            modules = sorted(self.host.sys_module.iterdir())
        except FileNotFoundError:
            return []
        for module in modules:
            try:
                taint = (module / kmod.ATTR_TAINT).read_text()
            except OSError:
                continue
            if kmod.TAINT_LIVEPATCH in taint:
                found.append(module.name)
        return found

    def module_build_id(self, name: str) -> Optional[str]:
        note = self.host.sys_module / name / kmod.NOTES_DIR / kmod.BUILD_ID_SECTION
        try:
            return parse_build_id_note(note.read_bytes(), "=")
        except OSError:
            return None

    # --- tasks -----------------------------------------------------------

    def tasks_behind(self, target: int) -> List[Task]:
        """Tasks of a running transition that have not reached *target* yet."""
        behind = []
        for pid_dir in _numeric_dirs(self.host.proc):
            for task_dir in _numeric_dirs(pid_dir / kmod.TASK_DIR):
                state = _read_patch_state(task_dir)
                if state in (None, klp.PATCH_STATE_NONE, target):
                    continue
                task = _read_task(int(pid_dir.name), task_dir, state)
                if task is not None:
                    behind.append(task)
        return behind


def _read_int(path: Path) -> int:
    return int(path.read_text().strip())


def _read_object(directory: Path) -> PatchedObject:
    patched_file = directory / klp.ATTR_OBJECT_PATCHED
    try:
        patched: Optional[bool] = _read_int(patched_file) == 1
    except (OSError, ValueError):
        patched = None
    functions = []
    for entry in sorted(directory.iterdir()):
        name, sep, pos = entry.name.rpartition(",")
        if entry.is_dir() and sep and pos.isdigit():
            functions.append(PatchedFunction(name, int(pos)))
    return PatchedObject(directory.name, patched, tuple(functions))


def _numeric_dirs(directory: Path) -> List[Path]:
    try:
        return sorted((p for p in directory.iterdir() if p.name.isdigit()),
                      key=lambda p: int(p.name))
    except OSError:
        return []


def _read_patch_state(task_dir: Path) -> Optional[int]:
    try:
        return _read_int(task_dir / kmod.TASK_PATCH_STATE)
    except (OSError, ValueError):
        return None     # exited while we looked, or no CONFIG_LIVEPATCH


def _read_task(pid: int, task_dir: Path, state: int) -> Optional[Task]:
    try:
        comm = (task_dir / kmod.TASK_COMM).read_text().strip()
    except OSError:
        return None     # exited while we looked
    return Task(pid, int(task_dir.name), comm, state, _read_stack(task_dir))


def _read_stack(task_dir: Path) -> Tuple[str, ...]:
    try:
        lines = (task_dir / kmod.TASK_STACK).read_text().splitlines()
    except OSError:
        return ()
    # "[<0>] sleeper_wait+0x2a/0x50 [sleeper]": the address is hidden anyway.
    return tuple(line.split("] ", 1)[-1].strip() for line in lines if line.strip())
