"""Reading source patches: which files they touch, and whether we can take them."""

import re
from dataclasses import dataclass
from pathlib import Path
from typing import List, Sequence

from pykpatch.errors import InputError, Refusal
from pykpatch.kernel import kbuild

_OLD = re.compile(r"^--- (\S+)")
_NEW = re.compile(r"^\+\+\+ (\S+)")


@dataclass(frozen=True)
class TouchedFile:
    """One file a patch changes, by its path in the kernel tree."""

    path: str
    created: bool
    deleted: bool

    @property
    def kind(self) -> str:
        suffix = Path(self.path).suffix
        return {".c": "source", ".h": "header", ".S": "assembly"}.get(suffix, "other")


def _strip(path: str) -> str:
    # -p1: drop the a/ or b/ (or any first) component.
    return path.split("/", 1)[1] if "/" in path else path


def touched_files(text: str, origin: str = "patch") -> List[TouchedFile]:
    """Files a unified diff changes, in order; raises if it has none."""
    files = []
    lines = text.splitlines()
    for i, line in enumerate(lines[:-1]):
        old, new = _OLD.match(line), _NEW.match(lines[i + 1])
        if not (old and new):
            continue
        created, deleted = old.group(1) == "/dev/null", new.group(1) == "/dev/null"
        path = _strip(old.group(1) if deleted else new.group(1))
        files.append(TouchedFile(path, created, deleted))
    if not files:
        raise InputError(f"{origin}: not a unified diff (no '--- a/FILE' / '+++ b/FILE' lines)")
    return files


# Places whose code cannot be live patched from a source patch, and why.
UNPATCHABLE = (
    (re.compile(r"\.S$"), "assembly is not compiled with function sections and has no "
                          "ftrace entries; rewrite the fix in C or leave it for a reboot"),
    (kbuild.OUTSIDE_KERNEL_PROPER,
     "this code runs outside the kernel proper (vDSO, real mode, boot or EFI stub, purgatory)"),
    (re.compile(r"(^|/)(Makefile|Kconfig|Kbuild)[^/]*$"), "build files change what is built, "
                                                         "not the running code"),
)


def refuse_unpatchable(files: Sequence[TouchedFile], origin: str) -> None:
    """Raise one :class:`Refusal` listing every file that cannot be live patched."""
    reasons = []
    for f in files:
        for pattern, why in UNPATCHABLE:
            if pattern.search(f.path):
                reasons.append(f"{f.path}: {why}")
                break
    if reasons:
        raise Refusal(f"{origin} cannot be live patched:\n  " + "\n  ".join(reasons))
