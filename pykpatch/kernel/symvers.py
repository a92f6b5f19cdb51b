"""``Module.symvers``: the build's list of exported symbols.

One line per export, tab-separated, as scripts/mod/modpost.c writes it::

    CRC<TAB>name<TAB>module<TAB>EXPORT_KIND[<TAB>namespace]

*module* is ``vmlinux`` or the exporting module's path without ``.ko``
(``drivers/scsi/libiscsi``); the namespace field is empty or missing for
exports outside a symbol namespace.
"""

import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Dict, Tuple, Union

from pykpatch.errors import InputError


@dataclass(frozen=True)
class Export:
    """One exported symbol."""

    name: str
    crc: str        # hex, as written ("0x762213b6")
    module: str     # "vmlinux" or a module path
    namespace: str  # "" outside a symbol namespace


def read_symvers(path: Union[str, Path]) -> Dict[str, Export]:
    """The exports of a Module.symvers file, by name (read once per file version).

    :raises InputError: the file cannot be read.
    """
    try:
        stat = os.stat(path)
    except OSError as exc:
        raise InputError(f"{path}: cannot read Module.symvers: {exc.strerror or exc}") from exc
    return _parse(str(path), (stat.st_mtime_ns, stat.st_size))


@lru_cache(maxsize=4)
def _parse(path: str, version: Tuple[int, int]) -> Dict[str, Export]:
    # *version* is only part of the cache key: a rewritten file is read again.
    try:
        lines = Path(path).read_text(errors="replace").splitlines()
    except OSError as exc:
        raise InputError(f"{path}: cannot read Module.symvers: {exc.strerror or exc}") from exc
    exports = {}
    for line in lines:
        fields = line.split("\t")
        if len(fields) >= 3:
            namespace = fields[4] if len(fields) >= 5 else ""
            exports[fields[1]] = Export(fields[1], fields[0], fields[2], namespace)
    return exports
