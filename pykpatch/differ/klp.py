"""Stage: decide how each reference leaving the patch is resolved.

A symbol the output needs but does not define is either

* a normal undefined reference -- resolved by the module loader, which only
  sees exported symbols (Module.symvers), or symbols the target table does
  not know at all (kpatch behaves the same); or
* a klp relocation -- resolved by livepatch from kallsyms:
  ``.klp.sym.<obj>.<name>,<sympos>`` with ``st_shndx = SHN_LIVEPATCH``,
  for locals and unexported globals.
"""

from dataclasses import dataclass
from pathlib import PurePath
from typing import Dict, Optional

from pykpatch.differ.state import DiffState
from pykpatch.differ.symbols import TargetSymbols
from pykpatch.elf.model import Symbol
from pykpatch.errors import InputError
from pykpatch.kernel.livepatch import VMLINUX, klp_symbol_name, module_objname
from pykpatch.kernel.symvers import read_symvers


@dataclass(frozen=True)
class KlpTarget:
    """Where livepatch finds a symbol: object, name as in the kernel, sympos."""

    objname: str
    name: str
    sympos: int

    @property
    def symbol_name(self) -> str:
        return klp_symbol_name(self.objname, self.name, self.sympos)


def kernel_name(state: DiffState, sym: Symbol) -> str:
    """The name the kernel knows *sym* by: its original twin's name."""
    twin = state.twin_of(sym)
    return twin.name if isinstance(twin, Symbol) else sym.name


def classify_external(state: DiffState, table: TargetSymbols, sym: Symbol) -> Optional[KlpTarget]:
    """None for a normal relocation, else the klp target of *sym*.

    :raises InputError: a local the target's table does not contain.
    """
    name = kernel_name(state, sym)
    if table.is_exported(name) and not exported_by_target(state, name):
        return None
    defined_here = sym.section is not None
    local = sym.is_local
    pos = table.sympos(name, local=local, files=state.orig.file_names,
                       neighbours=state.orig.local_names)
    if pos is None:
        if defined_here and local:
            raise InputError(
                f"{state.patched.path}: local symbol {name!r} is not in the target symbol "
                f"table {table.source}; pass the matching vmlinux or module with --symbols")
        return None
    return KlpTarget(state.options.objname, name, pos)


def exported_by_target(state: DiffState, name: str) -> bool:
    """Is *name* exported by the very module being patched?

    Such a reference must be a klp relocation too (as in kpatch): a normal
    one would make the patch module depend on its target, so it could not
    be loaded before the target and would pin it.
    """
    objname, symvers = state.options.objname, state.options.symvers
    if objname == VMLINUX or not symvers:
        return False
    export = read_symvers(symvers).get(name)
    return export is not None and module_objname(PurePath(export.module).name) == objname


def decide_externals(state: DiffState, table: TargetSymbols) -> Dict[Symbol, KlpTarget]:
    """klp targets of every included symbol that the output will not define."""
    out: Dict[Symbol, KlpTarget] = {}
    for sym in state.included_symbols:
        if sym.is_section or sym.is_file:
            continue
        if sym.section is not None and sym.section in state.included_sections:
            continue
        target = classify_external(state, table, sym)
        if target is not None:
            out[sym] = target
    return out
