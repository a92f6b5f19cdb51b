#!/usr/bin/env python3
"""Make the real-fixes corpus: one patch per .c file changed between two Debian releases.

Run by hand; every step is cached under ``<cache>/real-fixes`` and a rerun only
does what is missing::

    python3 bench/real_fixes/make_corpus.py          # make (or refresh) corpus.json
    python3 bench/real_fixes/make_corpus.py --list   # print the corpus

Steps:

1. ``linux-source-<line>`` of both Debian versions, through
   :mod:`pykpatch.update.sources` (what ``kpatch-build --debian-update``
   uses; tarballs and their hashes in ``<cache>/sources``): hashed member by
   member (one streaming pass each, nothing unpacked), and only the changed
   members are extracted.
2. Which changed ``.c`` files the cloud config builds, and into what: the
   target tree's :class:`~pykpatch.build.objindex.ObjectIndex` (kbuild's own
   ``make -n``), so the answer is exact.  A ``.c`` that is not an object of
   its own but is ``#include``d by one (``gcc -M`` dependencies) counts as
   built into that object.
3. Which of them are not single-file fixes.  Between these two releases
   core headers changed (``list.h``, ``device.h``, ``fs.h``...), so nearly
   every object includes some changed header; what matters is whether the
   fix *uses* what the header change brought.  Each entry records the
   identifiers its added lines share with what changed headers it includes
   newly define (``header_idents``, a hint).  The proof is by trying: the
   runner's ``kpatch-build`` compiles the patched object anyway, and a fix
   that does not compile alone is recorded there as not single-file.
   ``--try-compile`` does the same here, up front, for the entries with a
   hint (about 4 s each).
4. One patch per file against the older source (``diff -u``, ``a/``/``b/``).
"""

import argparse
import logging
import re
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional, Set

from common import (NEW_VERSION, OLD_VERSION, RELEASE, SOURCE_PACKAGE, corpus_dir,
                    manifest_path, read_json, write_json)

from pykpatch.build.compile import DIFF_CFLAGS
from pykpatch.build.objindex import KernelObject, ObjectIndex
from pykpatch.build.pipeline import INCLUDE_DIR
from pykpatch.build.workspace import PatchedTree
from pykpatch.errors import KpatchError
from pykpatch.kernel import kbuild
from pykpatch.log import setup_logging
from pykpatch.process import run
from pykpatch.provider.debian import DebianKernel
from pykpatch.update import sources

log = logging.getLogger("pykpatch")

_MANIFEST_VERSION = 1


# -- 1. the two sources, and what changed between them -----------------------------------------

def source(version: str, kernel: DebianKernel) -> sources.SourceVersion:
    """``linux-source-<line>`` of *version*, through the product's cache (``<cache>/sources``)."""
    return sources.source_version(kernel, version)


# -- 2. what the cloud config builds --------------------------------------------------------------

def built_into(src: str, index: ObjectIndex, deps: Dict[str, List[str]]) -> List[KernelObject]:
    """The objects *src* is compiled into: its own, or those that #include it."""
    own = index.for_source(src)
    if own is not None:
        return [own]
    return sorted((index.objects[s] for s, files in deps.items() if src in files and s != src),
                  key=lambda o: o.obj)


# -- 3. single-file or not ------------------------------------------------------------------------

def compiles_alone(tree: Path, make_args: List[str], patch: Path, objects: List[KernelObject],
                   logfile: Path, tools: List[str]) -> Optional[str]:
    """None if the objects compile with *patch* applied, else the compiler's first errors."""
    kcflags = f"KCFLAGS={DIFF_CFLAGS} -I{INCLUDE_DIR}"
    with PatchedTree(tree, [patch], logfile) as patched:
        patched.apply()
        proc = run([*tools, "make", "-j2", *make_args, *kbuild.not_remade(kbuild.PREPARE_GOAL), kcflags,
                    *[o.obj for o in objects]], cwd=tree, check=False, logfile=logfile)
    if proc.returncode == 0:
        return None
    errors = [line for line in proc.stdout.splitlines() if "error:" in line]
    return "\n".join(errors[:3]) or proc.stdout.strip().splitlines()[-1]


# -- 4. patches -----------------------------------------------------------------------------------

def patch_name(path: str) -> str:
    """``net/ipv4/tcp_input.c`` -> ``net-ipv4-tcp_input``."""
    return path[:-2].replace("/", "-") if path.endswith(".c") else path.replace("/", "-")


def write_patch(path: str, old_root: Path, new_root: Path, dest: Path) -> int:
    """``diff -u`` of one file as a -p1 patch; returns the number of changed lines."""
    header = f"Changed between Debian {SOURCE_PACKAGE} {OLD_VERSION} and {NEW_VERSION}.\n\n"
    text = sources.unified_diff(path, old_root, new_root, header) or header
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(text)
    return sum(1 for line in text.splitlines()
               if line[:1] in "+-" and not line.startswith(("+++", "---")))


# -- the whole corpus ------------------------------------------------------------------------------

def make_corpus(try_compile: bool = False) -> dict:
    kernel = DebianKernel(RELEASE, version=OLD_VERSION)
    if kernel.packages.version != OLD_VERSION:
        raise KpatchError(f"{RELEASE} resolved to {kernel.packages.version}, not {OLD_VERSION}")
    root = corpus_dir()
    old, new = source(OLD_VERSION, kernel), source(NEW_VERSION, kernel)
    found = sources.changed_files(sources.member_hashes(old), sources.member_hashes(new))
    changes = {"modified": found.modified, "added": found.added, "deleted": found.deleted}
    log.info("changed: %d modified, %d added, %d deleted files", *map(len, changes.values()))
    old_root, new_root = root / "files" / OLD_VERSION, root / "files" / NEW_VERSION
    sources.extract_members(old, changes["modified"] + changes["deleted"], old_root)
    sources.extract_members(new, changes["modified"] + changes["added"], new_root)

    tree = kernel.source_tree()
    index = ObjectIndex(tree, kernel.make_args(), tools=kernel.tools)
    log.info("listing includes of every object (gcc -M, once per tree)")
    deps = index._dependencies(2)  # src -> every file it reads; cached in the tree
    changed_headers = [p for p in changes["modified"] + changes["added"] if p.endswith(".h")]
    header_names = {h: header_new_names(h, old_root, new_root) for h in changed_headers}
    c_files = [p for p in changes["modified"] if p.endswith(".c")]
    # Names many fixes add (err, dev, size_t...) say nothing about one header.
    counts: Dict[str, int] = {}
    for path in c_files:
        for name in _added_identifiers(old_root / path, new_root / path):
            counts[name] = counts.get(name, 0) + 1
    common = {name for name, n in counts.items() if n >= 15}
    logfile = root / "make_corpus.log"
    entries = []
    for path in c_files:
        entries.append(_entry(path, index, deps, header_names, common, tree, kernel,
                              old_root, new_root, logfile, try_compile))
    for path in changes["added"]:
        if path.endswith(".c"):
            entries.append({"path": path, "status": "new-file", "targets": [], "objects": []})
    for path in changes["deleted"]:
        if path.endswith(".c"):
            entries.append({"path": path, "status": "deleted-file", "targets": [], "objects": []})
    manifest = {"version": _MANIFEST_VERSION, "release": RELEASE, "old": OLD_VERSION,
                "new": NEW_VERSION, "changed_headers": sorted(changed_headers),
                "try_compile": try_compile,
                "other_changes": {k: [p for p in v if not p.endswith((".c", ".h"))]
                                  for k, v in changes.items()},
                "entries": entries}
    write_json(manifest_path(), manifest)
    return manifest


def _entry(path: str, index: ObjectIndex, deps: Dict[str, List[str]],
           header_names: Dict[str, Set[str]], common: Set[str], tree: Path, kernel: DebianKernel,
           old_root: Path, new_root: Path, logfile: Path, try_compile: bool) -> dict:
    name = patch_name(path)
    patch = corpus_dir() / "patches" / f"{name}.patch"
    lines = write_patch(path, old_root, new_root, patch)
    objects = built_into(path, index, deps)
    entry = {"path": path, "name": name, "patch": str(patch), "lines": lines,
             "objects": [o.obj for o in objects], "targets": sorted({o.target for o in objects})}
    if not objects:
        entry["status"] = "not-built"
        return entry
    headers = sorted({h for o in objects for h in deps.get(o.src, []) if h in header_names})
    used = _added_identifiers(old_root / path, new_root / path) - common
    hints = {h: sorted(header_names[h] & used) for h in headers if header_names[h] & used}
    entry["changed_headers"] = headers
    entry["header_idents"] = hints
    entry["status"] = "single-file"
    if hints and try_compile:
        log.info("%s uses what changed headers define (%s): compiling it with its patch alone",
                 path, "; ".join(f"{h}: {' '.join(v[:4])}" for h, v in hints.items()))
        error = compiles_alone(tree, kernel.make_args(), patch, objects, logfile, kernel.tools)
        if error is not None:
            entry["status"] = "not-single-file"
            entry["compile_error"] = error
    return entry


_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_CALL = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*\(")
_C_WORDS = set("""if else for while do return int char void unsigned long short signed const static
    struct union enum sizeof break continue goto switch case default inline extern bool true
    false NULL define include ifdef ifndef endif typeof u8 u16 u32 u64 s8 s16 s32 s64""".split())


def _code(text: str) -> str:
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    return re.sub(r"//[^\n]*", "", text)


def _diff_code_lines(old: Path, new: Path, sign: str) -> List[str]:
    """Code (comments dropped) of the lines a diff adds (``+``) or removes (``-``)."""
    proc = subprocess.run(["diff", "-u", str(old) if old.is_file() else "/dev/null", str(new)],
                          capture_output=True, text=True, errors="replace")
    lines = []
    for line in proc.stdout.splitlines():
        if line.startswith(sign) and not line.startswith(sign * 3):
            text = line[1:].strip()
            if not text.startswith(("*", "/*")):
                lines.append(_code(text))
    return lines


def _added_identifiers(old: Path, new: Path) -> Set[str]:
    return {i for line in _diff_code_lines(old, new, "+") for i in _IDENT.findall(line)} - _C_WORDS


def header_new_names(path: str, old_root: Path, new_root: Path) -> Set[str]:
    """Names a header change brings: new identifiers, and functions whose declaration changed."""
    old, new = old_root / path, new_root / path
    old_names = set(_IDENT.findall(_code(old.read_text(errors="replace")))) if old.is_file() else set()
    plus, minus = _diff_code_lines(old, new, "+"), _diff_code_lines(old, new, "-")
    added = {i for line in plus for i in _IDENT.findall(line)}
    redeclared = ({i for line in plus for i in _CALL.findall(line)}
                  & {i for line in minus for i in _CALL.findall(line)})
    return (added - old_names) | redeclared


def print_corpus(manifest: dict) -> None:
    by_status: Dict[str, List[dict]] = {}
    for e in manifest["entries"]:
        by_status.setdefault(e["status"], []).append(e)
    for status, entries in sorted(by_status.items()):
        print(f"{status}: {len(entries)}")
        for e in entries:
            extra = ", ".join(e.get("targets", [])) or ""
            if e.get("changed_headers"):
                extra += f" (headers: {', '.join(e['changed_headers'])})"
            print(f"  {e['path']:60} {extra}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--list", action="store_true", help="print the corpus (make it if needed)")
    parser.add_argument("--force", action="store_true", help="remake corpus.json (downloads stay)")
    parser.add_argument("--try-compile", action="store_true",
                        help="compile each fix that uses changed headers' names with its patch alone")
    parser.add_argument("-d", "--debug", action="store_true")
    args = parser.parse_args()
    setup_logging("make_corpus", args.debug)
    manifest = read_json(manifest_path(), None)
    if args.force or not manifest or manifest.get("version") != _MANIFEST_VERSION:
        try:
            manifest = make_corpus(args.try_compile)
        except KpatchError as err:
            print(f"make_corpus: error: {err}", file=sys.stderr)
            return 1
    if args.list:
        print_corpus(manifest)
    else:
        counts: Dict[str, int] = {}
        for e in manifest["entries"]:
            counts[e["status"]] = counts.get(e["status"], 0) + 1
        print(f"corpus: {manifest_path()}: "
              + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
