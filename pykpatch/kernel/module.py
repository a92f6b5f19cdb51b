"""The kernel's module-loader ABI as seen from user space.

Where a loaded module shows up (``/sys/module``), what a ``.ko`` file
carries (``.modinfo``, ``.gnu.linkonce.this_module``) and where the kernel
reports per-task state (``/proc``).  Spelled as the kernel spells it
(include/linux/module.h, kernel/module/main.c, kernel/panic.c,
fs/proc/base.c, Documentation/ABI/testing/sysfs-module).
"""

from pathlib import Path

# --- the .ko file -----------------------------------------------------------

# NUL-separated "key=value" strings (MODULE_INFO, MODULE_LICENSE, ...).
MODINFO_SECTION = ".modinfo"
# Holds `struct module __this_module`, written by modpost into <mod>.mod.c.
THIS_MODULE_SECTION = ".gnu.linkonce.this_module"
# Build ID note; its bytes also appear as /sys/module/<mod>/notes/<section>.
BUILD_ID_SECTION = ".note.gnu.build-id"

# `struct module` starts with `enum module_state state; struct list_head
# list; char name[MODULE_NAME_LEN];` (include/linux/module.h, unchanged since
# 2.6), so the name sits after an int (padded to pointer alignment) and two
# pointers.  Keyed by ELF class bits.
THIS_MODULE_NAME_OFFSET = {64: 24, 32: 12}
MODULE_NAME_LEN = 56

# modinfo keys the kernel itself reads.
MODINFO_VERMAGIC = "vermagic"   # "<release> SMP preempt mod_unload modversions "
MODINFO_LIVEPATCH = "livepatch"  # "Y" marks a livepatch module (kernel/module/main.c)
MODINFO_LIVEPATCH_YES = "Y"
MODINFO_NAME = "name"           # KBUILD_MODNAME, added by modpost
MODINFO_DEPENDS = "depends"     # modules whose exports it uses, comma-separated (modpost)

# --- a loaded module ---------------------------------------------------------

SYSFS_MODULE = Path("/sys/module")
ATTR_REFCNT = "refcnt"
ATTR_TAINT = "taint"
# Taint letter of a module with livepatch=Y (TAINT_LIVEPATCH, kernel/panic.c).
TAINT_LIVEPATCH = "K"
NOTES_DIR = "notes"

# --- tasks -------------------------------------------------------------------

PROC = Path("/proc")
TASK_DIR = "task"
TASK_PATCH_STATE = "patch_state"  # CONFIG_LIVEPATCH (fs/proc/base.c)
TASK_COMM = "comm"
TASK_STACK = "stack"              # CONFIG_STACKTRACE, readable by root only
PROC_CMDLINE = "cmdline"


def kbuild_modname(name: str) -> str:
    """The name the kernel knows a module by: Kbuild turns '-' into '_'."""
    return name.replace("-", "_")
