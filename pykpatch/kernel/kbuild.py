"""What pykpatch relies on in kbuild, the kernel's build system (Linux 6.1).

``make prepare`` (which ``modules_prepare`` and every single-object build
depend on) also builds two programs under ``tools/``, each through a make
whose MAKEFLAGS kbuild resets (top-level Makefile, ``tools/%`` rule):

* objtool, which kbuild runs on every object right after compiling it, so
  compiled objects depend on it;
* resolve_btfids, which only the links of vmlinux and of ``.ko`` files use,
  with its own copies of libbpf and libsubcmd: half the time of
  ``modules_prepare`` on two cores, for nothing we compile.

Because MAKEFLAGS is reset, ``make -n`` does not reach those makes: a dry run
really builds both tools.
"""

import re
from pathlib import Path
from typing import List, Optional

OBJTOOL_GOAL = "tools/objtool"
# Where kbuild runs objtool from (and what compiled objects depend on).
OBJTOOL_BINARY = "tools/objtool/objtool"
RESOLVE_BTFIDS_GOAL = "tools/bpf/resolve_btfids"

# The first part of `prepare`: the config synced into include/config and
# include/generated, and the host tools under scripts/ that generate sources
# and headers during the build (asn1_compiler, selinux's genheaders...).
# After it, `make -n` can list every object: what `prepare` still does
# (scripts/mod, asm-offsets, objtool) only serves compiling.
CONFIG_AND_HOST_TOOLS_GOAL = "archprepare"

# What every single-object build depends on, and what a prepared tree has
# done once.  Its own objects (asm-offsets, bounds, scripts/mod) are compiled
# with KCFLAGS: remade in each build with other KCFLAGS than the last, they
# cost more than the object wanted.
PREPARE_GOAL = "prepare"

# What `make -n vmlinux modules` cannot find a rule for in a tree where
# nothing has been compiled: the link's input archives -- vmlinux.a, and from
# 7.x on (vmlinux.a made by a sub-make of its own) built-in.a and each lib.a.
LINK_INPUTS = re.compile(r"^(?:vmlinux\.a|built-in\.a|(?:.+/)?lib\.a)$")

# Objects `prepare` itself compiles, part of neither vmlinux nor a module.
PREPARE_OBJECT_DIR = "scripts/"

# Code built by the kernel's build but run outside the kernel proper (vDSO,
# real mode, boot and EFI stub, purgatory): never live patchable.  The EFI
# stub compiles some lib/ sources a second time (lib/cmdline.c as
# drivers/firmware/efi/libstub/lib-cmdline.o).
OUTSIDE_KERNEL_PROPER = re.compile(r"(^|/)vdso/|^arch/x86/realmode/|^arch/x86/boot/"
                                   r"|^arch/x86/purgatory/|^drivers/firmware/efi/libstub/")


def prepared_tree_files(objtool: bool) -> List[str]:
    """Files a tree has once ``modules_prepare`` is done, which compiles need
    (objects are built with ``-o prepare``: nothing will make them later)."""
    files = [".config", "include/generated/autoconf.h", "include/generated/asm-offsets.h"]
    return files + ([OBJTOOL_BINARY] if objtool else [])


def not_remade(*goals: str) -> List[str]:
    """make options treating *goals* as up to date.

    make's ``-o`` is not passed on to sub-makes, and the ``tools/...`` goals
    are prerequisites of ``prepare`` in the top-level make only, which is
    where the option takes effect.
    """
    return [arg for goal in goals for arg in ("-o", goal)]


def make_args(release: str, compiler: str) -> List[str]:
    """Arguments every ``make`` in a prepared tree gets.

    ``KERNELRELEASE`` because the source's own version (6.1.192) is not the
    running kernel's release (6.1.0-56-cloud-amd64); ``CC`` so that kconfig
    keeps the config's CONFIG_CC_VERSION_TEXT (Debian builds with gcc-12);
    resolve_btfids never built, as nothing we compile uses it.
    ``--no-print-directory``: without it, the top-level make of 6.12 calls
    itself once more (for GNU make 4.4.1's sake), and ``-o`` does not reach
    that second make.
    """
    return ["--no-print-directory", f"KERNELRELEASE={release}", f"CC={compiler}",
            *not_remade(RESOLVE_BTFIDS_GOAL)]


def objtool_runs_at_link(config: Path) -> bool:
    """Does kbuild run objtool on linked vmlinux.o and modules only
    (``delay-objtool``: IBT or Clang LTO), not on each object?"""
    return any(config_value(config, name) == "y" for name in ("X86_KERNEL_IBT", "LTO_CLANG"))


def config_value(config: Path, name: str) -> Optional[str]:
    """The value of CONFIG_<name> in a .config file, quotes removed; None if unset."""
    prefix = f"CONFIG_{name}="
    for line in config.read_text().splitlines():
        if line.startswith(prefix):
            return line[len(prefix):].strip('"')
    return None


def config_compiler(config: Path) -> str:
    """The compiler program a config was made with (``gcc-12``), from CONFIG_CC_VERSION_TEXT.

    Makes in the tree must name it as CC: another one would make kbuild rerun
    kconfig and rewrite the tree's .config.
    """
    return (config_value(config, "CC_VERSION_TEXT") or "gcc").split()[0]


def command_file(target: Path) -> Path:
    """The ``.<name>.cmd`` file kbuild keeps beside *target*: the command that
    made it and the files it depends on (fixdep's output, read back as a
    makefile by every later make of that directory)."""
    return target.with_name(f".{target.name}.cmd")
