"""The compiler must be the one the kernel was built with, or the diff lies."""

import re
from pathlib import Path
from typing import Optional

from pykpatch.build.target import Target
from pykpatch.errors import Refusal
from pykpatch.kernel import kbuild
from pykpatch.process import run


def kernel_compiler_text(target: Target) -> str:
    """CONFIG_CC_VERSION_TEXT of the target, e.g. 'gcc-12 (Debian 12.2.0-14+deb12u1) 12.2.0'."""
    text = kbuild.config_value(target.config, "CC_VERSION_TEXT")
    if not text:
        raise Refusal(f"{target.config} has no CONFIG_CC_VERSION_TEXT: cannot tell which "
                      "compiler built the kernel (use --skip-compiler-check to build anyway)")
    return text


def vmlinux_comment(vmlinux: Path) -> Optional[str]:
    """The GCC identification string in vmlinux's .comment section, if any."""
    # readelf reads just that section; our ELF reader would load all 590 MB.
    proc = run(["readelf", "-p", ".comment", vmlinux], check=False)
    m = re.search(r"GCC: .*", proc.stdout)
    return m.group(0).strip() if m else None


def check_compiler(target: Target) -> str:
    """Refuse unless the local compiler is exactly the kernel's; returns its version line."""
    expected = kernel_compiler_text(target)
    cc = expected.split()[0]
    local = run([*target.tools, cc, "--version"], check=False).stdout.splitlines()
    found = local[0] if local else f"{cc}: not installed"
    if found != expected:
        where = "its build root" if target.tools else "this machine"
        raise Refusal(f"compiler mismatch: the kernel was built with '{expected}', {where} "
                      f"has '{found}'; objects would not match the running code "
                      "(install that compiler, or --skip-compiler-check at your own risk)")
    return found


def check_vmlinux_compiler(target: Target) -> None:
    """Refuse when the vmlinux names another compiler than its config does.

    Separate from :func:`check_compiler` because the vmlinux may still be
    unpacking when the compiles start.
    """
    vmlinux = target.vmlinux
    comment = vmlinux_comment(vmlinux) if vmlinux else None
    expected = kernel_compiler_text(target)
    if comment and _version_of(expected) not in comment:
        raise Refusal(f"compiler mismatch: {vmlinux} says '{comment}', its config says "
                      f"'{expected}' (use --skip-compiler-check to build anyway)")


def _version_of(text: str) -> str:
    m = re.search(r"\(.*\) [\d.]+", text)
    return m.group(0) if m else text
