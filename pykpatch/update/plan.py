"""What of a kernel update this kernel builds, and what goes into the live patch.

Every changed file gets one :class:`FileChange` with a status; the files
that can go into the patch (``candidate``) get a patch of their own, and the
build later settles them as ``patched``, ``no-change``, ``refused`` or
``needs-commit``.  Headers are not candidates unless named with ``--only``:
every object that includes one would be compiled twice and diffed, and a
header change that matters to a fix arrives with a ``.c`` change that uses it.
"""

import fnmatch
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from pykpatch.build.objindex import KernelObject, ObjectIndex
from pykpatch.build.patchfile import UNPATCHABLE, TouchedFile
from pykpatch.errors import InputError
from pykpatch.update.sources import ChangedFiles

# Statuses, in the order the report shows them.
PATCHED = "patched"            # in the module
NO_CHANGE = "no-change"        # compiles to the same code
REFUSED = "refused"            # the differ or a check refused it
NEEDS_COMMIT = "needs-commit"  # does not compile without the rest of its commit
CANDIDATE = "candidate"        # to be built (before the build settles it)
HEADER = "header"              # a changed header, not built unless named
NOT_BUILT = "not-built"        # this kernel's config does not compile it
UNPATCHABLE_FILE = "unpatchable"  # assembly, build files, code outside the kernel proper
NEW_FILE = "new-file"
DELETED_FILE = "deleted-file"
OTHER = "other"                # documentation, tools, scripts: not kernel code
EXCLUDED = "excluded"          # left out by --only/--exclude
# Kernel code of the update that a module does not have (its build is then partial).
LEFT_OUT = (REFUSED, NEEDS_COMMIT, HEADER, NEW_FILE, DELETED_FILE, UNPATCHABLE_FILE, EXCLUDED)
# Trees of the source package that are not the kernel (build helpers, tools, docs).
_NOT_KERNEL = ("Documentation/", "tools/", "scripts/", "samples/", "LICENSES/", "usr/gen_init")
STATUS_ORDER = [PATCHED, REFUSED, NEEDS_COMMIT, NO_CHANGE, CANDIDATE, HEADER, NEW_FILE,
                DELETED_FILE, UNPATCHABLE_FILE, NOT_BUILT, EXCLUDED, OTHER]


@dataclass
class FileChange:
    path: str
    status: str
    why: str = ""
    objects: List[KernelObject] = field(default_factory=list)
    patch: Optional[Path] = None
    functions: List[dict] = field(default_factory=list)   # from the build's report
    changelog: List[str] = field(default_factory=list)    # matched changelog item texts
    cves: List[str] = field(default_factory=list)

    def to_json(self) -> dict:
        out = {"path": self.path, "status": self.status, "why": self.why,
               "objects": [o.obj for o in self.objects], "functions": self.functions,
               "changelog": self.changelog, "cves": self.cves}
        return {k: v for k, v in out.items() if v or k in ("path", "status")}


@dataclass(frozen=True)
class Selection:
    """``--only`` and ``--exclude``: paths or shell patterns of the tree."""

    only: Sequence[str] = ()
    exclude: Sequence[str] = ()

    def picks(self, path: str) -> bool:
        if self.only and not _matches(path, self.only):
            return False
        return not _matches(path, self.exclude)

    def named(self, path: str) -> bool:
        return _matches(path, self.only)

    def unmatched(self, paths: Sequence[str]) -> List[str]:
        """Patterns that match no changed file (a typo the user wants to hear of)."""
        return [p for p in [*self.only, *self.exclude] if not _matches_any(p, paths)]


def _matches(path: str, patterns: Sequence[str]) -> bool:
    return any(path == p or fnmatch.fnmatchcase(path, p) or path.startswith(p.rstrip("/") + "/")
               for p in patterns)


def _matches_any(pattern: str, paths: Sequence[str]) -> bool:
    return any(_matches(path, [pattern]) for path in paths)


def plan_changes(changes: ChangedFiles, index: ObjectIndex, selection: Selection,
                 jobs: int = 2) -> List[FileChange]:
    """One FileChange per changed file; raises InputError for a --only/--exclude typo."""
    every = changes.modified + changes.added + changes.deleted
    typos = selection.unmatched(every)
    if typos:
        raise InputError("--only/--exclude " + ", ".join(typos) + ": no such file changed "
                         f"in this update ({len(every)} files changed)")
    plan = []
    for path in changes.modified:
        plan.append(_modified(path, index, selection, jobs))
    plan += [_added_or_deleted(p, NEW_FILE, selection) for p in changes.added]
    plan += [_added_or_deleted(p, DELETED_FILE, selection) for p in changes.deleted]
    return plan


def _modified(path: str, index: ObjectIndex, selection: Selection, jobs: int) -> FileChange:
    kind = TouchedFile(path, False, False).kind
    if _not_kernel_code(path):
        return FileChange(path, OTHER, "not kernel code")
    if not selection.picks(path):
        return FileChange(path, EXCLUDED, "left out by --only/--exclude")
    for pattern, why in UNPATCHABLE:
        if pattern.search(path):
            return FileChange(path, UNPATCHABLE_FILE, why)
    if kind == "other" and not _kernel_build_file(path):
        return FileChange(path, UNPATCHABLE_FILE, "not C source (generated into C, another "
                                                  "language, or data): needs the new kernel")
    if kind == "header" and not selection.named(path):
        return FileChange(path, HEADER, "a header: not built unless named with --only, since "
                                        "every object that includes it is compiled and diffed")
    objects = _built_into(path, index, jobs)
    if not objects:
        return FileChange(path, NOT_BUILT, "this kernel's config does not compile it")
    return FileChange(path, CANDIDATE, "", objects)


def _not_kernel_code(path: str) -> bool:
    return path.startswith(_NOT_KERNEL) or path.rsplit("/", 1)[-1].startswith(".")


def _kernel_build_file(path: str) -> bool:
    name = path.rsplit("/", 1)[-1]
    return name.startswith(("Makefile", "Kconfig", "Kbuild"))


def _built_into(path: str, index: ObjectIndex, jobs: int) -> List[KernelObject]:
    """The objects *path* is compiled into: its own, or those that #include it."""
    own = index.for_source(path) if path.endswith(".c") else None
    if own is not None:
        return [own]
    return index.objects_including(path, jobs)


def _added_or_deleted(path: str, status: str, selection: Selection) -> FileChange:
    if _not_kernel_code(path):
        return FileChange(path, OTHER, "not kernel code")
    if not selection.picks(path):
        return FileChange(path, EXCLUDED, "left out by --only/--exclude")
    what = "a new file" if status == NEW_FILE else "a deleted file"
    return FileChange(path, status, f"{what}: a live patch replaces functions of existing "
                                    "objects; this needs the new kernel")


def candidates(plan: Sequence[FileChange]) -> List[FileChange]:
    return [f for f in plan if f.status == CANDIDATE]


def by_status(plan: Sequence[FileChange]) -> Dict[str, List[FileChange]]:
    out: Dict[str, List[FileChange]] = {}
    for f in sorted(plan, key=lambda f: (STATUS_ORDER.index(f.status), f.path)):
        out.setdefault(f.status, []).append(f)
    return out
