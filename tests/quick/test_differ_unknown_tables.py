"""A table the differ does not know, pointing inside a changed function, is
refused by name; a section of plain function pointers is not a table.

Real objects, compiled here with the host's gcc.
"""

from pathlib import Path

import pytest

from _differ_support import compile_kernel_like, site_table_source
from pykpatch.differ.driver import Outcome, diff_objects
from pykpatch.differ.state import Options
from pykpatch.errors import Refusal


def _compile(tmp_path: Path, value: int, sites: str) -> Path:
    return compile_kernel_like(site_table_source(sites), tmp_path / f"demo{value}{sites}.o",
                               value)


def test_an_unknown_table_pointing_inside_a_changed_function_is_refused(tmp_path):
    orig, patched = _compile(tmp_path, 1, ".demo_sites"), _compile(tmp_path, 2, ".demo_sites")
    with pytest.raises(Refusal) as refusal:
        diff_objects(str(orig), str(patched), Options())
    assert ".demo_sites: a table pykpatch does not know points inside demo" in str(refusal.value)
    assert "__demo_ops" not in str(refusal.value)


def test_ignored_sections_and_function_pointers_are_not_tables(tmp_path):
    # .discard.* (objtool's annotations) is ignored by name; __demo_ops
    # points at demo's start, as an ops struct does.
    orig, patched = _compile(tmp_path, 1, ".discard.demo"), _compile(tmp_path, 2, ".discard.demo")
    result = diff_objects(str(orig), str(patched), Options())
    assert result.outcome is Outcome.PATCH
