"""Stage: decide how each reference leaving the patch is resolved.

A symbol the output needs but does not define is either

* a normal undefined reference -- resolved by the module loader, which only
  sees exported symbols (Module.symvers), or symbols the target table does
  not know at all (kpatch behaves the same); or
* a klp relocation -- resolved by livepatch from kallsyms:
  ``.klp.sym.<obj>.<name>,<sympos>`` with ``st_shndx = SHN_LIVEPATCH``,
  for locals, unexported globals and, in a module's code, every export of a
  module.  Livepatch resolves the klp relocations of a module's code when
  that module loads, after the modules it depends on; a normal reference
  to another module's export would instead make the patch module depend on
  that module, so the patch could not load before it (at boot, say).
"""

from dataclasses import dataclass
from pathlib import PurePath
from typing import Dict, List, Optional

from pykpatch.differ.refuse import raise_refusals
from pykpatch.differ.state import DiffState
from pykpatch.differ.symbols import TargetSymbols, read_target_symbols
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
    if not sym.is_local and table.is_exported(name):
        exporter = exporting_module(state, name)
        if exporter is None:
            return None  # vmlinux's export: the module loader resolves it
        if exporter != state.options.objname:
            return KlpTarget(exporter, name, sympos_in_module(state, exporter, name))
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


def exporting_module(state: DiffState, name: str) -> Optional[str]:
    """The klp object name of the module exporting *name*, when the object
    being diffed is a module's; None for vmlinux's exports (and for vmlinux
    code, which cannot call into modules)."""
    objname, symvers = state.options.objname, state.options.symvers
    if objname == VMLINUX or not symvers:
        return None
    export = read_symvers(symvers).get(name)
    if export is None or export.module == VMLINUX:
        return None
    return module_objname(PurePath(export.module).name)


def sympos_in_module(state: DiffState, module: str, name: str) -> int:
    """*name*'s sympos among the symbols of *module* (0, unique, unless its
    shipped table says otherwise; 0 too when no table is at hand)."""
    find = state.options.module_symbols
    if find is None:
        return 0
    pos = read_target_symbols(find(module)).sympos(name, local=False)
    return pos or 0


def unmet_dependencies(state: DiffState, targets: Dict[Symbol, KlpTarget]) -> List[str]:
    """Refusal reasons for exports of modules the patched module does not load after.

    Livepatch resolves those references when the patched module loads; if
    the exporting module may be missing then, the patched module's own
    load would fail.
    """
    needed = state.options.dependencies
    if needed is None:
        return []
    objname = state.options.objname
    missing = sorted({(t.objname, t.name) for t in targets.values()
                      if t.objname not in (objname, VMLINUX) and t.objname not in needed})
    return [f"the patch calls {name}(), exported by module {module}, which {objname} does not "
            f"depend on: {objname} could then load before {module} and fail; keep the patch "
            f"within what {objname} already uses" for module, name in missing]


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
    state.refusals += unmet_dependencies(state, out)
    raise_refusals(state)
    return out
