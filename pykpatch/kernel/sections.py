"""Kernel-facing facts about sections: special tables and their structs.

The special sections are arrays of fixed-size entries that point at code
(``__bug_table`` entries point at a ``ud2``, ``__ex_table`` at a faulting
instruction...).  A patch keeps only the entries of the functions it
includes.  Entry sizes are those of the kernel structs named here and come
from the target kernel's DWARF; they are never assumed.
"""

from dataclasses import dataclass
from typing import Dict, Optional


@dataclass(frozen=True)
class SpecialSection:
    """How to split and filter one special section.

    *struct* names the C struct of one entry (its size is a build input);
    *fixed_size* is used instead for arrays of plain ``s32``/``u64``.
    *companion* is a section whose entries parallel this one index by index
    (ORC: ``.orc_unwind`` goes with ``.orc_unwind_ip``).
    """

    name: str
    struct: Optional[str] = None
    fixed_size: Optional[int] = None
    companion: Optional[str] = None
    key_offset: Optional[int] = None  # byte offset of a static key/call key in the entry


SPECIAL_SECTIONS: Dict[str, SpecialSection] = {s.name: s for s in (
    SpecialSection("__bug_table", struct="bug_entry"),
    SpecialSection("__ex_table", struct="exception_table_entry"),
    # struct jump_entry { s32 code; s32 target; long key; } (relative form)
    SpecialSection("__jump_table", struct="jump_entry", key_offset=8),
    SpecialSection(".altinstructions", struct="alt_instr"),
    SpecialSection(".parainstructions", struct="paravirt_patch_site"),
    # struct static_call_site { s32 addr; s32 key; }
    SpecialSection(".static_call_sites", struct="static_call_site", key_offset=4),
    SpecialSection(".retpoline_sites", fixed_size=4),
    SpecialSection(".return_sites", fixed_size=4),
    SpecialSection(".call_sites", fixed_size=4),
    SpecialSection(".ibt_endbr_seal", fixed_size=4),
    SpecialSection(".smp_locks", fixed_size=4),
    SpecialSection(".orc_unwind_ip", fixed_size=4, companion=".orc_unwind"),
    SpecialSection(".printk_index", fixed_size=8),
    SpecialSection("__mcount_loc", fixed_size=8),
    SpecialSection("__patchable_function_entries", fixed_size=8),
    SpecialSection(".kcfi_traps", fixed_size=4),
)}

# x86 static branches emitted as "jmp" for objtool to turn into a NOP (the
# JUMP_LABEL_HACK form) set this bit in their __jump_table key addend.  On
# kernels whose objtool runs only on the linked vmlinux.o and modules (IBT,
# LTO), a compiled object still holds the jmp, and the binary the NOP.
JUMP_ENTRY_CODE_OFFSET = 0
JUMP_LABEL_NOP_AT_BUILD = 2
X86_NOPS = {2: bytes.fromhex("6690"), 5: bytes.fromhex("0f1f440000")}
X86_JMPS = {0xEB: 2, 0xE9: 5}  # jmp rel8, jmp rel32: opcode -> length

# x86 runtime constants (6.11+, vmlinux only): runtime_const_ptr(sym) is a
# "movabs $RUNTIME_CONST_PLACEHOLDER, %reg" whose immediate an entry of
# section runtime_ptr_<sym> points at; runtime_const_shift_right_32(val, sym)
# a shift by an immediate listed in runtime_shift_<sym>.  vmlinux writes the
# values into its own code at boot; nothing does for modules.
RUNTIME_PTR_PREFIX = "runtime_ptr_"
RUNTIME_SHIFT_PREFIX = "runtime_shift_"
RUNTIME_CONST_PLACEHOLDER = 0x0123456789ABCDEF

# What objtool writes into an object.  Where it runs on the linked module
# (objtool_runs_at_link), it writes them for the whole patch module, but only
# if no input has them already: a copied one would make it skip them all.
OBJTOOL_SECTIONS = frozenset({".orc_unwind", ".orc_unwind_ip", ".orc_header", ".return_sites",
                              ".retpoline_sites", ".call_sites", ".ibt_endbr_seal",
                              ".static_call_sites", ".cfi_sites"})

# The companion of .orc_unwind_ip: one struct orc_entry per ip entry.
ORC_UNWIND = ".orc_unwind"
ORC_ENTRY_STRUCT = "orc_entry"

# Sections that only make sense whole, next to a special table.
ALTINSTR_REPLACEMENT = ".altinstr_replacement"

# Kernel struct names whose sizes a diff may need.
STRUCT_NAMES = ("bug_entry", "exception_table_entry", "jump_entry", "alt_instr",
                "paravirt_patch_site", "static_call_site", "orc_entry", "pi_entry")

# Functions whose immediate arguments are __LINE__ (and so change when code
# above them moves); see the differ's __LINE__ heuristic.
LINE_NUMBER_CALLEES = (
    "__warn_printk", "warn_slowpath_fmt", "warn_slowpath_null", "__might_sleep",
    "___might_sleep", "__might_fault", "__might_resched", "printk", "_printk",
    "lockdep_rcu_suspicious", "__btrfs_abort_transaction", "__btrfs_handle_fs_error",
    "__btrfs_std_error", "rcu_read_lock_held",
)

# Per-call-site statics: each use site gets its own copy, so they are never
# paired between original and patched objects (names as GCC and Clang spell
# them: "__key.12", "func.__key", "__already_done.3").
SPECIAL_STATIC_PREFIXES = ("__key.", "__warned.", "descriptor.", "__func__.", "__FUNCTION__.",
                           "_rs.", "CSWTCH.", "_entry.", "__already_done.", "__print_once.",
                           "__UNIQUE_ID_ddebug", "__msg.", "__print_fmt_")
SPECIAL_STATIC_NAMES = ("__key", "__warned", "descriptor", "__func__", "__FUNCTION__", "_rs",
                        "CSWTCH", "_entry", "__already_done", "__print_once", "_entry_ptr")
SPECIAL_STATIC_SECTIONS = ("__verbose", "__dyndbg", ".data.once", ".data..once")

# Entry hook every patchable function calls first (-mfentry).
FENTRY = "__fentry__"

# Sections whose content never matters for a patch.
IGNORED_SECTION_PREFIXES = (".debug_", ".discard", ".llvm", ".note", ".comment", ".BTF",
                            ".eh_frame", ".sframe", ".kpatch.", ".pykpatch.", ".rela.debug_",
                            ".rela.discard", ".rela.eh_frame", ".rela.BTF")

# Sections holding __init/__exit code and data (gone after boot).
# (.ref.text is not among them: __ref code may call __init code but stays
# after boot, like text_poke_bp() in arch/x86/kernel/alternative.c.)
INIT_SECTION_PREFIXES = (".init.", ".exit.", ".meminit.", ".initcall", ".con_initcall",
                         ".init_array", "__param", ".security_initcall", ".x86_cpu_dev.init")

# Tables the kernel reads only when something appears (boot, a device, a
# module load): an entry a patch adds, removes or changes is never seen by
# the running kernel.  Prefix -> what its entries register.
REGISTRATION_TABLES = {
    ".pci_fixup_": "PCI quirks, applied when a device is found",
    ".initcall": "initcalls, run once at boot or module load",
    ".con_initcall": "console initcalls, run once at boot",
    ".security_initcall": "LSM initcalls, run once at boot",
    ".init.setup": "boot parameters (__setup/early_param), parsed once at boot",
    "__param": "module parameters, registered at boot or module load",
    ".x86_cpu_dev.init": "CPU vendor drivers, chosen once at boot",
}

# The __exit part of those: module removal code (discarded in vmlinux).
EXIT_SECTION_PREFIXES = (".exit.",)

# Sections made of metadata tables that the build regenerates (exports,
# tracepoint and parameter records...): changes there are not code changes.
METADATA_SECTION_PREFIXES = ("__ksymtab", "___ksymtab", "__kcrctab", "___kcrctab",
                             "__ksymtab_strings", ".modinfo", ".gnu.linkonce", "__versions",
                             "_ftrace_events", "__tracepoints", "__bpf_raw_tp_map",
                             "__syscalls_metadata", "_error_injection_whitelist",
                             "_ftrace_eval_map", "__trace_printk_fmt", "__tracepoint_str",
                             ".static_call.text", "__verbose", "__dyndbg", ".data.once",
                             ".data..once")

# Author annotations (kpatch-macros.h spelling and ours): sections of
# pointers to functions to treat as unchanged, and patch callbacks.
IGNORE_FUNCTIONS_SECTIONS = (".kpatch.ignore.functions", ".pykpatch.ignore.functions")
CALLBACK_SECTION_PREFIXES = (".kpatch.callbacks.", ".pykpatch.callbacks.")
