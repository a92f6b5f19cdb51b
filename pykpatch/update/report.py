"""The report of ``--debian-update``: every changed file, as text and as JSON."""

from typing import Dict, List

from pykpatch.update import plan
from pykpatch.update.plan import FileChange

# Per status: the heading, and what a person could do about such a file.
HEADINGS: Dict[str, str] = {
    plan.PATCHED: "in the patch",
    plan.REFUSED: "refused",
    plan.NEEDS_COMMIT: "needs the rest of its commit (a header)",
    plan.NO_CHANGE: "no change in the compiled code",
    plan.CANDIDATE: "not built (the build stopped before it)",
    plan.HEADER: "headers, not in the patch",
    plan.NEW_FILE: "new files",
    plan.DELETED_FILE: "deleted files",
    plan.UNPATCHABLE_FILE: "cannot be live patched",
    plan.NOT_BUILT: "not built by this kernel's config",
    plan.EXCLUDED: "left out by --only/--exclude",
    plan.OTHER: "not kernel code (documentation, tools, scripts)",
}
ADVICE: Dict[str, str] = {
    plan.REFUSED: "write a fix that avoids what is named, and build it with kpatch-build; "
                  "or leave it for a reboot into the new kernel",
    plan.NEEDS_COMMIT: "build it with the headers it needs (--only FILE HEADER...); every "
                       "object including a header is then compiled and diffed",
    plan.HEADER: "name it with --only (with the .c files of its commit) to build its users",
    plan.NEW_FILE: "a reboot into the new kernel",
    plan.DELETED_FILE: "a reboot into the new kernel",
    plan.UNPATCHABLE_FILE: "a reboot into the new kernel",
}
# Statuses listed file by file; the others are counted, with a few examples.
_DETAILED = (plan.PATCHED, plan.REFUSED, plan.NEEDS_COMMIT, plan.NO_CHANGE, plan.HEADER,
             plan.NEW_FILE, plan.DELETED_FILE, plan.UNPATCHABLE_FILE, plan.CANDIDATE)
_EXAMPLES = 5


def to_json(update) -> dict:
    groups = plan.by_status(update.files)
    return {
        "release": update.release,
        "source_package": update.source_package,
        "from": update.current,
        "to": update.version,
        "module": update.module.name if update.module else None,
        "partial": update.partial,
        "nothing": update.nothing or None,
        "combined_patch": update.combined_patch.name if update.combined_patch else None,
        "counts": {status: len(files) for status, files in groups.items()},
        "cves": update.cves(),
        "cves_in_module": update.patched_cves() if update.module else [],
        "files": [f.to_json() for files in groups.values() for f in files],
        "changelog": [{"version": i.version, "text": i.text, "cves": i.cves,
                       "files": [f.path for f in update.files
                                 if f"{i.version}: {i.text}" in f.changelog]}
                      for i in update.items],
    }


def text_lines(update) -> List[str]:
    groups = plan.by_status(update.files)
    lines = [f"{update.source_package} {update.current} -> {update.version} for "
             f"{update.release}: {len(update.files)} changed file(s), "
             f"{len(update.items)} changelog item(s)"]
    for status, files in groups.items():
        lines.append(f"  {HEADINGS[status]} ({len(files)}):")
        if status in _DETAILED:
            for f in files:
                lines += _file_lines(f)
        else:
            shown = ", ".join(f.path for f in files[:_EXAMPLES])
            lines.append(f"    {shown}" + (f" ... and {len(files) - _EXAMPLES} more"
                                           if len(files) > _EXAMPLES else ""))
        if status in ADVICE:
            lines.append(f"    what to do: {ADVICE[status]}")
    unmatched = [i for i in update.items
                 if not any(f"{i.version}: {i.text}" in f.changelog for f in update.files)]
    if unmatched:
        lines.append(f"  changelog items matched to no file: {len(unmatched)} (see the JSON report)")
    return lines


def _file_lines(f: FileChange) -> List[str]:
    lines = [f"    {f.path}" + (f": {f.why}" if f.why else "")]
    for fn in f.functions:
        mark = "patched" if fn.get("patched") else "included"
        lines.append(f"      {fn['name']} ({mark}: {fn.get('reason', '')})")
    for entry in f.changelog[:3]:
        lines.append(f"      changelog {entry}")
    if len(f.changelog) > 3:
        lines.append(f"      ... and {len(f.changelog) - 3} more changelog items")
    return lines


def summary_line(update) -> str:
    """The last line kpatch-build prints."""
    if update.module is None:
        return f"nothing of {update.version} could be live patched: {update.nothing}"
    patched = len([f for f in update.files if f.status == plan.PATCHED])
    left = update.left_out()
    if left:
        return (f"PARTIAL: {update.module} has {patched} changed file(s); {len(left)} changed "
                f"file(s) of kernel code are NOT in it (listed above)")
    return f"SUCCESS: {update.module} has every change of {update.version} this kernel builds"
