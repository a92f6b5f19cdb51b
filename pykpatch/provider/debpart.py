"""One ELF file out of a Debian package, decompressing only the parts it needs.

The debug vmlinux is 590 MB inside an xz stream; decompressing it takes 11 s
of CPU, a sixth of a cold build.  pykpatch reads only its section headers,
its allocated sections (code and data, for the original-code check), its
symbol and string tables and ``.comment``, 60 MB in all.  Its DWARF and
relocation sections are the rest.

A .deb is an ar archive.  When dpkg compressed its ``data.tar.xz`` with
several threads, the xz stream is a series of independent blocks (24 MiB of
tar each), and the index at the end of the stream says where each one
starts.  So the tar headers are walked to the wanted member, and only the
blocks holding the bytes to keep are decompressed.  The result is a sparse
file of the member's full size: everything but the DWARF and the
relocations is byte for byte the packaged file; those read as zeros.

Anything else (one block, another compression, several streams) raises
:class:`NotSeekable`, and the caller unpacks the usual way.
"""

import lzma
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Dict, Iterator, List, Tuple

from pykpatch.elf.constants import SHT_NOBITS, SHT_REL, SHT_RELA
from pykpatch.elf.reader import EHDR, SHDR, check_elf_identity
from pykpatch.errors import InputError

_AR_MAGIC = b"!<arch>\n"
_AR_HEADER = struct.Struct("16s12s6s6s8s10s2s")
_XZ_HEADER_MAGIC = b"\xfd7zXZ\x00"
_XZ_FOOTER_MAGIC = b"YZ"
_XZ_HEADER_SIZE = 12
_XZ_FOOTER_SIZE = 12
_TAR_BLOCK = 512
# Reads go forward, except that the section headers at the end of an ELF
# file are read before its sections: two blocks kept are enough.
_BLOCKS_KEPT = 2


class NotSeekable(Exception):
    """The package's data archive cannot be read in parts; unpack it whole."""


@dataclass(frozen=True)
class XzBlock:
    file_offset: int   # of the block header, in the .deb
    size: int          # block header + compressed data + padding + check
    data_offset: int   # of its first byte in the decompressed stream
    data_size: int


def ar_member(fh: BinaryIO, prefix: str) -> Tuple[str, int, int]:
    """Name, offset and size of the first member of ar archive *fh* named *prefix*..."""
    fh.seek(0)
    if fh.read(len(_AR_MAGIC)) != _AR_MAGIC:
        raise NotSeekable("not an ar archive")
    while True:
        header = fh.read(_AR_HEADER.size)
        if len(header) < _AR_HEADER.size:
            raise NotSeekable(f"no {prefix}* member")
        name = header[:16].decode(errors="replace").strip().rstrip("/")
        size = int(header[48:58].decode().strip())
        offset = fh.tell()
        if name.startswith(prefix):
            return name, offset, size
        fh.seek(offset + size + size % 2)


def _varint(data: bytes, pos: int) -> Tuple[int, int]:
    """An xz multibyte integer at *pos*: its value and the position after it."""
    value = 0
    for i in range(9):
        byte = data[pos + i]
        value |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            return value, pos + i + 1
    raise NotSeekable("bad xz index")


def xz_blocks(fh: BinaryIO, start: int, size: int) -> Tuple[bytes, List[XzBlock]]:
    """The stream header and the blocks of the single xz stream at *start*."""
    fh.seek(start)
    header = fh.read(_XZ_HEADER_SIZE)
    fh.seek(start + size - _XZ_FOOTER_SIZE)
    footer = fh.read(_XZ_FOOTER_SIZE)
    if not header.startswith(_XZ_HEADER_MAGIC) or footer[10:] != _XZ_FOOTER_MAGIC:
        raise NotSeekable("not a plain xz stream")
    index_size = (struct.unpack_from("<I", footer, 4)[0] + 1) * 4
    index_start = start + size - _XZ_FOOTER_SIZE - index_size
    fh.seek(index_start)
    index = fh.read(index_size)
    if index[0] != 0:
        raise NotSeekable("bad xz index")
    count, pos = _varint(index, 1)
    blocks = []
    file_offset, data_offset = start + _XZ_HEADER_SIZE, 0
    for _ in range(count):
        unpadded, pos = _varint(index, pos)
        data_size, pos = _varint(index, pos)
        padded = (unpadded + 3) & ~3
        blocks.append(XzBlock(file_offset, padded, data_offset, data_size))
        file_offset += padded
        data_offset += data_size
    if file_offset != index_start:
        raise NotSeekable("more than one xz stream")
    if len(blocks) < 2:
        raise NotSeekable("a single xz block")
    return header, blocks


class XzReader:
    """Random reads of the decompressed stream, one block decompressed at a time."""

    def __init__(self, fh: BinaryIO, start: int, size: int) -> None:
        self._fh = fh
        self._stream_header, self._blocks = xz_blocks(fh, start, size)
        self._cache: Dict[int, bytes] = {}

    @property
    def size(self) -> int:
        last = self._blocks[-1]
        return last.data_offset + last.data_size

    def read(self, offset: int, length: int) -> bytes:
        parts = []
        for index, block in self._blocks_between(offset, offset + length):
            data = self._block_data(index, block)
            lo = max(offset, block.data_offset) - block.data_offset
            hi = min(offset + length, block.data_offset + block.data_size) - block.data_offset
            parts.append(data[lo:hi])
        return b"".join(parts)

    def _blocks_between(self, lo: int, hi: int) -> Iterator[Tuple[int, XzBlock]]:
        for index, block in enumerate(self._blocks):
            if block.data_offset < hi and lo < block.data_offset + block.data_size:
                yield index, block

    def _block_data(self, index: int, block: XzBlock) -> bytes:
        if index not in self._cache:
            self._fh.seek(block.file_offset)
            # A block decodes alone behind the stream header (which names
            # the check); the decoder is left waiting for the index.
            decoder = lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
            data = decoder.decompress(self._stream_header + self._fh.read(block.size))
            if len(data) != block.data_size:
                raise NotSeekable(f"xz block {index} decoded to {len(data)} bytes, "
                                  f"not {block.data_size}")
            if len(self._cache) >= _BLOCKS_KEPT:
                del self._cache[next(iter(self._cache))]  # the oldest
            self._cache[index] = data
        return self._cache[index]


def tar_member(reader: XzReader, name: str) -> Tuple[int, int]:
    """Offset and size of the data of tar member *name* in the decompressed stream."""
    offset, long_name = 0, None
    while offset + _TAR_BLOCK <= reader.size:
        header = reader.read(offset, _TAR_BLOCK)
        if header == bytes(_TAR_BLOCK):
            break  # end of archive
        size = int(header[124:136].rstrip(b"\0 ").decode() or "0", 8)
        kind = header[156:157]
        data = offset + _TAR_BLOCK
        if kind == b"L":  # GNU: the next member's name, as data
            long_name = reader.read(data, size).rstrip(b"\0").decode()
        elif kind != b"x":
            member = long_name or _ustar_name(header)
            long_name = None
            if member == name:
                return data, size
        offset = data + (size + _TAR_BLOCK - 1) // _TAR_BLOCK * _TAR_BLOCK
    raise FileNotFoundError(name)


def _ustar_name(header: bytes) -> str:
    name = header[0:100].split(b"\0")[0].decode()
    if header[257:262] == b"ustar":
        prefix = header[345:500].split(b"\0")[0].decode()
        if prefix:
            return f"{prefix}/{name}"
    return name


def _kept_ranges(reader: XzReader, start: int, size: int) -> List[Tuple[int, int]]:
    """(offset, length) of the ELF member's parts pykpatch reads: all but DWARF and relocations."""
    header = reader.read(start, EHDR.size)
    try:
        check_elf_identity(header, "the member", require_rel=False)
    except InputError as why:
        raise NotSeekable(str(why)) from why
    ehdr = EHDR.unpack(header)
    phoff, shoff, phentsize, phnum, shentsize, shnum, shstrndx = (
        ehdr[5], ehdr[6], ehdr[9], ehdr[10], ehdr[11], ehdr[12], ehdr[13])
    if shentsize != SHDR.size or not shnum:
        raise NotSeekable("an ELF file without sections")
    table = reader.read(start + shoff, shnum * SHDR.size)
    headers = [SHDR.unpack_from(table, i * SHDR.size) for i in range(shnum)]
    names_hdr = headers[shstrndx]
    names = reader.read(start + names_hdr[4], names_hdr[5])
    ranges = [(0, EHDR.size), (phoff, phentsize * phnum), (shoff, shnum * SHDR.size)]
    for sh_name, sh_type, _flags, _addr, offset, sec_size, *_ in headers:
        name = names[sh_name:names.index(b"\0", sh_name)].decode()
        if sh_type in (SHT_REL, SHT_RELA, SHT_NOBITS) or name.startswith(".debug_"):
            continue
        ranges.append((offset, sec_size))
    return [(o, n) for o, n in ranges if n and o + n <= size]


def extract_elf_without_debug(deb: Path, member: str, target: Path) -> None:
    """Write ELF file *member* of package *deb* to *target*, its DWARF and
    relocations left as holes.  Raises NotSeekable or FileNotFoundError.

    Damaged packages raise NotSeekable too: unpacked the usual way, dpkg-deb
    and tar say what is wrong with them.
    """
    try:
        _extract(deb, member, target)
    except (lzma.LZMAError, struct.error, IndexError, ValueError, UnicodeDecodeError) as damaged:
        raise NotSeekable(f"unexpected contents ({damaged})") from damaged


def _extract(deb: Path, member: str, target: Path) -> None:
    with open(deb, "rb") as fh:
        _name, start, size = ar_member(fh, "data.tar.xz")
        reader = XzReader(fh, start, size)
        data, length = tar_member(reader, member)
        with open(target, "wb") as out:
            out.truncate(length)
            for offset, count in sorted(_kept_ranges(reader, data, length)):
                out.seek(offset)
                out.write(reader.read(data + offset, count))
