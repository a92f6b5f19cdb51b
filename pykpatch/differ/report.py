"""What the differ decided for one object, for people and for tools.

Every function in the output is listed with the reason it is there: its
own code changed, it is the child of a changed function, it is new (and who
references it).
"""

from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping

from pykpatch.differ.include import included_functions
from pykpatch.differ.klp import kernel_name
from pykpatch.differ.state import DiffState


@dataclass
class FunctionReport:
    """One function of the output and why it is there."""

    name: str
    status: str
    reason: str
    patched: bool  # listed in .pykpatch.funcs (the kernel redirects it)
    sympos: int = 0  # which same-named kernel symbol it replaces (klp sympos; 0: unique)


@dataclass
class Report:
    """Per-object summary: functions, line-number-only changes, warnings."""

    object: str
    outcome: str
    functions: List[FunctionReport] = field(default_factory=list)
    line_only: List[str] = field(default_factory=list)
    klp_symbols: List[str] = field(default_factory=list)
    warnings: List[str] = field(default_factory=list)

    def to_dict(self) -> Dict[str, Any]:
        """A JSON-able dict of the report."""
        return {
            "object": self.object,
            "outcome": self.outcome,
            "functions": [vars(f) for f in self.functions],
            "line_only": self.line_only,
            "klp_symbols": self.klp_symbols,
            "warnings": self.warnings,
        }

    def to_text(self) -> str:
        """Human-readable lines, one per function."""
        lines = [f"{self.object}: {self.outcome}"]
        for func in self.functions:
            mark = "patched" if func.patched else "included"
            if func.sympos:
                mark += f", kernel symbol #{func.sympos} of that name"
            lines.append(f"  {func.status:8} {func.name} ({mark}: {func.reason})")
        for name in self.line_only:
            lines.append(f"  same     {name} (only __LINE__ values moved)")
        lines.extend(f"  warning: {w}" for w in self.warnings)
        return "\n".join(lines)


def build_report(state: DiffState, outcome: str, patched: Mapping[str, int],
                 klp_symbols: List[str]) -> Report:
    """Summarise *state* (after the include stage, if it ran); *patched*: the
    kernel name of each redirected function -> its sympos."""
    report = Report(object=state.patched.path, outcome=outcome, warnings=list(state.warnings),
                    klp_symbols=sorted(klp_symbols))
    for func in included_functions(state):
        status = state.status_of(func)
        parent = state.patched.parent.get(func)
        reason = state.reasons.get(func)
        if reason is None:
            reason = f"child of {parent.name}" if parent is not None else status.value
        name = kernel_name(state, func)
        report.functions.append(FunctionReport(name, status.value, reason, name in patched,
                                               patched.get(name, 0)))
    owners = state.patched.owner
    report.line_only = sorted(owners[s].name if s in owners else s.name for s in state.line_only)
    return report
