"""``Module.symvers``: the build's list of exported symbols.

One line per export, tab-separated, as scripts/mod/modpost.c writes it::

    CRC<TAB>name<TAB>module<TAB>EXPORT_KIND[<TAB>namespace]

*module* is ``vmlinux`` or the exporting module's path without ``.ko``
(``drivers/scsi/libiscsi``); the namespace field is empty or missing for
exports outside a symbol namespace.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Union

from pykpatch.cache import once_per_file_version
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
        return _parse(path)
    except OSError as exc:
        raise InputError(f"{path}: cannot read Module.symvers: {exc.strerror or exc}") from exc


@once_per_file_version
def _parse(path: str) -> Dict[str, Export]:
    exports = {}
    for line in Path(path).read_text(errors="replace").splitlines():
        fields = line.split("\t")
        if len(fields) >= 3:
            namespace = fields[4] if len(fields) >= 5 else ""
            exports[fields[1]] = Export(fields[1], fields[0], fields[2], namespace)
    return exports
