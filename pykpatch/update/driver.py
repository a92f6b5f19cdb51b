"""``kpatch-build --debian-update VERSION``: one cumulative live patch of a Debian update.

The stages: check VERSION against the target before anything is downloaded;
fetch VERSION's ``linux-source`` and find the files that differ from the
target's; plan what this kernel builds; build every candidate file at once
in a partial build, which leaves out what does not compile alone or is
refused; settle every file's status from the build, match the changelog,
and write the report.
"""

import json
import logging
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Set

from pykpatch.build.module import module_name
from pykpatch.build.pipeline import BuildOptions, BuildResult, Progress, build, resolve_target
from pykpatch.build.target import Target, running_release
from pykpatch.errors import InputError
from pykpatch.provider.archive import is_debian_version, version_key
from pykpatch.provider.debian import DebianKernel
from pykpatch.update import changelog, plan, sources
from pykpatch.update.plan import FileChange, Selection

log = logging.getLogger("pykpatch")

# How many of the archive's versions an error message lists.
_LISTED_VERSIONS = 6


@dataclass
class UpdateOptions:
    version: str
    build: BuildOptions                        # release, name, output, jobs, cache ...
    selection: Selection = field(default_factory=Selection)


@dataclass
class Update:
    """What --debian-update found and did; the report is made from this."""

    release: str
    source_package: str
    current: str                               # the target's Debian version
    version: str                               # the update's
    files: List[FileChange] = field(default_factory=list)
    items: List[changelog.Item] = field(default_factory=list)
    module: Optional[Path] = None
    report_path: Optional[Path] = None
    combined_patch: Optional[Path] = None
    result: Optional[BuildResult] = None
    nothing: str = ""                          # why no module was made

    @property
    def partial(self) -> bool:
        return self.module is not None and bool(self.left_out())

    def left_out(self) -> List[FileChange]:
        """Changed kernel code this kernel builds (or may) that is not in the module."""
        return [f for f in self.files if f.status in plan.LEFT_OUT]

    def cves(self) -> List[str]:
        return changelog.cves_of(self.items)

    def patched_cves(self) -> List[str]:
        return sorted({c for f in self.files if f.status == plan.PATCHED for c in f.cves})


# -- the first stage: is VERSION an update of this kernel? --------------------------------------

def check_version(kernel: DebianKernel, version: str) -> str:
    """The target's own Debian version, when *version* is a newer one of its source
    package in the archive; InputError otherwise (nothing is downloaded)."""
    series = kernel.release.series
    package = kernel.release.package_names()["source"]
    if not is_debian_version(version):
        raise InputError(f"'{version}' is not a Debian version (like 6.1.192-3)")
    upstream = version.split(":")[-1].split("-")[0]
    if upstream != series and not upstream.startswith(series + "."):
        raise InputError(f"{version} is not a version of Linux {series}: {kernel.release.release} "
                         f"is updated by {package}")
    current = kernel.packages.version
    if version_key(version) == version_key(current):
        raise InputError(f"{kernel.release.release} is already built from {package} {version}")
    if version_key(version) < version_key(current):
        raise InputError(f"{version} is older than {current}, which {kernel.release.release} "
                         "is built from: a live patch only moves a kernel forward")
    known = kernel.archive.versions(package)
    if version not in known:
        newer = [v for v in known if version_key(v) > version_key(current)]
        listed = ", ".join(newer[:_LISTED_VERSIONS]) or "none"
        raise InputError(f"{package} {version} is not in Debian's archive (versions newer than "
                         f"{current} there: {listed})")
    return current


# -- the whole run ----------------------------------------------------------------------------

def build_update(opts: UpdateOptions, progress: Progress, logfile: Path) -> Update:
    """Build the update's live patch.  When nothing of it could be patched, the
    update has no module and says why (the caller prints the report, then fails)."""
    release = opts.build.release or running_release()
    kernel = DebianKernel(release, cache=opts.build.cache)
    current = check_version(kernel, opts.version)
    update = Update(release, kernel.release.package_names()["source"], current, opts.version)
    progress.stage(f"{update.source_package}: {current} (the target's) -> {opts.version}")
    old, new = sources.source_version(kernel, current), sources.source_version(kernel, opts.version)
    changes = sources.changed_files(sources.member_hashes(old), sources.member_hashes(new))
    work = kernel.cache / "updates" / f"{release}_{opts.version}"
    old_root = sources.extract_members(old, changes.modified + changes.deleted, work / "old")
    new_root = sources.extract_members(new, changes.modified + changes.added, work / "new")
    update.items = changelog.items_between(sources.changelog_text(new), current, opts.version)
    progress.stage(f"target kernel {release}: preparing (cached after the first time)")
    target = resolve_target(replace(opts.build, release=release))
    update.files = plan.plan_changes(changes, target.index, opts.selection, opts.build.jobs)
    chosen = plan.candidates(update.files)
    _write_patches(update, chosen, old_root, new_root, work / "patches")
    if chosen:
        progress.stage(f"{len(chosen)} changed file(s) to build, of {len(update.files)} changed")
        _build(update, opts, target, chosen, progress, logfile)
    else:
        update.nothing = "no changed file of this update is built by this kernel's config"
        _match_changelog(update)
    _write_report(update, opts.build.output, module_name([], _name(opts)))
    return update


def _name(opts: UpdateOptions) -> str:
    return opts.build.name or f"livepatch-{opts.version}"


def _write_patches(update: Update, chosen: Sequence[FileChange], old_root: Path, new_root: Path,
                   dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    header = (f"The change of {update.source_package} {update.current} -> {update.version} "
              "to this file.\n\n")
    for f in chosen:
        text = sources.unified_diff(f.path, old_root, new_root, header)
        f.patch = dest / (f.path.replace("/", "-") + ".patch")
        f.patch.write_text(text or "")


def _build(update: Update, opts: UpdateOptions, target: Target, chosen: Sequence[FileChange],
           progress: Progress, logfile: Path) -> None:
    def describe(reports: List[dict], left_out: Dict[str, List[str]]) -> str:
        _settle(update, chosen, target, reports, left_out)
        _match_changelog(update)  # (the description quotes the patched files' items)
        return description(update)

    def together(left_out: Set[str]) -> Set[str]:
        return {o.obj for f in chosen if any(o.obj in left_out for o in f.objects)
                for o in f.objects}

    build_opts = replace(opts.build, release=update.release, name=_name(opts), partial=True,
                         patches=[f.patch for f in chosen if f.patch], describe=describe,
                         together=together)
    result = build(build_opts, progress, logfile, target=target)
    update.result = result
    if result.module is None:
        # (with a module, describe() settled and matched the same reports already;
        # settling runs gcc -M per uncompiled object, matching every changelog item)
        _settle(update, chosen, target, result.reports, result.left_out)
        _match_changelog(update)
    update.module = result.module
    update.report_path = result.report_path
    if result.module is None:
        update.nothing = result.nothing
        for f in chosen:
            if f.status == plan.PATCHED:  # (nothing of it is in a module)
                f.status, f.why = plan.REFUSED, result.nothing
    else:
        update.combined_patch = _combined_patch(update, result.module)


def _settle(update: Update, chosen: Sequence[FileChange], target: Target, reports: List[dict],
            left_out: Dict[str, List[str]]) -> None:
    """Each candidate's status from the build: patched, no-change, refused, needs-commit."""
    by_object = {r["object"]: r for r in reports}
    # Headers of the update that are not in the build.
    missing = {f.path for f in update.files if f.path.endswith(".h") and f not in chosen}
    for f in chosen:
        objs = [o.obj for o in f.objects]
        f.functions = [dict(fn, object=obj) for obj in objs if obj in by_object
                       for fn in by_object[obj].get("functions", [])]
        failed = [o for o in f.objects if o.obj in left_out]
        if not failed:
            f.status = plan.PATCHED if f.functions else plan.NO_CHANGE
            f.why = "" if f.functions else "compiles to the same code"
            continue
        reasons = [f"{o.obj}: {why}" for o in failed for why in left_out[o.obj]]
        uncompiled = [o for o in failed if any(w.startswith("does not compile")
                                                for w in left_out[o.obj])]
        headers = sorted({h for o in uncompiled for h in target.index.files_read_by(o)
                          if h in missing})
        if uncompiled and headers:
            f.status = plan.NEEDS_COMMIT
            f.why = (f"needs the rest of its commit: {', '.join(headers)} changed too "
                     f"({reasons[0]}); try --only {f.path} {' '.join(headers)}")
        else:
            f.status = plan.REFUSED
            f.why = "; ".join(reasons)


def _combined_patch(update: Update, module: Path) -> Path:
    """The patches of the files in the module, as one file beside it."""
    path = module.with_suffix(".patch")
    parts = [f.patch.read_text() for f in update.files
             if f.status == plan.PATCHED and f.patch is not None]
    path.write_text("".join(parts))
    return path


def _match_changelog(update: Update) -> None:
    for f in update.files:
        if f.status in (plan.OTHER, plan.NOT_BUILT, plan.EXCLUDED):
            continue
        functions = {fn["name"] for fn in f.functions} | _hunk_functions(f.patch)
        matched = [i for i in update.items if i.names_file(f.path, functions)]
        f.changelog = [f"{i.version}: {i.text}" for i in matched]
        f.cves = changelog.cves_of(matched)


_HUNK_RE = re.compile(r"^@@ [^@]+ @@.*?\b([A-Za-z_][A-Za-z0-9_]*)\s*\(", re.M)


def _hunk_functions(patch: Optional[Path]) -> set:
    if patch is None or not patch.is_file():
        return set()
    return set(_HUNK_RE.findall(patch.read_text(errors="replace")))


# Up to this many changelog items of the patched files are quoted whole in the
# module's description; beyond that, only their CVE ids.
_QUOTED_ITEMS = 3


def description(update: Update) -> str:
    """The module's description: the update, its changelog items or CVEs, and PARTIAL."""
    text = (f"Live patch of Debian {update.source_package} {update.current} -> {update.version} "
            f"for {update.release}")
    items = sorted({entry.split(": ", 1)[1] for f in update.files if f.status == plan.PATCHED
                    for entry in f.changelog})
    cves = update.patched_cves() or update.cves()
    if items and len(items) <= _QUOTED_ITEMS:
        text += ": " + "; ".join(items)
    elif cves:
        shown = cves[:12]
        text += ": " + " ".join(shown) + (f" and {len(cves) - len(shown)} more" if cves[12:] else "")
    left_out = update.left_out()
    if left_out:
        text += (f". PARTIAL: {len(left_out)} changed file(s) of kernel code are not in it "
                 "(see the build report)")
    return text


def _write_report(update: Update, output: Path, name: str) -> None:
    from pykpatch.update.report import to_json
    output.mkdir(parents=True, exist_ok=True)
    path = update.report_path or output / f"{name}.json"
    data = json.loads(path.read_text()) if update.report_path else {"module": None, "objects": []}
    data["update"] = to_json(update)
    path.write_text(json.dumps(data, indent=2) + "\n")
    update.report_path = path
