"""The kernel's livepatch ABI: ELF markers, symbol names and sysfs layout.

Everything here is spelled exactly as the kernel spells it
(include/linux/livepatch.h, include/uapi/linux/elf.h,
kernel/livepatch/core.c, Documentation/livepatch/module-elf-format.rst).
"""

from pathlib import Path

# ELF markers of klp relocations (include/uapi/linux/elf.h).
SHN_LIVEPATCH = 0xFF20
SHF_RELA_LIVEPATCH = 0x00100000

# `.klp.rela.<objname>.<section>` and `.klp.sym.<objname>.<name>,<sympos>`.
KLP_RELA_PREFIX = ".klp.rela."
KLP_SYM_PREFIX = ".klp.sym."

# Object name the kernel uses for the core image (klp_object.name == NULL).
VMLINUX = "vmlinux"

# Longest module name the kernel accepts (MODULE_NAME_LEN - 1 is 55 on x86_64).
MODULE_NAME_MAX = 55


def klp_rela_section_name(objname: str, target_section: str) -> str:
    """Name of the klp relocation section for *target_section* in *objname*."""
    return f"{KLP_RELA_PREFIX}{objname}.{target_section}"


def klp_rela_section_objname(section: str) -> str:
    """The object of ``.klp.rela.<objname>.<section>``: the one whose load
    (or, for vmlinux, the patch's) makes livepatch apply the section."""
    return section[len(KLP_RELA_PREFIX):].partition(".")[0]


def klp_symbol_name(objname: str, name: str, sympos: int) -> str:
    """Name of the SHN_LIVEPATCH symbol that the kernel resolves at load."""
    return f"{KLP_SYM_PREFIX}{objname}.{name},{sympos}"


def parse_klp_symbol_name(symbol: str) -> "tuple[str, str, int]":
    """Split ``.klp.sym.<obj>.<name>,<pos>`` into (obj, name, pos).

    The object name never contains a dot (module names use ``_``), the
    symbol name may (``foo.isra.0``), so split at the first dot after the
    prefix and at the last comma.
    """
    if not symbol.startswith(KLP_SYM_PREFIX):
        raise ValueError(f"not a klp symbol: {symbol}")
    rest = symbol[len(KLP_SYM_PREFIX):]
    objname, _, tail = rest.partition(".")
    name, _, pos = tail.rpartition(",")
    return objname, name, int(pos)


def module_objname(module_name: str) -> str:
    """The klp_object name of a module: the kernel replaces '-' with '_'."""
    return module_name.replace("-", "_")


# sysfs (Documentation/ABI/testing/sysfs-kernel-livepatch).  Probe for files,
# never compare kernel versions: which attributes exist tells the features.
SYSFS_LIVEPATCH = Path("/sys/kernel/livepatch")
ATTR_ENABLED = "enabled"
ATTR_TRANSITION = "transition"
ATTR_FORCE = "force"
ATTR_SIGNAL = "signal"          # 4.15 .. ~5.1; later kernels signal by themselves
ATTR_REPLACE = "replace"        # 6.11+
ATTR_STACK_ORDER = "stack_order"  # 6.13+
ATTR_OBJECT_PATCHED = "patched"  # per object directory

# /proc/<pid>/task/<tid>/patch_state: -1 no transition, 0 unpatched, 1 patched.
PATCH_STATE_NONE = -1
PATCH_STATE_UNPATCHED = 0
PATCH_STATE_PATCHED = 1
