"""What is loaded and installed, as plain data (the JSON of ``list``/``info``).

The text output is rendered from the same data (:mod:`describe`), so the
two cannot disagree.  The shape is stable; ``schema`` changes only when a
field changes meaning or disappears (adding fields keeps it).
"""

from pathlib import Path
from typing import Any, Dict, List, Optional

from pykpatch.errors import InputError
from pykpatch.kernel.module import kbuild_modname
from pykpatch.manage import loaded
from pykpatch.manage.host import Host
from pykpatch.manage.install import Installed, Store
from pykpatch.manage.modinfo import ModuleInfo, read_module_info
from pykpatch.manage.sysfs import LiveKernel, PatchStatus
from pykpatch.provider.archive import version_key

SCHEMA = 1

Json = Dict[str, Any]


def list_report(host: Host) -> Json:
    """Every loaded livepatch, every patch installed for the running release, and the
    installed patches of every kernel: installed on this machine or with patches."""
    live = LiveKernel(host)
    store = Store(host)
    installed = store.installed(host.release)
    return {
        "schema": SCHEMA,
        "kernel": _kernel(host, live),
        "patches": [_patch(host, live, name, installed) for name in _loaded_names(live)],
        "installed": [_installed(live, entry) for entry in installed],
        "kernels": [_kernel_patches(host, live, store, release) for release in _releases(host, store)],
    }


def _releases(host: Host, store: Store) -> List[str]:
    """The running release first, then the others, newest name first."""
    others = set(store.releases()) | set(_installed_kernels(host))
    others.discard(host.release)
    return [host.release] + sorted(others, key=version_key, reverse=True)


def _installed_kernels(host: Host) -> List[str]:
    try:
        return [d.name for d in host.modules_root.iterdir() if (d / "kernel").is_dir()]
    except FileNotFoundError:
        return []


def _kernel_patches(host: Host, live: LiveKernel, store: Store, release: str) -> Json:
    running = release == host.release
    return {
        "release": release,
        "running": running,
        # False: patches kept for a kernel whose modules are gone (removed, or a chroot's).
        "installed": running or (host.modules_root / release / "kernel").is_dir(),
        "patches": [_installed(live, entry, running) for entry in store.installed(release)],
    }



def info_report(host: Host, target: str) -> Json:
    """Everything known about one patch, named or given as a .ko file."""
    live = LiveKernel(host)
    store = Store(host)
    installed = store.installed(host.release)
    path = Path(target)
    info: Optional[ModuleInfo]
    if path.is_file() or target.endswith(".ko"):
        info = read_module_info(path)
        name = info.name
    else:
        name = kbuild_modname(target)
        entry = store.find(target, host.release)
        info = loaded.recall(host, name) or (entry.info if entry else None)
    is_loaded = name in _loaded_names(live)
    if info is None and not is_loaded:
        raise InputError(f"'{target}' is neither a .ko file, nor a loaded livepatch, "
                         f"nor a patch installed for {host.release} (see 'kpatch list')")
    return {
        "schema": SCHEMA,
        "name": name,
        "module": _module(info) if info else None,
        "loaded": _patch(host, live, name, installed) if is_loaded else None,
        "installed": [_installed(live, e) for e in installed if e.name == name],
    }


def _kernel(host: Host, live: LiveKernel) -> Json:
    in_transition = live.in_transition()
    return {
        "release": host.release,
        "livepatch": live.livepatch_supported(),
        "in_transition": in_transition.name if in_transition else None,
    }


def _loaded_names(live: LiveKernel) -> List[str]:
    names = live.patch_names()
    return names + [m for m in live.livepatch_modules() if m not in names]


def _patch(host: Host, live: LiveKernel, name: str, installed: List[Installed]) -> Json:
    status = live.find_status(name)
    info = _loaded_module_info(host, name, installed)
    entry: Json = {
        "name": name,
        "state": status.state if status else "disabled",
        "enabled": bool(status and status.enabled),
        "transition": bool(status and status.transition),
        # False: the kernel freed the patch (disabled or replaced), the module lingers.
        "registered": status is not None,
        "module_loaded": live.module_loaded(name),
        "objects": _objects(status) if status else [],
        "origin": info.origin.to_json() if info and info.origin else None,
        "file": str(info.path) if info else None,
        "behind": [],
    }
    if status is not None and status.transition:
        entry["behind"] = [t.to_json() for t in live.tasks_behind(status.target_patch_state)]
    return entry


def _loaded_module_info(host: Host, name: str, installed: List[Installed]) -> Optional[ModuleInfo]:
    """The file of a loaded module: our copy, else an installed one of that build."""
    info = loaded.recall(host, name)
    if info is not None:
        return info
    for entry in installed:
        if entry.name == name and entry.info and loaded.matches_loaded(host, entry.info):
            return entry.info
    return None


def _objects(status: PatchStatus) -> List[Json]:
    return [{"name": obj.name, "patched": obj.patched,
             "functions": [{"name": f.name, "sympos": f.sympos} for f in obj.functions]}
            for obj in status.objects]


def _installed(live: LiveKernel, entry: Installed, running: bool = True) -> Json:
    """An installed patch; of a kernel that is not *running*, nothing is loaded."""
    info = entry.info
    status = live.find_status(entry.name) if running else None
    return {
        "name": entry.name,
        "file": str(entry.path),
        "release": entry.release,
        "vermagic": info.vermagic if info else None,
        "origin": info.origin.to_json() if info and info.origin else None,
        "loaded": running and live.module_loaded(entry.name),
        "enabled": bool(status and status.enabled),
    }


def _module(info: ModuleInfo) -> Json:
    return {
        "file": str(info.path),
        "name": info.name,
        "livepatch": info.is_livepatch,
        "vermagic": info.vermagic,
        "release": info.release,
        "build_id": info.build_id,
        "origin": info.origin.to_json() if info.origin else None,
        "modinfo": info.modinfo_json(),
    }
