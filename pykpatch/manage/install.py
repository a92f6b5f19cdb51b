"""Installed patches: ``/var/lib/kpatch/<release>/*.ko`` and the boot unit.

The layout is upstream kpatch's, so patches installed by either tool are
found by both.  ``kpatch.service`` runs ``kpatch load --all`` at boot,
which loads the patches of the release that booted, in the order they were
installed (a later cumulative patch then replaces an earlier one).
"""

import logging
import os
import shutil
import sys
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import List, Optional

from pykpatch.errors import InputError, KpatchError
from pykpatch.kernel.module import kbuild_modname
from pykpatch.manage.host import Host
from pykpatch.manage.modinfo import (
    ModuleInfo, read_module_info, require_livepatch, require_release,
)

log = logging.getLogger("pykpatch")

UNIT_NAME = "kpatch.service"
# Placeholder in the shipped unit for the command that runs kpatch.
_UNIT_COMMAND = "@KPATCH@"


@dataclass(frozen=True)
class Installed:
    """One installed module file (info is None when the file is unreadable)."""

    path: Path
    release: str
    info: Optional[ModuleInfo]

    @property
    def name(self) -> str:
        return self.info.name if self.info else kbuild_modname(self.path.stem)


class Store:
    """The installed patches of every kernel release on this host."""

    def __init__(self, host: Host) -> None:
        self.host = host

    def directory(self, release: str) -> Path:
        return self.host.store / release

    def installed(self, release: str) -> List[Installed]:
        """Patches for *release* in install order (oldest first)."""
        try:
            files = [p for p in self.directory(release).iterdir()
                     if p.suffix == ".ko" and p.is_file()]
        except FileNotFoundError:
            return []
        files.sort(key=lambda p: (p.stat().st_mtime, p.name))
        return [Installed(p, release, _try_read(p)) for p in files]

    def releases(self) -> List[str]:
        """Kernel releases with at least one installed patch."""
        try:
            dirs = [d for d in self.host.store.iterdir() if d.is_dir()]
        except FileNotFoundError:
            return []
        return sorted(d.name for d in dirs if any(d.glob("*.ko")))

    def find(self, name: str, release: str) -> Optional[Installed]:
        """The installed patch called *name* (module or file name, '-' or '_')."""
        wanted = kbuild_modname(name[:-3] if name.endswith(".ko") else name)
        for entry in self.installed(release):
            if wanted in (entry.name, kbuild_modname(entry.path.stem)):
                return entry
        return None

    def install(self, path: Path, release: str) -> Installed:
        """Copy a checked livepatch module into the store for *release*.

        A file that already is its place in the store (a package unpacked
        it there) is checked and registered, not copied.
        """
        info = read_module_info(path)
        require_livepatch(info)
        require_release(info, release)
        directory = self.directory(release)
        directory.mkdir(parents=True, exist_ok=True)
        previous = self.find(info.name, release)
        destination = directory / f"{path.stem}.ko"
        if path.resolve() == destination.resolve():
            # dpkg dated it by the package's build; the mtime records the install order.
            os.utime(destination)
        else:
            _copy_into_store(path, destination)
        if previous is not None and previous.path != destination:
            previous.path.unlink()
            log.info("replaced %s", previous.path)
        return Installed(destination, release, read_module_info(destination))

    def uninstall(self, name: str, release: str) -> Installed:
        entry = self.find(name, release)
        if entry is None:
            names = ", ".join(e.name for e in self.installed(release)) or "none"
            raise InputError(f"no patch named '{name}' is installed for {release} "
                             f"(installed: {names})")
        entry.path.unlink()
        _remove_if_empty(self.directory(release))
        _remove_if_empty(self.host.store)
        return entry

    def empty(self) -> bool:
        return not any(self.host.store.glob("*/*.ko"))


def _copy_into_store(path: Path, destination: Path) -> None:
    temporary = destination.with_name(f".{destination.name}.tmp")
    # copy (not copy2): the file's mtime records the install order.
    shutil.copyfile(path, temporary)
    os.replace(temporary, destination)


def _try_read(path: Path) -> Optional[ModuleInfo]:
    try:
        return read_module_info(path)
    except KpatchError as err:
        log.warning("%s", err)
        return None


def _remove_if_empty(directory: Path) -> None:
    try:
        directory.rmdir()
    except OSError:
        pass  # not empty, or already gone: both fine


# --- the boot unit ------------------------------------------------------------

def unit_text(command: str) -> str:
    """The shipped kpatch.service with *command* (how to run kpatch) filled in."""
    template = resources.files("pykpatch").joinpath("data").joinpath(UNIT_NAME).read_text()
    return template.replace(_UNIT_COMMAND, command)


def kpatch_command() -> str:
    """How systemd should run this very kpatch at boot.

    The console script when we were started through it; otherwise this
    interpreter with ``-m``, which also works from a virtualenv.
    """
    argv0 = Path(sys.argv[0]).resolve() if sys.argv and sys.argv[0] else None
    if argv0 is not None and argv0.name == "kpatch" and argv0.is_file():
        return str(argv0)
    return f"{sys.executable} -m pykpatch.cli.kpatch"


def enable_unit(host: Host, command: str) -> List[str]:
    """Write and enable kpatch.service; returns warnings (none on success)."""
    unit = host.unit_dir / UNIT_NAME
    text = unit_text(command)
    if not unit.exists() or unit.read_text() != text:
        unit.parent.mkdir(parents=True, exist_ok=True)
        unit.write_text(text)
        # Only a running systemd can reload; enabling works offline too.
        _systemctl(host, "daemon-reload")
    return _systemctl(host, "enable", UNIT_NAME)


def disable_unit(host: Host) -> List[str]:
    if not (host.unit_dir / UNIT_NAME).exists():
        return []
    return _systemctl(host, "disable", UNIT_NAME)


def _systemctl(host: Host, *args: str) -> List[str]:
    try:
        proc = host.run(["systemctl", *args], check=False)
    except KpatchError:
        return ["systemctl not found: installed patches will not be loaded at boot "
                "unless something runs 'kpatch load --all'"]
    if proc.returncode != 0 and args[0] != "daemon-reload":
        return [f"'systemctl {' '.join(args)}' failed: {proc.stdout.strip()}"]
    return []
