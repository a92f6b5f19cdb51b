"""On kernels whose objtool runs on the linked module (IBT: Debian's 6.12), a
module's objects already hold objtool's tables when the module is built of
one object.  The patch must not carry them: objtool, finding one in the
linked patch module, would write none for the rest of it (the patch
module's own init code then ran its returns through the unpatched thunk:
"WARNING ... __warn_thunk").  Real objects compiled here.
"""

import subprocess
from pathlib import Path

import pytest

from _differ_support import compile_kernel_like, site_table_source
from pykpatch.differ.driver import diff_objects
from pykpatch.differ.state import Options
from pykpatch.elf.writer import write_elf


def _compile(tmp_path: Path, value: int) -> Path:
    return compile_kernel_like(site_table_source(".return_sites"), tmp_path / f"demo{value}.o",
                               value)


@pytest.mark.parametrize("at_link", [False, True])
def test_objtools_tables_are_carried_only_where_objtool_will_not_run_again(tmp_path, at_link):
    orig, patched = _compile(tmp_path, 1), _compile(tmp_path, 2)
    result = diff_objects(str(orig), str(patched), Options(objtool_at_link=at_link))
    out = tmp_path / "out.o"
    write_elf(result.output, out)
    sections = subprocess.run(["readelf", "-SW", str(out)], capture_output=True, text=True,
                              check=True).stdout
    assert (".return_sites" in sections) is (not at_link)
