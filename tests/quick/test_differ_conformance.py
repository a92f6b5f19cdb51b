"""Every kpatch unit-object pair through our differ, checked with binutils.

For each case of expectations.json: the same accept/refuse decision as the
reference differ, the same number of function symbols (``nm`` types t/T)
and every extra fact listed under ``checks``, read back with readelf/nm --
never from our own model.
"""

import re
from pathlib import Path
from typing import Callable, Dict, List

import pytest

from _differ_support import corpus, load_cases, tool  # noqa: F401 (fixture)
from pykpatch.differ.driver import Outcome, diff_objects
from pykpatch.differ.state import Options
from pykpatch.elf.writer import write_elf
from pykpatch.errors import Refusal

CASES = load_cases()

# Where we deliberately keep more than the reference differ: case -> (our
# function count, why).  Each is a correctness fix, checked further below.
BETTER_THAN_REFERENCE = {
    "cold-change-parent": (2, "the unchanged meminfo_proc_show.cold.0 jumps back into its "
                              "parent; the kernel's copy would return into the old parent, so "
                              "it comes with the changed parent"),
}


def _function_count(obj: Path) -> int:
    return sum(1 for line in tool("nm", str(obj)).splitlines()
               if len(line.split()) == 3 and line.split()[1] in "tT")


def _relocation_lines(obj: Path, section: str = "") -> List[str]:
    lines, current = [], None
    for line in tool("readelf", "-rW", str(obj)).splitlines():
        match = re.match(r"Relocation section '([^']+)'", line)
        if match:
            current = match.group(1)
        elif current and (not section or current == section):
            lines.append(line)
    return lines


def _has_relocation(lines: List[str], rtype: str, symbol: str, addend: int) -> bool:
    sign = "-" if addend < 0 else "+"
    wanted = f"{symbol} {sign} {abs(addend):x}"
    return any(rtype in line and line.rstrip().endswith(wanted) for line in lines)


def _check_local(obj: Path, match: "re.Match[str]") -> bool:
    return f" t {match.group(1)}" in tool("nm", str(obj))


def _check_no_undefined_section_symbol(obj: Path, match: "re.Match[str]") -> bool:
    return not any(" SECTION " in line and " UND " in line
                   for line in tool("readelf", "-sW", str(obj)).splitlines())


def _check_modinfo(obj: Path, match: "re.Match[str]") -> bool:
    dump = tool("readelf", "-p", ".modinfo", str(obj))
    return dump.count("import_ns=") == int(match.group(1))


def _check_mcount(obj: Path, match: "re.Match[str]") -> bool:
    return _has_relocation(_relocation_lines(obj, ".rela__mcount_loc"), "R_X86_64_64",
                           match.group(1), int(match.group(2), 0))


def _check_any_relocation(obj: Path, match: "re.Match[str]") -> bool:
    return _has_relocation(_relocation_lines(obj), match.group(1), match.group(2),
                           int(match.group(3), 0))


CHECKS: Dict[str, Callable[[Path, "re.Match[str]"], bool]] = {
    r"the symbol (\S+) is LOCAL in the output \(nm type t\)": _check_local,
    r"no SECTION symbol in the output is undefined \(UND\)": _check_no_undefined_section_symbol,
    r"the output \.modinfo holds (\d+) import_ns= strings": _check_modinfo,
    r"the output __mcount_loc has an R_X86_64_64 relocation to (\S+) \+ (\S+)": _check_mcount,
    r"the output has an (R_X86_64_\w+) relocation to (\S+) \+ (\S+)": _check_any_relocation,
}


def _verify(obj: Path, check: str) -> bool:
    for pattern, verify in CHECKS.items():
        match = re.fullmatch(pattern, check)
        if match:
            return verify(obj, match)
    raise AssertionError(f"no verifier for corpus check {check!r}; add one to CHECKS")


@pytest.mark.parametrize("case", CASES, ids=[c["case"] for c in CASES])
def test_case(corpus, tmp_path, case):
    options = Options(struct_sizes=case["struct_sizes"], patch_name=f"test_{case['case']}")
    try:
        result = diff_objects(str(corpus / case["orig"]), str(corpus / case["patched"]), options)
    except Refusal as refusal:
        assert case["expect"] == "refused", f"refused: {refusal}"
        return
    if case["expect"] == "refused":
        assert result.outcome is Outcome.NO_CHANGE, "expected no module for this pair"
        return
    assert result.outcome is Outcome.PATCH and result.output is not None
    out = tmp_path / "out.o"
    write_elf(result.output, out)
    readelf = __import__("subprocess").run(["readelf", "-aW", str(out)], capture_output=True,
                                            text=True)
    assert readelf.returncode == 0 and "Warning" not in readelf.stderr, readelf.stderr
    if case["functions"] is not None:
        expected = BETTER_THAN_REFERENCE.get(case["case"], (case["functions"],))[0]
        assert _function_count(out) == expected, result.report.to_text()
    for check in case.get("checks") or []:
        assert _verify(out, check), check


def test_corpus_is_complete(corpus):
    """51 patches and 4 refusals: the corpus we promise to pass."""
    expects = [c["expect"] for c in CASES]
    assert len(CASES) == 55 and expects.count("refused") == 4


def test_an_unchanged_cold_part_returns_into_the_new_parent(corpus, tmp_path):
    """The carried .cold copy's jump back lands in the patched parent."""
    case = next(c for c in CASES if c["case"] == "cold-change-parent")
    options = Options(struct_sizes=case["struct_sizes"], patch_name="cold")
    result = diff_objects(str(corpus / case["orig"]), str(corpus / case["patched"]), options)
    out = tmp_path / "out.o"
    write_elf(result.output, out)
    cold = _relocation_lines(out, ".rela.text.unlikely.meminfo_proc_show")
    assert any("meminfo_proc_show" in line and "cold" not in line and "klp" not in line
               for line in cold), cold
    parent = _relocation_lines(out, ".rela.text.meminfo_proc_show")
    assert not any(".klp.sym" in line and "cold" in line for line in parent), parent
