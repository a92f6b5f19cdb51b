"""insmod and rmmod, and what their failures mean for a live patch.

Both go through the host's one command runner.  When the kernel refuses a
module, insmod only prints an errno string; the reason is in the kernel
log.  So the log is read before and after, and the new lines that concern
the module or livepatch come with the error.
"""

import logging
import re
import time
from pathlib import Path
from typing import Callable, List, Optional, Tuple

from pykpatch.errors import KpatchError
from pykpatch.manage.failures import LoadError
from pykpatch.manage.host import Host
from pykpatch.manage.sysfs import LiveKernel

log = logging.getLogger("pykpatch")

# Upstream kpatch retries insmod 5 times, 2 s apart, when the kernel says
# EBUSY: klp_enable_patch() refuses while another patch is in transition.
BUSY_RETRIES = 5
BUSY_DELAY = 2.0
# After a patch is disabled, the kernel drops its module reference from a
# work item; rmmod before that fails with "in use".
UNUSED_WAIT = 10.0

Sleep = Callable[[float], None]

# insmod's "could not insert module X: <strerror>" -> (what it means, what to do).
# The dmesg lines that come with it are matched first (see _explain).
_ERRNO_ADVICE: List[Tuple[str, str]] = [
    ("Unknown symbol in module",
     "the module needs symbols this kernel does not have: it was built for "
     "another kernel or configuration; build it again against this kernel"),
    ("Invalid module format",
     "the kernel rejected the module's format (vermagic, symbol versions or "
     "ELF layout): it was built for another kernel; build it again against this kernel"),
    ("Exec format error",
     "the kernel rejected the module's format: it was built for another "
     "kernel or architecture; build it again against this kernel"),
    ("Device or resource busy",
     "another livepatch is in transition; wait until 'kpatch list' shows none "
     "enabling or disabling, then retry"),
    ("File exists",
     "a module with this name is already loaded; 'kpatch unload' it first"),
    ("Key was rejected by service",
     "the module's signature was rejected (Secure Boot / module.sig_enforce); "
     "sign it with a key the kernel trusts"),
    ("Required key not available",
     "the kernel only loads signed modules (Secure Boot / module.sig_enforce); "
     "sign it with a key the kernel trusts"),
    ("Operation not permitted",
     "the kernel does not allow loading modules now (lockdown, "
     "kernel.modules_disabled, or no CAP_SYS_MODULE)"),
    ("Invalid argument",
     "the livepatch could not be enabled (a function it patches was not found "
     "or is not patchable in this kernel); see the kernel messages"),
    ("No such file or directory",
     "a function or object the patch needs was not found in this kernel; "
     "see the kernel messages"),
    ("Cannot allocate memory", "the kernel ran out of memory loading the module"),
]

# Kernel log lines that name the cause more precisely than the errno.
_DMESG_ADVICE: List[Tuple[str, str]] = [
    ("disagrees about version of symbol",
     "symbol CRCs differ from this kernel's (MODVERSIONS): the module was "
     "built against other headers or another kernel build; build it again "
     "against this kernel's headers"),
    ("Unknown symbol",
     "the module needs symbols this kernel does not have: it was built for "
     "another kernel or configuration; build it again against this kernel"),
    ("version magic",
     "the module's vermagic does not match this kernel; build it again against this kernel"),
    ("Lockdown:",
     "kernel lockdown forbids unsigned modules; sign the module with a key "
     "the kernel trusts"),
]


def insmod(host: Host, path: Path, name: str, sleep: Sleep = time.sleep) -> None:
    """Load *path*; LoadError (with the kernel's own words) if refused.

    Retries while another patch is in transition, like upstream kpatch.
    """
    for attempt in range(BUSY_RETRIES + 1):
        log_before = _kernel_log(host)
        proc = host.run(["insmod", str(path)], check=False)
        if proc.returncode == 0:
            return
        output = proc.stdout.strip()
        if "Device or resource busy" in output and attempt < BUSY_RETRIES:
            log.info("another livepatch is in transition; retrying in %.0f s", BUSY_DELAY)
            sleep(BUSY_DELAY)
            continue
        kernel_lines = _new_relevant_lines(log_before, _kernel_log(host), name)
        raise LoadError(f"loading {path.name} failed: {_explain(output, kernel_lines)}",
                        [f"insmod: {line}" for line in output.splitlines()]
                        + [f"dmesg: {line}" for line in kernel_lines])


def rmmod(host: Host, name: str, sleep: Sleep = time.sleep) -> None:
    """Remove module *name* once the kernel has let go of it."""
    live = LiveKernel(host)
    waited = 0.0
    while (live.module_refcnt(name) or 0) > 0 and waited < UNUSED_WAIT:
        sleep(0.2)
        waited += 0.2
    proc = host.run(["rmmod", name], check=False)
    if proc.returncode != 0 and live.module_loaded(name):
        raise LoadError(f"removing module {name} failed: {proc.stdout.strip()}; "
                        f"try again with 'kpatch unload {name}'")


def _explain(insmod_output: str, kernel_lines: List[str]) -> str:
    for needle, advice in _DMESG_ADVICE:
        if any(needle in line for line in kernel_lines):
            return advice
    for needle, advice in _ERRNO_ADVICE:
        if needle in insmod_output:
            return advice
    return f"{insmod_output or 'insmod failed'}; see the kernel messages (dmesg)"


def _kernel_log(host: Host) -> Optional[List[str]]:
    """The kernel log, or None where it cannot be read (it only adds detail)."""
    try:
        proc = host.run(["dmesg"], check=False)
    except KpatchError:
        return None     # no dmesg installed
    return proc.stdout.splitlines() if proc.returncode == 0 else None


def _new_relevant_lines(before: Optional[List[str]], after: Optional[List[str]],
                        name: str, limit: int = 12) -> List[str]:
    """Kernel log lines added since *before* that concern *name* or livepatch."""
    if after is None:
        return []
    new = after[_common_prefix_end(before or [], after):]
    pattern = re.compile(rf"\b{re.escape(name)}\b|livepatch|module|Lockdown", re.IGNORECASE)
    return [line for line in new if pattern.search(line)][-limit:]


def _common_prefix_end(before: List[str], after: List[str]) -> int:
    """Where new lines start; the ring buffer may have dropped old ones."""
    if not before:
        return 0
    last = before[-1]
    for index in range(len(after) - 1, -1, -1):
        if after[index] == last:
            return index + 1
    return 0
