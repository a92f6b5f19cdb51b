"""Stage: turn x86 runtime constants into loads of their variables.

Since 6.11, vmlinux code may read a value fixed at boot (``USER_PTR_MAX``
in every ``access_ok()``, ``dentry_hashtable``) through
``runtime_const_ptr()``: the compiler writes ``movabs $placeholder, %reg``
and an entry of section ``runtime_ptr_<sym>`` pointing at the immediate,
and vmlinux writes the real value into its own code once, at boot.  Nothing
does that for a module, so a patched copy would run with the placeholder.

The same 10 bytes become ``mov sym(%rip), %reg`` and a 3-byte NOP: the load
a module's build makes of the macro (``runtime_const_ptr(sym)`` is plain
``sym`` there), reading the variable the boot-time value was taken from.
Shift constants (``runtime_shift_<sym>``) have no such form and are refused.
"""

from typing import Optional

from pykpatch.differ.include import _include_symbol, included_code_site
from pykpatch.differ.state import DiffState
from pykpatch.elf.constants import R_X86_64_PC32, STB_GLOBAL, STT_NOTYPE
from pykpatch.elf.model import Rela, Section, Symbol
from pykpatch.kernel.sections import (
    RUNTIME_CONST_PLACEHOLDER, RUNTIME_PTR_PREFIX, RUNTIME_SHIFT_PREFIX,
)

_MOVABS_LEN, _IMM_AT = 10, 2    # REX.W, B8+r, imm64
_NOP3 = bytes.fromhex("0f1f00")


def rewrite_runtime_constants(state: DiffState) -> None:
    """Rewrite the runtime-constant sites of included functions; refuse shifts."""
    for table in state.patched.elf.sections:
        if table.name.startswith(RUNTIME_PTR_PREFIX):
            variable = table.name[len(RUNTIME_PTR_PREFIX):]
            for rela in state.patched.relas(table):
                site = included_code_site(state, rela)
                if site is not None:
                    _load_variable(state, site[0], site[1], variable)
        elif table.name.startswith(RUNTIME_SHIFT_PREFIX):
            variable = table.name[len(RUNTIME_SHIFT_PREFIX):]
            users = sorted({state.patched.owner[s[0]].name for s in
                            (included_code_site(state, r) for r in state.patched.relas(table))
                            if s is not None and s[0] in state.patched.owner})
            if users:
                state.refusals.append(
                    f"{', '.join(users)}: shifts by the runtime constant {variable}, which "
                    "vmlinux writes into its own code at boot and a patch module's copy would "
                    f"never get -- use the variable {variable} itself in the patched function")


def _load_variable(state: DiffState, sec: Section, imm: int, variable: str) -> None:
    start = imm - _IMM_AT
    code = bytes(sec.data)
    rex, opcode = code[start], code[start + 1]
    placeholder = int.from_bytes(code[imm:imm + 8], "little")
    rela_sec = state.patched.rela_of.get(sec)
    if (rex & 0xF8 != 0x48 or not 0xB8 <= opcode <= 0xBF
            or placeholder != RUNTIME_CONST_PLACEHOLDER or rela_sec is None):
        state.refusals.append(
            f"{sec.name}+{start:#x}: a runtime constant {variable} in a form pykpatch does not "
            "know (not movabs of the placeholder); its value would never be written")
        return
    reg = (opcode - 0xB8) | (8 if rex & 1 else 0)
    load = bytes([0x48 | (4 if reg & 8 else 0), 0x8B, ((reg & 7) << 3) | 0x05, 0, 0, 0, 0])
    sec.data = code[:start] + load + _NOP3 + code[start + _MOVABS_LEN:]
    owner = state.patched.owner.get(sec)
    rela_sec.relas.append(Rela(start + 3, R_X86_64_PC32, _variable_symbol(state, variable, owner),
                               -4))


def _variable_symbol(state: DiffState, name: str, owner: Optional[Symbol]) -> Symbol:
    """The object's symbol of *name* (included as any reference would), or a
    new undefined one: the macro names the variable only as a string."""
    found = next((s for s in state.patched.elf.symbols if s.name == name and not s.is_section),
                 None)
    if found is None:
        found = Symbol(name=name, bind=STB_GLOBAL, type=STT_NOTYPE)
        state.patched.elf.symbols.append(found)
    _include_symbol(state, found, owner)
    return found
