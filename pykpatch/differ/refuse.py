"""Stage: refuse changes a live patch cannot carry safely.

Every check only *collects* a reason (object, symbol, why, what to do);
:func:`raise_refusals` then raises one :class:`~pykpatch.errors.Refusal`
listing all of them, so an author sees every problem in one run.
"""

from pykpatch.differ.bundle import PFX
from pykpatch.differ.state import DiffState, Status
from pykpatch.elf.model import Section, Symbol
from pykpatch.errors import Refusal
from pykpatch.kernel.sections import INIT_SECTION_PREFIXES


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


def _check_changed_symbol(state: DiffState, sym: Symbol) -> None:
    sec = sym.section
    assert sec is not None
    twin = state.twin_of(sym)
    if is_init_section(sec):
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
        "(notrace or inline?) and it is not a static function whose callers could carry it "
        "-- patch its callers instead")


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


def raise_refusals(state: DiffState) -> None:
    """Raise one Refusal listing every collected reason, if any."""
    if not state.refusals:
        return
    unique = list(dict.fromkeys(state.refusals))
    lines = "\n".join(f"  - {r}" for r in unique)
    raise Refusal(f"{state.patched.path}: cannot live patch this object "
                  f"({len(unique)} problem{'s' if len(unique) > 1 else ''}):\n{lines}")
