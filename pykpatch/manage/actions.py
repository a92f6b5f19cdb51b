"""The commands that change the kernel: load, unload, force, signal.

Each either finishes what it set out to do or leaves the kernel as it found
it: a module is checked before the kernel sees it, a transition that does
not finish is reversed, and a module whose patch did not come up is removed.
"""

import logging
from pathlib import Path
from typing import Callable, List, Set, TypeVar

from pykpatch.errors import InputError, KpatchError, Refusal
from pykpatch.kernel.livepatch import ATTR_FORCE, ATTR_SIGNAL
from pykpatch.kernel.module import kbuild_modname
from pykpatch.manage import loaded, transition
from pykpatch.manage.failures import Interrupted, LoadError, ManageError, TransitionTimeout
from pykpatch.manage.host import Host
from pykpatch.manage.install import Store
from pykpatch.manage.loader import BUSY_DELAY, BUSY_RETRIES, insmod, rmmod
from pykpatch.manage.modinfo import (
    ModuleInfo, read_module_info, require_livepatch, require_release,
)
from pykpatch.manage.sysfs import LiveKernel, PatchBusy, PatchStatus
from pykpatch.manage.transition import ProgressCallback, Timing

log = logging.getLogger("pykpatch")

T = TypeVar("T")


def load(host: Host, target: str, timing: Timing,
         on_progress: ProgressCallback = transition.ignore_progress) -> str:
    """Load and enable a patch given as a .ko path or an installed name."""
    live = _livepatch_kernel(host)
    info = resolve_module(host, target)
    require_livepatch(info)
    require_release(info, host.release)
    status = live.find_status(info.name)
    if status is not None:
        return _enable_loaded(host, live, info, status, timing, on_progress)
    if live.module_loaded(info.name):
        # Disabled or replaced earlier: the kernel freed the patch but the
        # module stays until rmmod, and a module cannot be enabled twice.
        log.info("removing the disabled module %s before loading it again", info.name)
        rmmod(host, info.name, timing.sleep)
    before = set(live.patch_names())
    insmod(host, info.path, info.name, timing.sleep)
    if not live.has_patch(info.name):
        rmmod(host, info.name, timing.sleep)
        raise LoadError(f"module {info.name} loaded but registered no livepatch "
                        "(does its init call klp_enable_patch()?); it was removed again")
    try:
        transition.complete(live, info.name, True, timing, on_progress)
    except (TransitionTimeout, Interrupted):
        rmmod(host, info.name, timing.sleep)
        raise
    loaded.remember(host, info)
    return _enabled_summary(live, info.name, before)


def load_all(host: Host, timing: Timing,
             on_progress: ProgressCallback = transition.ignore_progress) -> List[str]:
    """Load every patch installed for the running release, oldest first."""
    entries = Store(host).installed(host.release)
    messages, failures = [], []
    for entry in entries:
        try:
            messages.append(load(host, str(entry.path), timing, on_progress))
        except KpatchError as err:
            failures.append(err)
            messages.append(f"{entry.path.name}: {err}")
    if not entries:
        messages.append(f"no patches installed for {host.release}")
    if failures:
        raise ManageError(f"{len(failures)} of {len(entries)} installed patches "
                          f"for {host.release} did not load", messages)
    return messages


def unload(host: Host, target: str, timing: Timing,
           on_progress: ProgressCallback = transition.ignore_progress) -> str:
    """Disable patch *target* (a name or a .ko file), then remove its module."""
    live = _livepatch_kernel(host)
    name = _loaded_name(target)
    status = live.find_status(name)
    if status is None:
        if name in live.livepatch_modules():
            rmmod(host, name, timing.sleep)
            loaded.forget(host, name)
            return f"removed module {name} (its patch was already disabled)"
        loaded_names = ", ".join(_all_loaded(live)) or "none"
        raise InputError(f"no livepatch named '{name}' is loaded (loaded: {loaded_names})")
    if status.enabled:
        _retry_busy(lambda: live.set_enabled(name, False), timing)
    if status.enabled or status.transition:
        transition.complete(live, name, False, timing, on_progress)
    _rmmod_patch(host, name, timing)
    loaded.forget(host, name)
    return f"livepatch '{name}' disabled and its module removed"


def unload_all(host: Host, timing: Timing,
               on_progress: ProgressCallback = transition.ignore_progress) -> List[str]:
    live = _livepatch_kernel(host)
    names = _all_loaded(live)
    if not names:
        return ["no livepatch is loaded"]
    return [unload(host, name, timing, on_progress) for name in names]


def force(host: Host, name: str, confirmed: bool) -> str:
    """Declare every task switched; irreversible, hence the confirmation."""
    live = _livepatch_kernel(host)
    name = _loaded_name(name)
    status = live.find_status(name)
    if status is None or not status.transition:
        raise Refusal(f"livepatch '{name}' is not in transition; there is nothing to force")
    if not confirmed:
        raise Refusal(
            f"forcing '{name}' marks every task as switched without checking its "
            "stack, so a task may still run code the patch replaced, and the patch "
            "module can never be removed afterwards (only a reboot gets rid of it). "
            "If that is what you want, add --confirm")
    if not live.has_attribute(name, ATTR_FORCE):
        raise KpatchError(f"this kernel has no {ATTR_FORCE} file for livepatches")
    live.force(name)
    return (f"forced the transition of '{name}': its module can never be removed; "
            "reboot to get rid of it")


def signal(host: Host) -> List[str]:
    """Nudge the tasks that hold up the current transition."""
    live = _livepatch_kernel(host)
    status = live.in_transition()
    if status is None:
        return ["no livepatch is in transition"]
    behind = live.tasks_behind(status.target_patch_state)
    lines = transition.describe_tasks(behind, frames=3)
    if live.has_attribute(status.name, ATTR_SIGNAL):
        live.signal(status.name)
        return [f"signalled the tasks that hold up '{status.name}'"] + lines
    return [f"'{status.name}' is {status.state}; this kernel sends the tasks that hold it "
            "up a signal by itself (every 15 s), so there is nothing to add"] + lines


# --- helpers -------------------------------------------------------------------

def resolve_module(host: Host, target: str) -> ModuleInfo:
    """The module a user means: a .ko file, or a patch installed for this release."""
    path = Path(target)
    if path.exists() or target.endswith(".ko") or "/" in target:
        return read_module_info(path)
    entry = Store(host).find(target, host.release)
    if entry is not None and entry.info is not None:
        return entry.info
    raise InputError(f"'{target}' is neither a .ko file nor a patch installed for "
                     f"{host.release} (see 'kpatch list')")


def _loaded_name(target: str) -> str:
    """A loaded patch's name from what the user typed (name, file name or path)."""
    path = Path(target)
    if target.endswith(".ko") and path.is_file():
        return read_module_info(path).name
    return kbuild_modname(path.name[:-3] if path.name.endswith(".ko") else target)


def _livepatch_kernel(host: Host) -> LiveKernel:
    live = LiveKernel(host)
    if not live.livepatch_supported():
        raise KpatchError(f"this kernel has no {host.livepatch}: it was built "
                          "without CONFIG_LIVEPATCH and cannot be live patched")
    return live


def _enable_loaded(host: Host, live: LiveKernel, info: ModuleInfo, status: PatchStatus,
                   timing: Timing, on_progress: ProgressCallback) -> str:
    """`load` of a patch whose module is already there."""
    if not loaded.matches_loaded(host, info):
        raise Refusal(f"another build of '{info.name}' is loaded; 'kpatch unload "
                      f"{info.name}' first")
    if status.enabled and not status.transition:
        return f"livepatch '{info.name}' is already enabled"
    before = set(live.patch_names())
    if not status.enabled:
        # Also reverses a disabling transition that is still running.
        _retry_busy(lambda: live.set_enabled(info.name, True), timing)
    transition.complete(live, info.name, True, timing, on_progress)
    loaded.remember(host, info)
    return _enabled_summary(live, info.name, before)


def _enabled_summary(live: LiveKernel, name: str, before: Set[str]) -> str:
    status = live.status(name)
    functions = "; ".join(f"{obj.name}: " + ", ".join(f.name for f in obj.functions)
                          for obj in status.objects if obj.functions)
    text = f"livepatch '{name}' is enabled" + (f" ({functions})" if functions else "")
    replaced = sorted(before - set(live.patch_names()) - {name})
    if replaced:
        text += (f"; it replaced {', '.join(replaced)}, whose module stays loaded until "
                 "'kpatch unload'")
    return text


def _all_loaded(live: LiveKernel) -> List[str]:
    """Patches in sysfs and livepatch modules whose patch is gone, no duplicates."""
    names = live.patch_names()
    return names + [m for m in live.livepatch_modules() if m not in names]


def _rmmod_patch(host: Host, name: str, timing: Timing) -> None:
    try:
        rmmod(host, name, timing.sleep)
    except LoadError as err:
        raise LoadError(f"{err} (a forced patch can never be removed; reboot to get "
                        "rid of it)", err.details) from None


def _retry_busy(action: Callable[[], T], timing: Timing) -> T:
    """Run a sysfs write, retrying while another patch is in transition."""
    for attempt in range(BUSY_RETRIES + 1):
        try:
            return action()
        except PatchBusy:
            if attempt == BUSY_RETRIES:
                raise
            log.info("another livepatch is in transition; retrying in %.0f s", BUSY_DELAY)
            timing.sleep(BUSY_DELAY)
    raise AssertionError("unreachable")
