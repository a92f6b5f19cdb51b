"""Compare an original and a patched object and build the patch object.

:func:`diff_objects` is the library entry point (kpatch-build calls it; the
``kpatch-diff-object`` command is a thin wrapper).  It reads like the list
of stages it runs; each stage lives in its own module.
"""

from dataclasses import dataclass
from enum import Enum
from typing import List, Optional

from pykpatch.differ.bundle import PFX, index_object
from pykpatch.differ.changes import mark_changes
from pykpatch.differ.correlate import correlate
from pykpatch.differ.include import has_callbacks, include_changes
from pykpatch.differ.klp import decide_externals, kernel_name
from pykpatch.differ.mcount import add_mcount_loc, import_namespaces, restore_fentry_calls
from pykpatch.differ.normalize import normalize_section_references
from pykpatch.differ.refuse import check_patchability, raise_refusals
from pykpatch.differ.report import Report, build_report
from pykpatch.differ.runtime_const import rewrite_runtime_constants
from pykpatch.differ.special import copy_special_sections, select_special_entries
from pykpatch.differ.state import DiffState, Options, Status
from pykpatch.differ.symbols import TargetSymbols, load_target_symbols
from pykpatch.differ.write import (
    PatchedFunction, add_funcs_table, add_modinfo, copy_included_sections, copy_relocations,
    copy_symbols, finish, new_output,
)
from pykpatch.elf.model import ElfFile, Symbol
from pykpatch.elf.reader import read_elf
from pykpatch.errors import InputError


class Outcome(Enum):
    """How a diff ended (a refusal is raised as :class:`~pykpatch.errors.Refusal`)."""

    PATCH = "patch"
    NO_CHANGE = "no change"


@dataclass
class DiffResult:
    """Outcome, the output object (None when nothing changed) and the report."""

    outcome: Outcome
    output: Optional[ElfFile]
    report: Report


def diff_objects(orig_path: str, patched_path: str, options: Options = Options()) -> DiffResult:
    """Diff *orig_path* against *patched_path* (both ET_REL x86-64 objects).

    :raises InputError: unreadable/malformed inputs, a mismatched pair,
        missing struct sizes or symbol-table problems.
    :raises Refusal: the change cannot be live patched; the message lists
        every reason found.
    """
    state = load_pair(orig_path, patched_path, options)
    normalize_section_references(state.orig)
    normalize_section_references(state.patched)
    correlate(state)
    mark_changes(state)
    check_patchability(state)
    raise_refusals(state)
    if nothing_changed(state):
        return DiffResult(Outcome.NO_CHANGE, None, build_report(state, Outcome.NO_CHANGE.value, {}, []))
    state.target = load_target_symbols(options.symbols, state.orig.elf, options.symvers)
    include_changes(state)
    rewrite_runtime_constants(state)
    kept = select_special_entries(state)
    raise_refusals(state)
    externals = decide_externals(state, state.target)
    funcs = patched_functions(state, state.target)
    out = new_output(state)
    copy_included_sections(state, out)
    copy_symbols(state, out, externals)
    copy_relocations(state, out)
    restore_fentry_calls(state, out)
    copy_special_sections(state, out, kept)
    add_mcount_loc(state, out)
    add_funcs_table(out, [PatchedFunction(out.symbols[f.symbol], f.old_name, f.objname, f.sympos)
                          for f in funcs])
    add_modinfo(out, import_namespaces(state, out))
    elf = finish(state, out, options.objname)
    report = build_report(state, Outcome.PATCH.value, {f.old_name: f.sympos for f in funcs},
                          [t.symbol_name for t in externals.values()])
    return DiffResult(Outcome.PATCH, elf, report)


def load_pair(orig_path: str, patched_path: str, options: Options) -> DiffState:
    """Read and index both objects; refuse pairs that are not two builds of one file."""
    orig, patched = read_elf(orig_path), read_elf(patched_path)
    if (orig.header.ident[:7], orig.header.flags) != (patched.header.ident[:7], patched.header.flags):
        raise InputError(f"{patched_path}: ELF header differs from {orig_path}'s; not a pair")
    orig_files = [s.name for s in orig.symbols if s.is_file]
    patched_files = [s.name for s in patched.symbols if s.is_file]
    if orig_files[:1] != patched_files[:1]:
        raise InputError(f"{patched_path}: built from {patched_files[:1] or 'an unnamed file'}, "
                         f"but {orig_path} from {orig_files[:1] or 'an unnamed file'}; not a pair")
    return DiffState(orig=index_object(orig), patched=index_object(patched), options=options)


def nothing_changed(state: DiffState) -> bool:
    """No changed function, no new global, no callback: nothing to patch."""
    if has_callbacks(state):
        return False
    for sym in state.patched.elf.symbols:
        status = state.status_of(sym)
        if sym.is_func and status is Status.CHANGED:
            return False
        if status is Status.NEW and not sym.is_local and sym.section is not None:
            return False
    return True


def patched_functions(state: DiffState, table: TargetSymbols) -> List[PatchedFunction]:
    """Changed functions the kernel must redirect (not new ones, not
    children that are only reached through their parent)."""
    out = []
    for sym in state.patched.elf.symbols:
        if not sym.is_func or state.status_of(sym) is not Status.CHANGED or sym.name.startswith(PFX):
            continue
        if sym in state.patched.parent and sym not in state.patched.has_fentry:
            continue
        if sym in state.via_callers:
            continue  # included as a copy; its callers are redirected
        if sym not in state.included_symbols:
            continue
        twin = state.twin_of(sym)
        assert isinstance(twin, Symbol)
        name = kernel_name(state, sym)
        pos = table.sympos(name, local=twin.is_local, files=state.orig.file_names,
                           neighbours=state.orig.local_names)
        out.append(PatchedFunction(sym, name, state.options.objname, pos or 0))
    return out
