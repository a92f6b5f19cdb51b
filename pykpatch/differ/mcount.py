"""Stage: a fresh ``__mcount_loc`` for the functions the output carries.

ftrace finds the ``__fentry__`` call sites of a module through this table;
livepatch redirects the *old* functions through ftrace, and the new ones
need entries too so they can be traced (and patched again later).  One
``u64`` per included function with an fentry call, relocated with
``R_X86_64_64`` to ``function + offset of the call``.
"""

from typing import List

from pykpatch.differ.include import included_functions
from pykpatch.differ.state import DiffState
from pykpatch.differ.write import Output, add_relocation
from pykpatch.elf.constants import R_X86_64_64, R_X86_64_NONE, R_X86_64_PLT32, SHF_ALLOC, SHT_PROGBITS
from pykpatch.elf.model import Section
from pykpatch.kernel.sections import FENTRY
from pykpatch.kernel.symvers import read_symvers

MCOUNT_LOC = "__mcount_loc"


def add_mcount_loc(state: DiffState, out: Output) -> None:
    """Append ``__mcount_loc`` (and its relocations) to the output."""
    sites = []
    for func in included_functions(state):
        if func not in state.patched.has_fentry:
            continue
        call = min((r for r in state.patched.function_relas(func) if r.symbol.name == FENTRY),
                   key=lambda r: r.offset)
        sites.append((func, call.offset - 1 - func.value))
    if not sites:
        return
    sec = out.add_section(Section(name=MCOUNT_LOC, type=SHT_PROGBITS, flags=SHF_ALLOC, align=8,
                                  entsize=8, data=bytes(8 * len(sites))))
    for i, (func, offset) in enumerate(sites):
        add_relocation(out, sec, 8 * i, R_X86_64_64, out.symbols[func], offset)


def import_namespaces(state: DiffState, out: Output) -> List[bytes]:
    """``import_ns=`` strings the patch module needs.

    Those of the patched object's ``.modinfo`` (built-in objects spell them
    ``<modname>.import_ns=NS``; the patch module needs plain ``import_ns=NS``
    for modpost to honour them), and the namespace of every namespaced
    export the output calls: a file that exports a symbol into a namespace
    uses it without importing it, but the patch module is another module.
    """
    found = []
    modinfo = state.patched.elf.section_by_name(".modinfo")
    for entry in (modinfo.data.split(b"\0") if modinfo is not None else []):
        key, sep, value = entry.partition(b"=")
        if sep and (key == b"import_ns" or key.endswith(b".import_ns")):
            found.append(b"import_ns=" + value)
    if state.options.symvers is not None:
        exports = read_symvers(state.options.symvers)
        for sym in out.elf.symbols:
            export = exports.get(sym.name) if sym.section is None and not sym.is_local else None
            if export is not None and export.namespace:
                found.append(b"import_ns=" + export.namespace.encode())
    return list(dict.fromkeys(found))


_NOP5 = bytes.fromhex("0f1f440000")
_CALL5 = bytes.fromhex("e800000000")


def restore_fentry_calls(state: DiffState, out: Output) -> None:
    """Turn ``nop`` fentry sites (R_X86_64_NONE, as objtool --mnop leaves
    them) back into ``call __fentry__``: ftrace checks that a module's
    mcount sites hold the call before it patches them to nops itself."""
    for func in included_functions(state):
        clone = out.sections.get(func.section) if func.section is not None else None
        if clone is None or func not in state.patched.has_fentry:
            continue
        for rela in out.relas.get(clone, []):
            if rela.symbol.name != FENTRY or rela.type != R_X86_64_NONE:
                continue
            site = rela.offset - 1
            if clone.data[site:site + 5] == _NOP5:
                clone.data = clone.data[:site] + _CALL5 + clone.data[site + 5:]
                rela.type, rela.addend = R_X86_64_PLT32, -4
