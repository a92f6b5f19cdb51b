"""Copies of the modules this tool loaded, kept while they are loaded.

The kernel does not keep a module's ``.modinfo`` where user space can read
it, yet ``list`` and ``info`` must tell what a loaded patch is.  So a
successful ``load`` keeps a copy in ``/run/kpatch/<name>.ko`` (tmpfs: gone
at reboot, like the patch), ``unload`` deletes it, and the build ID in
``/sys/module/<name>/notes`` proves the copy is the module that is loaded.
"""

import os
import shutil
from pathlib import Path
from typing import Optional

from pykpatch.errors import KpatchError
from pykpatch.manage.host import Host
from pykpatch.manage.modinfo import ModuleInfo, read_module_info
from pykpatch.manage.sysfs import LiveKernel


def _copy_path(host: Host, name: str) -> Path:
    return host.runtime / f"{name}.ko"


def remember(host: Host, info: ModuleInfo) -> None:
    """Keep a copy of the module file just loaded."""
    destination = _copy_path(host, info.name)
    if destination.resolve() == info.path.resolve():
        return
    host.runtime.mkdir(parents=True, exist_ok=True)
    temporary = destination.with_suffix(".tmp")
    shutil.copyfile(info.path, temporary)
    os.replace(temporary, destination)


def forget(host: Host, name: str) -> None:
    try:
        _copy_path(host, name).unlink()
    except FileNotFoundError:
        pass


def recall(host: Host, name: str) -> Optional[ModuleInfo]:
    """The module info of loaded module *name*, if we have its file.

    None when there is no copy, or the copy's build ID differs from the
    loaded module's (someone insmod'ed another build of the same name).
    """
    path = _copy_path(host, name)
    if not path.is_file():
        return None
    try:
        info = read_module_info(path)
    except KpatchError:
        return None
    return info if matches_loaded(host, info) else None


def matches_loaded(host: Host, info: ModuleInfo) -> bool:
    """Whether *info* can be the loaded module of its name (build IDs agree)."""
    loaded_id = LiveKernel(host).module_build_id(info.name)
    return loaded_id is None or info.build_id is None or loaded_id == info.build_id
