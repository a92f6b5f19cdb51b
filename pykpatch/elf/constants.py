"""ELF constants used by pykpatch, spelled as in <elf.h> (ELF64, x86-64).

Only the values the reader, the writer and the differ need; everything else
passes through as a plain integer.
"""

# e_ident
ELFMAG = b"\x7fELF"
ELFCLASS64 = 2
ELFDATA2LSB = 1

# e_type / e_machine
ET_REL = 1
ET_EXEC = 2
ET_DYN = 3
EM_X86_64 = 62

# Special section indices.
SHN_UNDEF = 0
SHN_LORESERVE = 0xFF00
SHN_ABS = 0xFFF1
SHN_COMMON = 0xFFF2
SHN_XINDEX = 0xFFFF

# Section types.
SHT_NULL = 0
SHT_PROGBITS = 1
SHT_SYMTAB = 2
SHT_STRTAB = 3
SHT_RELA = 4
SHT_NOBITS = 8
SHT_REL = 9
SHT_GROUP = 17
SHT_SYMTAB_SHNDX = 18

# Section flags.
SHF_WRITE = 0x1
SHF_ALLOC = 0x2
SHF_EXECINSTR = 0x4
SHF_MERGE = 0x10
SHF_STRINGS = 0x20
SHF_INFO_LINK = 0x40
SHF_LINK_ORDER = 0x80
SHF_GROUP = 0x200

GRP_COMDAT = 0x1

# Symbol binding and type.
STB_LOCAL = 0
STB_GLOBAL = 1
STB_WEAK = 2
STT_NOTYPE = 0
STT_OBJECT = 1
STT_FUNC = 2
STT_SECTION = 3
STT_FILE = 4

# x86-64 relocation types (the ones the differ reasons about).
R_X86_64_NONE = 0
R_X86_64_64 = 1
R_X86_64_PC32 = 2
R_X86_64_PLT32 = 4
R_X86_64_32 = 10
R_X86_64_32S = 11
R_X86_64_PC64 = 24

PC_RELATIVE_RELOCS = frozenset({R_X86_64_PC32, R_X86_64_PLT32, R_X86_64_PC64})
