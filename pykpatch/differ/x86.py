"""Just enough x86-64 instruction decoding for the differ.

The differ needs instruction *boundaries* (to find where a PC-relative
relocation's instruction ends, and which instruction a changed byte belongs
to) and a few opcode facts (is this a call, a mov of an immediate).  This is
a length decoder for 64-bit mode, not a disassembler.
"""

from typing import Dict, List, NamedTuple, Tuple

_LEGACY_PREFIXES = frozenset({0x66, 0x67, 0xF2, 0xF3, 0xF0, 0x2E, 0x36, 0x3E, 0x26, 0x64, 0x65})

# One-byte opcodes that take a ModRM byte.
_MODRM_1 = frozenset(
    [op for base in range(0x00, 0x40, 8) for op in range(base, base + 4)]
    + [0x62, 0x63, 0x69, 0x6B] + list(range(0x80, 0x90))
    + [0xC0, 0xC1, 0xC4, 0xC5, 0xC6, 0xC7, 0xD0, 0xD1, 0xD2, 0xD3]
    + list(range(0xD8, 0xE0)) + [0xF6, 0xF7, 0xFE, 0xFF])

# Immediate sizes of one-byte opcodes; "z" is 4 bytes, or 2 with 0x66.
_IMM8_1 = frozenset([b + 4 for b in range(0, 0x40, 8)] + [0x6A, 0x6B, 0x80, 0x83, 0xA8, 0xC0, 0xC1,
                     0xC6, 0xCD, 0xE4, 0xE5, 0xE6, 0xE7, 0xEB] + list(range(0x70, 0x80))
                    + list(range(0xB0, 0xB8)) + list(range(0xE0, 0xE4)))
_IMMZ_1 = frozenset([b + 5 for b in range(0, 0x40, 8)] + [0x68, 0x69, 0x81, 0xA9, 0xC7, 0xE8, 0xE9])

# Two-byte (0x0F xx) opcodes without ModRM.
_NO_MODRM_2 = frozenset([0x05, 0x06, 0x07, 0x08, 0x09, 0x0B, 0x0E, 0x30, 0x31, 0x32, 0x33, 0x34,
                         0x35, 0x37, 0x77, 0xA0, 0xA1, 0xA2, 0xA8, 0xA9, 0xAA]
                        + list(range(0x80, 0x90)) + list(range(0xC8, 0xD0)))
_IMM8_2 = frozenset([0x70, 0x71, 0x72, 0x73, 0xA4, 0xAC, 0xBA, 0xC2, 0xC4, 0xC5, 0xC6])

CALL_REL32 = 0xE8
JMP_REL32 = 0xE9


class Insn(NamedTuple):
    """One decoded instruction: where it starts, its length, its main
    opcode byte (after prefixes/REX; 0x0F for two-byte opcodes) and the
    second opcode byte for 0x0F forms."""

    offset: int
    length: int
    opcode: int
    opcode2: int
    imm_size: int


class DecodeError(Exception):
    """The bytes are not an instruction this decoder understands."""


def decode(code: bytes, offset: int) -> Insn:
    """Decode the instruction at *offset* of *code*."""
    pos = offset
    opsize16 = addr32 = False
    while pos < len(code) and code[pos] in _LEGACY_PREFIXES:
        opsize16 |= code[pos] == 0x66
        addr32 |= code[pos] == 0x67
        pos += 1
    rex_w = False
    if pos < len(code) and 0x40 <= code[pos] <= 0x4F:
        rex_w = bool(code[pos] & 8)
        pos += 1
    if pos >= len(code):
        raise DecodeError(f"instruction at {offset:#x} runs past the end")
    op = code[pos]
    if op in (0xC4, 0xC5, 0x62):
        return _decode_vex(code, offset, pos)
    if op == 0x0F:
        return _decode_0f(code, offset, pos + 1)
    pos += 1
    imm = 0
    if op in _IMM8_1:
        imm = 1
    elif op in _IMMZ_1:
        imm = 2 if opsize16 and op not in (CALL_REL32, JMP_REL32) else 4
    elif 0xB8 <= op <= 0xBF:
        imm = 8 if rex_w else (2 if opsize16 else 4)
    elif op in (0xA0, 0xA1, 0xA2, 0xA3):
        imm = 4 if addr32 else 8
    elif op in (0xC2, 0xCA):
        imm = 2
    elif op == 0xC8:
        imm = 3
    if op in _MODRM_1:
        modrm_pos = pos
        pos = _skip_modrm(code, pos)
        if op in (0xF6, 0xF7) and (code[modrm_pos] >> 3) & 7 in (0, 1):
            imm = 1 if op == 0xF6 else (2 if opsize16 else 4)
    end = pos + imm
    if end > len(code):
        raise DecodeError(f"instruction at {offset:#x} runs past the end")
    return Insn(offset, end - offset, op, -1, imm)


def _decode_0f(code: bytes, offset: int, pos: int) -> Insn:
    if pos >= len(code):
        raise DecodeError(f"instruction at {offset:#x} runs past the end")
    op2 = code[pos]
    pos += 1
    imm = 0
    if op2 == 0x38:
        pos = _skip_modrm(code, pos + 1)
    elif op2 == 0x3A:
        pos = _skip_modrm(code, pos + 1)
        imm = 1
    elif 0x80 <= op2 <= 0x8F:
        imm = 4
    elif op2 not in _NO_MODRM_2:
        pos = _skip_modrm(code, pos)
        if op2 in _IMM8_2:
            imm = 1
    end = pos + imm
    if end > len(code):
        raise DecodeError(f"instruction at {offset:#x} runs past the end")
    return Insn(offset, end - offset, 0x0F, op2, imm)


def _decode_vex(code: bytes, offset: int, pos: int) -> Insn:
    kind = code[pos]
    if kind == 0xC5:
        pos += 2
        opmap = 1
    elif kind == 0xC4:
        opmap = code[pos + 1] & 0x1F
        pos += 3
    else:  # EVEX
        opmap = code[pos + 1] & 0x7
        pos += 4
    op = code[pos]
    pos = _skip_modrm(code, pos + 1)
    imm = 1 if opmap == 3 or (opmap == 1 and op in _IMM8_2) else 0
    end = pos + imm
    if end > len(code):
        raise DecodeError(f"instruction at {offset:#x} runs past the end")
    return Insn(offset, end - offset, kind, op, imm)


def _skip_modrm(code: bytes, pos: int) -> int:
    if pos >= len(code):
        raise DecodeError(f"ModRM at {pos:#x} runs past the end")
    modrm = code[pos]
    pos += 1
    mod, rm = modrm >> 6, modrm & 7
    if mod == 3:
        return pos
    if rm == 4:
        if pos >= len(code):
            raise DecodeError(f"SIB at {pos:#x} runs past the end")
        sib = code[pos]
        pos += 1
        if mod == 0 and (sib & 7) == 5:
            return pos + 4
    if mod == 1:
        return pos + 1
    if mod == 2 or (mod == 0 and rm == 5):
        return pos + 4
    return pos


def decode_all(code: bytes) -> List[Insn]:
    """Decode *code* from its first byte to its end.

    :raises DecodeError: somewhere the bytes do not decode.
    """
    out = []
    pos = 0
    while pos < len(code):
        insn = decode(code, pos)
        out.append(insn)
        pos += insn.length
    return out


class InsnIndex:
    """Instruction boundaries of one text section, decoded once on demand."""

    def __init__(self, code: bytes) -> None:
        self._code = code
        self._insns: List[Insn] = []
        self._starts: List[int] = []
        self._ok = True
        try:
            self._insns = decode_all(code)
        except DecodeError:
            self._ok = False
        self._starts = [i.offset for i in self._insns]

    @property
    def ok(self) -> bool:
        """False when the section did not decode (callers then fall back)."""
        return self._ok

    @property
    def insns(self) -> List[Insn]:
        return self._insns

    def containing(self, offset: int) -> "Insn | None":
        """The instruction covering byte *offset*, or None."""
        import bisect
        i = bisect.bisect_right(self._starts, offset) - 1
        if i < 0:
            return None
        insn = self._insns[i]
        return insn if insn.offset <= offset < insn.offset + insn.length else None


_cache: Dict[int, Tuple[bytes, InsnIndex]] = {}


def pc_relative_adjust(code: bytes, reloc_offset: int, index: "InsnIndex | None" = None) -> int:
    """Bytes from a PC-relative relocation's field to its instruction's end.

    The addend of such a relocation is ``target - (field + adjust)``; for a
    plain ``call``/``lea`` the adjust is 4, an immediate after the
    displacement makes it larger.  Falls back to 4 when undecodable.
    """
    if index is None or not index.ok:
        return 4
    insn = index.containing(reloc_offset)
    if insn is None:
        return 4
    return insn.offset + insn.length - reloc_offset


_NOP_PREFIXES = frozenset({0x66, 0x2E})
_JCC_SHORT = range(0x70, 0x80)
_JCC_NEAR = range(0x80, 0x90)


def is_padding_nop(code: bytes, insn: Insn) -> bool:
    """``nop``/``xchg %ax,%ax`` or a ``0f 1f`` multi-byte NOP: what the
    assembler writes for alignment (``pause`` and ``xchg %eax,%r8d`` are not)."""
    if insn.opcode == 0x0F:
        return insn.opcode2 == 0x1F
    prefixes = code[insn.offset:insn.offset + insn.length - 1]
    return insn.opcode == 0x90 and all(b in _NOP_PREFIXES for b in prefixes)


def relative_branch(code: bytes, insn: Insn) -> "Tuple[str, int] | None":
    """(kind, target offset) of a relative call/jmp/jcc, else None.

    Short and near forms of one branch have the same kind: the assembler
    picks the form by distance.
    """
    if insn.opcode in (CALL_REL32, JMP_REL32, 0xEB):
        kind = "call" if insn.opcode == CALL_REL32 else "jmp"
    elif insn.opcode in _JCC_SHORT:
        kind = f"j{insn.opcode - 0x70:x}"
    elif insn.opcode == 0x0F and insn.opcode2 in _JCC_NEAR:
        kind = f"j{insn.opcode2 - 0x80:x}"
    else:
        return None
    end = insn.offset + insn.length
    width = 1 if insn.opcode == 0xEB or insn.opcode in _JCC_SHORT else 4
    rel = int.from_bytes(code[end - width:end], "little", signed=True)
    return kind, end + rel
