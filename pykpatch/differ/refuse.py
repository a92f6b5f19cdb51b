"""Stage: refuse changes a live patch cannot carry safely.

Every check only *collects* a reason (object, symbol, why, what to do);
:func:`raise_refusals` then raises one :class:`~pykpatch.errors.Refusal`
listing all of them, so an author sees every problem in one run.
"""

from pykpatch.differ.bundle import PFX
from pykpatch.differ.state import DiffObject, DiffState, Status
from pykpatch.elf.model import Section, Symbol
from pykpatch.errors import Refusal
from pykpatch.kernel.sections import EXIT_SECTION_PREFIXES, INIT_SECTION_PREFIXES, REGISTRATION_TABLES


def is_init_section(sec: Section) -> bool:
    """``__init``/``__exit`` code and data (freed or unused after boot)."""
    return sec.name.startswith(INIT_SECTION_PREFIXES)


def check_patchability(state: DiffState) -> None:
    """Collect every reason to refuse the patched object."""
    for sym in state.patched.elf.symbols:
        status = state.status_of(sym)
        if sym.section is None or status is Status.SAME:
            continue
        if status is Status.CHANGED:
            _check_changed_symbol(state, sym)
    _check_bindings(state)
    _check_groups(state)
    _check_registration_tables(state)


def _check_changed_symbol(state: DiffState, sym: Symbol) -> None:
    sec = sym.section
    assert sec is not None
    twin = state.twin_of(sym)
    if registration_table(sec.name):
        return  # reported once for the whole table by _check_registration_tables
    if sec.name.startswith(EXIT_SECTION_PREFIXES):
        kind = "code" if sym.is_func else "data"
        state.refusals.append(
            f"{sym.name}: changed __exit {kind} in {sec.name}; it runs only when the module is "
            "removed, and a live patch cannot replace it -- the fix takes effect when the "
            "module is next reloaded from a fixed build")
    elif is_init_section(sec):
        kind = "code" if sym.is_func else "data"
        state.refusals.append(
            f"{sym.name}: changed __init {kind} in {sec.name}; it already ran at boot and a "
            "live patch cannot re-run it -- use a patch callback for the one-time work")
    elif sym.is_object:
        if isinstance(twin, Symbol) and twin.size != sym.size:
            state.refusals.append(
                f"{sym.name}: data size changed ({twin.size} -> {sym.size} bytes); existing "
                "users keep the old layout -- use a shadow variable for new fields")
        else:
            state.refusals.append(
                f"{sym.name}: initial value of data changed in {sec.name}; a patch cannot "
                "change data the kernel already holds -- change it from a callback instead")
    elif sym.is_func and not sym.name.startswith(PFX):
        _check_traceable(state, sym)


def _check_traceable(state: DiffState, sym: Symbol) -> None:
    patched = state.patched
    if sym in patched.has_fentry:
        return
    if sym in patched.parent:
        return  # its parent carries the redirect (see changes._propagate_to_parents)
    if sym in state.via_callers:
        return  # its callers carry it (see changes._propagate_untraceable_to_callers)
    state.refusals.append(
        f"{sym.name}: changed but has no __fentry__ call, so ftrace cannot redirect it "
        "(notrace, inline, or built without ftrace like all of lib/?) and it is not a static "
        "function whose callers could carry it -- patch its callers instead")


def _check_bindings(state: DiffState) -> None:
    for sym in state.patched.elf.symbols:
        twin = state.twin_of(sym)
        if isinstance(twin, Symbol) and sym.section is not None and twin.section is not None:
            if twin.bind != sym.bind and sym.is_object:
                state.refusals.append(
                    f"{sym.name}: binding changed (local/global); the kernel's variable "
                    "cannot change visibility -- keep its declaration as it was")


def _check_groups(state: DiffState) -> None:
    from pykpatch.elf.constants import SHT_GROUP
    for sec in state.patched.elf.sections:
        if sec.type != SHT_GROUP:
            continue
        twin = state.twin_of(sec)
        changed = any(state.status_of(m) is Status.CHANGED for m in sec.group_members)
        if twin is None and any(m in state.included_sections for m in sec.group_members):
            state.refusals.append(f"{sec.name}: new section group; groups cannot be patched")
        elif changed:
            state.refusals.append(f"{sec.name}: a section of this group changed; groups "
                                  "cannot be patched -- avoid changing COMDAT/inline definitions")


def registration_table(name: str) -> "str | None":
    """What the entries of section *name* register, if it is such a table."""
    return next((what for prefix, what in REGISTRATION_TABLES.items() if name.startswith(prefix)),
                None)


def _check_registration_tables(state: DiffState) -> None:
    """New, changed or dropped entries of tables the kernel reads only once
    (PCI quirks, initcalls, parameters) would silently do nothing."""
    tables = {}
    for obj, side in ((state.orig, "orig"), (state.patched, "patched")):
        for sec in obj.elf.sections:
            if registration_table(sec.name):
                tables.setdefault(sec.name, {})[side] = sec
    for name, pair in sorted(tables.items()):
        patched = pair.get("patched")
        if patched is not None and state.status_of(patched) is Status.SAME:
            continue
        before = _entry_targets(state.orig, pair.get("orig"))
        after = _entry_targets(state.patched, patched)
        added, removed = after - before, before - after
        detail = "; ".join(part for part in (
            f"added for {', '.join(sorted(added))}" if added else "",
            f"dropped for {', '.join(sorted(removed))}" if removed else "") if part)
        state.refusals.append(
            f"{name}: entries changed{f' ({detail})' if detail else ''}; this table holds "
            f"{registration_table(name)}, so the running kernel would never see the change "
            "-- keep the table as it is (a patch may change the functions its entries call), "
            "or reboot into the fixed kernel")


def _entry_targets(obj: "DiffObject", sec: "Section | None") -> "set[str]":
    """Names of the functions and data a table's entries point at."""
    if sec is None:
        return set()
    return {r.symbol.name for r in obj.relas(sec)
            if not r.symbol.is_section and (r.symbol.is_func or r.symbol.is_object)}


def raise_refusals(state: DiffState) -> None:
    """Raise one Refusal listing every collected reason, if any."""
    if not state.refusals:
        return
    unique = list(dict.fromkeys(state.refusals))
    lines = "\n".join(f"  - {r}" for r in unique)
    raise Refusal(f"{state.patched.path}: cannot live patch this object "
                  f"({len(unique)} problem{'s' if len(unique) > 1 else ''}):\n{lines}")
