#!/usr/bin/env python3
"""Real fixes for the klp-build bench: a Debian stable update's changes that apply to 7.3.4.

The bench's kernel is 7.3.4+deb13-cloud-amd64 (linux-source-7.3
7.3.4-1~bpo13+1, 11 Nov 2026).  A real fix for it is a change of a Debian
stable update released after it: this takes every ``.c`` file that the
update changed (through :mod:`pykpatch.update.sources`: tarballs hashed
member by member, only changed members extracted; cached in
``<cache>/sources``), applies each file's change to the same file of 7.3.4
(``patch --forward``), and lists those that apply, with whether the cloud
config builds them (read from the Makefiles: a heuristic) and the functions
they touch::

    python3 bench/klp_build/make_fixes.py [--update 6.12|7.2]             # list
    python3 bench/klp_build/make_fixes.py [--update ...] --write PATH...  # write fixes/

Updates (``UPDATES``):

``6.12`` (default)  Debian 13's 6.12.117-1 -> 6.12.118-1 (trixie-security,
                    20 Nov 2026, later than 7.3.4): 200 of its 556 .c
                    changes apply to 7.3.4; the fixes in ``fixes/`` come
                    from it.
``7.2``             trixie-backports' 7.2.11-1~bpo13+1 -> 7.2.12-1~bpo13+1
                    (4 Nov 2026): of its 12 changed .c files none applies
                    to 7.3.4 -- 3 are already there unchanged, 9 are there
                    in another form (7.3.4 came a week later, with the fixes).

``--write`` takes source paths from the list and writes one patch per file,
against 7.3.4's source (the update's change applied to 7.3.4's file, diffed
again: exact line numbers, no fuzz), headed by where it comes from and the
changelog items that name it.  Files klp-build refuses by path (``lib/``,
``vdso``, ``realmode/rm``, ``.S``) are left out of the list.
"""

import argparse
import logging
import re
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

from common import FIXES_DIR, RELEASE, bench_dir, read_config, write_json

from pykpatch.errors import KpatchError
from pykpatch.log import setup_logging
from pykpatch.provider.debian import DebianKernel
from pykpatch.update import changelog, sources

log = logging.getLogger("pykpatch")


@dataclass(frozen=True)
class Update:
    """Two versions of one ``linux-source-<series>``; *release*, any release of
    that line, names the package (its version pins the package set)."""

    release: str
    old: str
    new: str

    @property
    def package(self) -> str:
        return "linux-source-" + ".".join(self.release.split(".")[:2])


UPDATES = {
    "6.12": Update("6.12.118+deb13-cloud-amd64", "6.12.117-1", "6.12.118-1"),
    "7.2": Update("7.2.12+deb13-cloud-amd64", "7.2.11-1~bpo13+1", "7.2.12-1~bpo13+1"),
}

# klp-build refuses patches to these (check_unsupported_patches in klp-build).
_KLP_UNSUPPORTED = re.compile(r"^lib/|/vdso/|/realmode/rm/|\.S$")
# Not kernel code an x86-64 build compiles.
_NOT_KERNEL = re.compile(r"^(tools|scripts|samples|Documentation|usr|rust)/|^arch/(?!x86/)")

_ORDER = {"n": 0, "m": 1, "y": 2}


@dataclass
class Candidate:
    """One changed .c file and what became of its change on 7.3.4."""

    path: str
    status: str = ""             # applies / missing in 7.3 / already in 7.3 / does not apply
    built: str = "?"             # y (vmlinux) / m (module) / n / ? -- from the Makefiles
    lines: int = 0               # changed lines of the update's diff
    functions: List[str] = field(default_factory=list)
    items: List[str] = field(default_factory=list)
    patch: str = ""              # the patch against 7.3.4 (when it applies)


# -- the three sources ----------------------------------------------------------------------------

def the_sources(update: Update) -> Dict[str, sources.SourceVersion]:
    line = DebianKernel(update.release, version=update.new)
    target = DebianKernel(RELEASE)
    return {"old": sources.source_version(line, update.old),
            "new": sources.source_version(line, update.new),
            "target": sources.source_version(target, target.packages.versions["source"])}


def changed_c_files(hashes: Dict[str, Dict[str, str]]) -> List[str]:
    found = sources.changed_files(hashes["old"], hashes["new"]).modified
    return [p for p in found if p.endswith(".c") and not _KLP_UNSUPPORTED.search(p)
            and not _NOT_KERNEL.search(p)]


def kbuild_files(path: str, target_hashes: Dict[str, str]) -> List[str]:
    """The Makefiles and Kbuild files of *path*'s directory and its parents."""
    parts = path.split("/")[:-1]
    found = []
    for depth in range(1, len(parts) + 1):
        d = "/".join(parts[:depth])
        found += [f"{d}/{name}" for name in ("Makefile", "Kbuild") if f"{d}/{name}" in target_hashes]
    return found


# -- does the cloud config build it? (a heuristic) ------------------------------------------------

_ASSIGN = re.compile(r"^([A-Za-z0-9_.-]+?)-(y|m|objs|\$\(CONFIG_([A-Za-z0-9_]+)\))\s*[:+]?=(.*)$")


def kbuild_assignments(text: str) -> List[tuple]:
    """(name, state-or-CONFIG, words) of each ``name-<cond> += words`` line."""
    joined = re.sub(r"\\\n", " ", text)
    found = []
    for line in joined.splitlines():
        m = _ASSIGN.match(line.strip())
        if m and not m.group(1).endswith(("flags", "FLAGS")):
            found.append((m.group(1), m.group(3) or m.group(2), m.group(4).split()))
    return found


def state_in(text: str, target: str, config: Dict[str, str], depth: int = 0) -> Optional[str]:
    """'y', 'm' or 'n' for *target* (``x.o`` or ``dir/``) in one Makefile; None if not named."""
    best: Optional[str] = None
    for name, cond, words in kbuild_assignments(text):
        if target not in words:
            continue
        state = {"y": "y", "objs": "y", "m": "m"}.get(cond) or config.get(cond, "n")
        if name not in ("obj", "lib", "core", "subdir") and depth < 4:  # a composite object
            parent = state_in(text, name + ".o", config, depth + 1)
            if parent is None:
                continue
            state = min(state, parent, key=_ORDER.get)
        best = state if best is None else max(best, state, key=_ORDER.get)
    return best


def built_as(path: str, root: Path, config: Dict[str, str]) -> str:
    """How the config builds *path*: 'y', 'm', 'n', or '?' where the Makefiles do not say."""
    parts = path.split("/")
    result = "y"
    # Each entry in its directory's Makefile: the file (x.o), then each
    # directory (dir/) in its parent's; top-level directories are always built.
    for i in range(len(parts) - 1, 0, -1):
        d = root.joinpath(*parts[:i])
        text = "".join((d / n).read_text(errors="replace") for n in ("Makefile", "Kbuild")
                       if (d / n).is_file())
        target = parts[i][:-2] + ".o" if i == len(parts) - 1 else parts[i] + "/"
        state = state_in(text, target, config)
        if state is None:
            return "?"
        result = min(result, state, key=_ORDER.get)
    return result


# -- applying the change to 7.3.4 -----------------------------------------------------------------

def rebase(path: str, diff: str, target_root: Path, work: Path) -> Optional[str]:
    """The update's *diff* applied to 7.3.4's *path*, diffed again; None if it does not apply."""
    a, b = work / "a", work / "b"
    for d in (a, b):
        shutil.rmtree(d, ignore_errors=True)
        (d / path).parent.mkdir(parents=True)
        shutil.copyfile(target_root / path, d / path)
    proc = subprocess.run(["patch", "-p1", "--batch", "--forward", "--no-backup-if-mismatch",
                           "-r", "-", "-d", str(b)], input=diff, capture_output=True, text=True)
    if proc.returncode != 0:
        return None
    return sources.unified_diff(path, a, b)


def touched_functions(patch: str, patched_file: List[str]) -> List[str]:
    """Names of the functions the hunks of *patch* change (by the enclosing C definition)."""
    names: List[str] = []
    for m in re.finditer(r"^@@ -\d+(?:,\d+)? \+(\d+)(?:,\d+)? @@\n((?:[ +\-\\].*\n?)*)", patch, re.M):
        line = int(m.group(1)) - 1
        for text in m.group(2).splitlines():
            if text.startswith(("+", "-")):
                name = enclosing_function(patched_file, min(line, len(patched_file) - 1))
                if name not in names:
                    names.append(name)
            if not text.startswith(("-", "\\")):
                line += 1
    return names


def enclosing_function(lines: List[str], index: int) -> str:
    """The function whose body holds line *index*, or "(outside functions)"."""
    opened = False
    for i in range(index, -1, -1):
        text = lines[i]
        if text.startswith("}") and i != index:
            return "(outside functions)"
        if text.startswith("{"):
            opened = True
        elif opened and re.match(r"^[A-Za-z_]", text) and "(" in text:
            head = text.split("(")[0].split()
            if head:
                return head[-1].lstrip("*")
    return "(outside functions)"


# -- the whole list ----------------------------------------------------------------------------------

def candidates(update: Update) -> List[Candidate]:
    srcs = the_sources(update)
    hashes = {k: sources.member_hashes(v) for k, v in srcs.items()}
    paths = changed_c_files(hashes)
    log.info("%d .c files changed between %s and %s (klp-build's unsupported paths left out)",
             len(paths), update.old, update.new)
    work = bench_dir() / "fixes"
    roots = {k: work / srcs[k].version for k in srcs}
    sources.extract_members(srcs["old"], paths, roots["old"])
    sources.extract_members(srcs["new"], paths, roots["new"])
    present = [p for p in paths if p in hashes["target"]]
    wanted = sorted(set(present) | {f for p in present for f in kbuild_files(p, hashes["target"])})
    sources.extract_members(srcs["target"], wanted, roots["target"])
    config = read_config(target_config())
    items = changelog.items_between(sources.changelog_text(srcs["new"]), update.old, update.new)
    found = [examine(p, hashes, roots, work, config, items) for p in paths]
    write_json(work / f"candidates-{update.package}_{update.new}.json", [asdict(c) for c in found])
    return found


def target_config() -> Path:
    """The bench kernel's config (the headers package has it, should the image not)."""
    kernel = DebianKernel(RELEASE)
    try:
        return kernel.config
    except KpatchError as err:
        log.info("no config from the image package (%s); using the headers package's",
                 str(err).splitlines()[0])
        return kernel.headers_dir / ".config"


def examine(path: str, hashes: Dict[str, Dict[str, str]], roots: Dict[str, Path], work: Path,
            config: Dict[str, str], items: List[changelog.Item]) -> Candidate:
    cand = Candidate(path)
    diff = sources.unified_diff(path, roots["old"], roots["new"]) or ""
    cand.lines = sum(1 for l in diff.splitlines() if l[:1] in "+-" and l[:3] not in ("+++", "---"))
    if path not in hashes["target"]:
        cand.status = "missing in 7.3"
        return cand
    if hashes["target"][path] == hashes["new"][path]:
        cand.status = "already in 7.3"
        return cand
    rebased = rebase(path, diff, roots["target"], work / "rebase")
    if rebased is None:
        cand.status = "does not apply"
        return cand
    cand.status = "applies"
    cand.patch = rebased
    cand.built = built_as(path, roots["target"], config)
    patched = (work / "rebase" / "b" / path).read_text(errors="replace").splitlines()
    cand.functions = touched_functions(rebased, patched)
    cand.items = [i.text for i in items if i.names_file(path, cand.functions)]
    return cand


def show(found: List[Candidate]) -> None:
    counts: Dict[str, int] = {}
    for c in found:
        counts[c.status] = counts.get(c.status, 0) + 1
    print(", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    applying = sorted((c for c in found if c.status == "applies"),
                      key=lambda c: (-_ORDER.get(c.built, -1), c.lines))
    if not applying:
        print("none applies to 7.3.4 (see the module's docstring for an update that has some)")
        return
    print(f"{'built':5} {'lines':>5}  path: functions")
    for c in applying:
        print(f"{c.built:5} {c.lines:5}  {c.path}: {', '.join(c.functions)}")
        for item in c.items[:2]:
            print(f"{'':13}{item[:110]}")


def write(update: Update, found: List[Candidate], paths: List[str]) -> None:
    by_path = {c.path: c for c in found}
    FIXES_DIR.mkdir(exist_ok=True)
    for path in paths:
        c = by_path.get(path)
        if c is None or c.status != "applies":
            raise KpatchError(f"{path}: not a candidate that applies to 7.3.4 "
                              f"({c.status if c else 'not changed by the update'})")
        dest = FIXES_DIR / (path[:-2].replace("/", "-") + ".patch")
        header = [f"Debian {update.package} {update.old} -> {update.new}: the change of {path},",
                  "applied to linux-source-7.3 7.3.4's file (bench/klp_build/make_fixes.py).",
                  f"Functions (by the enclosing definition): {', '.join(c.functions)}."]
        if c.items:
            header.append("Changelog items that may describe it (matched by function or subsystem):")
            header += [f"  {item}" for item in c.items]
        dest.write_text("\n".join(header) + "\n\n" + c.patch)
        print(f"wrote {dest.relative_to(FIXES_DIR.parent.parent.parent)}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--update", choices=sorted(UPDATES), default="6.12",
                        help="the Debian update whose changes are taken (default 6.12)")
    parser.add_argument("--write", nargs="+", default=[], metavar="PATH",
                        help="write these candidates' patches into bench/klp_build/fixes/")
    parser.add_argument("-d", "--debug", action="store_true")
    args = parser.parse_args()
    setup_logging("make_fixes", args.debug)
    try:
        update = UPDATES[args.update]
        found = candidates(update)
        if args.write:
            write(update, found, args.write)
        else:
            show(found)
    except KpatchError as err:
        print(f"make_fixes: error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
