"""The ``.pykpatch.funcs`` table: which kernel functions the patch replaces.

One entry per patched function, a C struct the module template walks::

    struct pykpatch_func {          /* 32 bytes, 8-aligned, x86-64 */
        u64 new_func;   /* R_X86_64_64 -> the new function in this module */
        u64 old_name;   /* R_X86_64_64 -> NUL-terminated name in .pykpatch.strings */
        u64 objname;    /* R_X86_64_64 -> "vmlinux" or the module name, ditto */
        u64 sympos;     /* klp_func.old_sympos: 0 = unique, N = Nth same-named */
    };

The section holds a whole number of entries and nothing else (its size
divided by 32 is the count); ``objname`` equal to "vmlinux" means the core
kernel (``klp_object.name == NULL``).  Entries are sorted by objname so a
template can group them into one ``klp_object`` per object.
"""

import struct

FUNCS_SECTION = ".pykpatch.funcs"
STRINGS_SECTION = ".pykpatch.strings"
FUNC_ENTRY = struct.Struct("<QQQQ")
FUNC_ENTRY_SIZE = FUNC_ENTRY.size
NEW_FUNC_OFFSET = 0
OLD_NAME_OFFSET = 8
OBJNAME_OFFSET = 16
SYMPOS_OFFSET = 24
