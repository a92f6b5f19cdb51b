"""What a ``.ko`` file says about itself: name, vermagic, livepatch flag, origin.

Read straight from the module's ELF sections with a few ``struct`` calls,
so that ``kpatch`` needs neither ``modinfo(8)`` nor the ELF layer used by the
builder (which it must not depend on: the admin tool runs on production
machines and only ever reads three sections).

Origin keys that ``kpatch-build`` writes into ``.modinfo`` (all optional;
a module without them is shown as "origin unknown")::

    pykpatch.patches=<file>:sha256:<hex>[,<file>:sha256:<hex>...]
        the patch files the module was built from, base names, in the
        order they were applied, each with its SHA-256 (possibly
        abbreviated; "<file>:<hex>" is read too); the key may repeat,
        entries add up.
    pykpatch.release=<kernel release>   e.g. 6.1.0-28-cloud-amd64
    pykpatch.version=<pykpatch version> the tool that built it

``MODULE_INFO(tag, ...)`` pastes its tag into a C identifier, so a dotted
tag needs ``__MODULE_INFO(pykpatch.release, pykpatch_release, "...")`` or a
raw ``.modinfo`` string (what kpatch-build writes).  The underscore
spellings (``pykpatch_patches`` ...) are read too.
"""

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, NamedTuple, Optional, Tuple

from pykpatch.errors import InputError, Refusal
from pykpatch.kernel.module import (
    BUILD_ID_SECTION, MODINFO_LIVEPATCH, MODINFO_LIVEPATCH_YES, MODINFO_NAME,
    MODINFO_SECTION, MODINFO_VERMAGIC, MODULE_NAME_LEN, THIS_MODULE_NAME_OFFSET,
    THIS_MODULE_SECTION, kbuild_modname,
)

ORIGIN_PATCHES = "pykpatch.patches"
ORIGIN_RELEASE = "pykpatch.release"
ORIGIN_VERSION = "pykpatch.version"
_DIGEST_PREFIX = ":sha256"
_ORIGIN_ALIASES = {key.replace(".", "_"): key
                   for key in (ORIGIN_PATCHES, ORIGIN_RELEASE, ORIGIN_VERSION)}

_ELF_MAGIC = b"\x7fELF"
_ET_REL = 1
_SHT_NOBITS = 8
_SHN_XINDEX = 0xFFFF
# Kernel modules are a few MB at most; refuse to slurp something absurd.
_MAX_SIZE = 512 * 1024 * 1024


@dataclass(frozen=True)
class PatchFile:
    """One patch a livepatch module was built from."""

    name: str
    sha256: Optional[str]


@dataclass(frozen=True)
class Origin:
    """Where a livepatch module came from, as kpatch-build recorded it."""

    patches: Tuple[PatchFile, ...]
    release: Optional[str]
    tool_version: Optional[str]

    def to_json(self) -> Dict[str, Any]:
        return {
            "patches": [{"file": p.name, "sha256": p.sha256} for p in self.patches],
            "release": self.release,
            "tool_version": self.tool_version,
        }


@dataclass(frozen=True)
class ModuleInfo:
    """The identity of one ``.ko`` file."""

    path: Path
    name: str
    fields: Tuple[Tuple[str, str], ...]  # .modinfo in file order; keys repeat
    build_id: Optional[str]

    def get(self, key: str) -> Optional[str]:
        values = self.get_all(key)
        return values[0] if values else None

    def get_all(self, key: str) -> List[str]:
        return [value for k, value in self.fields if k == key]

    @property
    def vermagic(self) -> Optional[str]:
        return self.get(MODINFO_VERMAGIC)

    @property
    def release(self) -> Optional[str]:
        """The kernel release the module was built for: vermagic's first word."""
        words = (self.vermagic or "").split()
        return words[0] if words else None

    @property
    def is_livepatch(self) -> bool:
        return self.get(MODINFO_LIVEPATCH) == MODINFO_LIVEPATCH_YES

    @property
    def origin(self) -> Optional[Origin]:
        """The kpatch-build origin keys, or None for a module without them."""
        canonical = [(_ORIGIN_ALIASES.get(k, k), v) for k, v in self.fields]
        found = {k: v for k, v in canonical if k in _ORIGIN_ALIASES.values()}
        if not found:
            return None
        patches = [_parse_patch_entry(entry)
                   for k, v in canonical if k == ORIGIN_PATCHES
                   for entry in v.split(",") if entry.strip()]
        return Origin(tuple(patches), found.get(ORIGIN_RELEASE),
                      found.get(ORIGIN_VERSION))

    def modinfo_json(self) -> Dict[str, List[str]]:
        """All .modinfo keys, each with its values (keys like alias repeat)."""
        out: Dict[str, List[str]] = {}
        for key, value in self.fields:
            out.setdefault(key, []).append(value)
        return out


def _parse_patch_entry(entry: str) -> PatchFile:
    """``<file>:sha256:<hex>`` (kpatch-build's form) or ``<file>:<hex>``."""
    entry = entry.strip()
    name, sep, digest = entry.rpartition(":")
    if not sep or not digest or any(c not in "0123456789abcdefABCDEF" for c in digest):
        return PatchFile(entry, None)
    if name.endswith(_DIGEST_PREFIX):
        name = name[:-len(_DIGEST_PREFIX)]
    return PatchFile(name, digest.lower())


def read_module_info(path: Path) -> ModuleInfo:
    """Read *path*'s module identity; InputError if it is not a kernel module."""
    data = _read_file(path)
    sections = _ElfSections(path, data)
    this_module = sections.get(THIS_MODULE_SECTION)
    modinfo = sections.get(MODINFO_SECTION)
    if this_module is None or modinfo is None:
        raise InputError(
            f"{path}: not a kernel module: an ELF file without the "
            f"{THIS_MODULE_SECTION} and {MODINFO_SECTION} sections a .ko has "
            "(give the .ko that kpatch-build wrote, not an object file)")
    fields = tuple(_parse_modinfo(modinfo))
    name = (_name_from_this_module(this_module, sections.bits)
            or dict(fields).get(MODINFO_NAME)
            or kbuild_modname(path.name.split(".")[0]))
    note = sections.get(BUILD_ID_SECTION)
    build_id = parse_build_id_note(note, sections.endian) if note else None
    return ModuleInfo(path, name, fields, build_id)


def require_livepatch(info: ModuleInfo) -> None:
    """Refuse an ordinary module: loading it is not kpatch's business."""
    if not info.is_livepatch:
        raise Refusal(
            f"{info.path}: module '{info.name}' is not a livepatch module "
            f"(no '{MODINFO_LIVEPATCH}={MODINFO_LIVEPATCH_YES}' in its module info); "
            "load ordinary modules with modprobe")


def require_release(info: ModuleInfo, release: str) -> None:
    """Refuse a module built for another kernel, before the kernel sees it.

    The kernel itself skips the release part of vermagic when symbol CRCs
    are present, but a live patch encodes addresses and code of one exact
    build: any other release is wrong.
    """
    built_for = info.release
    if built_for is None:
        raise Refusal(f"{info.path}: module '{info.name}' has no vermagic; "
                      "it was not built by Kbuild and cannot be checked")
    if built_for != release:
        raise Refusal(
            f"{info.path}: built for kernel {built_for}, but the target is {release}; "
            f"build the patch again against {release} (kpatch-build)")


def parse_build_id_note(note: bytes, endian: str) -> Optional[str]:
    """Hex build ID from an ELF note section (or sysfs notes file)."""
    offset = 0
    while offset + 12 <= len(note):
        namesz, descsz, ntype = struct.unpack_from(endian + "III", note, offset)
        name_end = offset + 12 + _align4(namesz)
        desc_end = name_end + _align4(descsz)
        name = note[offset + 12:offset + 12 + namesz].rstrip(b"\0")
        if name == b"GNU" and ntype == 3:  # NT_GNU_BUILD_ID
            return note[name_end:name_end + descsz].hex()
        offset = desc_end
    return None


def _align4(n: int) -> int:
    return (n + 3) & ~3


def _read_file(path: Path) -> bytes:
    try:
        if path.stat().st_size > _MAX_SIZE:
            raise InputError(f"{path}: not a kernel module (far too large)")
        return path.read_bytes()
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a directory, not a .ko file") from None
    except PermissionError:
        raise InputError(f"{path}: permission denied") from None


def _parse_modinfo(raw: bytes) -> List[Tuple[str, str]]:
    fields = []
    for item in raw.split(b"\0"):
        text = item.decode("utf-8", "replace")
        key, sep, value = text.partition("=")
        if sep and key:
            fields.append((key, value))
    return fields


def _name_from_this_module(section: bytes, bits: int) -> Optional[str]:
    start = THIS_MODULE_NAME_OFFSET[bits]
    raw = section[start:start + MODULE_NAME_LEN].split(b"\0", 1)[0]
    try:
        name = raw.decode("ascii")
    except UnicodeDecodeError:
        return None
    return name if name and name.isprintable() else None


class _Shdr(NamedTuple):
    name: int    # offset into the section name table
    type: int
    offset: int
    size: int
    link: int


class _ElfSections:
    """Just enough ELF: section contents by name, for one relocatable file."""

    def __init__(self, path: Path, data: bytes) -> None:
        self._path = path
        self._data = data
        if data[:4] != _ELF_MAGIC or len(data) < 52:
            raise InputError(f"{path}: not a kernel module (not an ELF file)")
        elf_class, elf_data = data[4], data[5]
        if elf_class not in (1, 2) or elf_data not in (1, 2):
            raise InputError(f"{path}: not a kernel module (unknown ELF class or byte order)")
        self.bits = 64 if elf_class == 2 else 32
        self.endian = "<" if elf_data == 1 else ">"
        try:
            self._by_name = self._index()
        except (struct.error, IndexError, ValueError):
            raise InputError(f"{path}: damaged ELF file (section headers out of bounds)") from None

    def get(self, name: str) -> Optional[bytes]:
        return self._by_name.get(name)

    def _index(self) -> Dict[str, bytes]:
        e = self.endian
        # e_shoff, then e_shentsize/e_shnum/e_shstrndx (ELF64 / ELF32 offsets).
        shoff_fmt, shoff_at, counts_at = ("Q", 40, 58) if self.bits == 64 else ("I", 32, 46)
        e_type, = struct.unpack_from(e + "H", self._data, 16)
        if e_type != _ET_REL:
            raise InputError(f"{self._path}: not a kernel module "
                             "(an executable or shared library, not a relocatable .ko)")
        shoff, = struct.unpack_from(e + shoff_fmt, self._data, shoff_at)
        entsize, count, strndx = struct.unpack_from(e + "HHH", self._data, counts_at)
        first = self._header(shoff, entsize, 0)
        count = count or first.size          # extended numbering lives in entry 0
        if strndx == _SHN_XINDEX:
            strndx = first.link
        headers = [self._header(shoff, entsize, i) for i in range(count)]
        names = self._contents(headers[strndx])
        out: Dict[str, bytes] = {}
        for header in headers:
            name = names[header.name:names.index(b"\0", header.name)]
            out.setdefault(name.decode("ascii", "replace"), self._contents(header))
        return out

    def _header(self, shoff: int, entsize: int, index: int) -> _Shdr:
        at = shoff + index * entsize
        if at + entsize > len(self._data):
            raise IndexError(index)
        word = "Q" if self.bits == 64 else "I"
        # sh_name, sh_type, sh_flags, sh_addr, sh_offset, sh_size, sh_link
        name, typ, _flags, _addr, offset, size, link = struct.unpack_from(
            self.endian + "II" + word * 4 + "I", self._data, at)
        return _Shdr(name, typ, offset, size, link)

    def _contents(self, header: _Shdr) -> bytes:
        if header.type == _SHT_NOBITS:
            return b""
        if header.offset + header.size > len(self._data):
            raise IndexError(header.offset)
        return self._data[header.offset:header.offset + header.size]
