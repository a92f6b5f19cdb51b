"""docs/real-fixes.md from the corpus manifest and the runner's results."""

import re
import statistics
import time
from typing import Dict, List, Optional, Tuple

# Refusal groups: (title, pattern of kpatch-build's message, what the patch author can do).
# The first group whose pattern matches a problem line names it.
REFUSAL_GROUPS: List[Tuple[str, "re.Pattern[str]", str]] = [
    ("patch does not apply", re.compile(r"does not apply to the kernel source"),
     "rebase the patch on the target kernel's source"),
    ("nothing this kernel builds", re.compile(r"changes nothing this kernel builds"),
     "nothing to do: the config does not build the file"),
    ("assembly", re.compile(r"assembly is not compiled"),
     "rewrite the fix in C, or leave it for a reboot"),
    ("lib.a member the kernel does not link", re.compile(r"are lib\.a members, linked only"),
     "nothing to do: this kernel does not contain the code"),
    ("code outside the kernel proper", re.compile(r"runs outside the kernel proper"),
     "leave it for a reboot"),
    ("build files", re.compile(r"build files change what is built"),
     "drop the Makefile/Kconfig part"),
    ("compiler mismatch", re.compile(r"compiler mismatch"),
     "build with the kernel's own compiler"),
    ("__init code or data changed", re.compile(r"changed __init (code|data)"),
     "the fix only matters at boot or module init: use a callback for one-time work, or skip"),
    ("__exit code changed", re.compile(r"changed __exit (code|data)"),
     "the fix only matters when the module is removed: leave it for a module reload"),
    ("data size changed", re.compile(r"data size changed"),
     "keep the object's size; put new fields in a shadow variable"),
    ("initialized data changed", re.compile(r"initial value of data changed"),
     "change the data from a patch callback instead"),
    ("struct layout changed", re.compile(r"changes layout \("),
     "keep the struct as it is; put new state in a shadow variable (klp_shadow_*)"),
    ("changed function not traceable", re.compile(r"has no __fentry__ call"),
     "patch its callers instead (notrace or inline code, or all of lib/)"),
    ("boot-time table entry", re.compile(r": entries changed"),
     "keep the table (PCI quirks, initcalls, parameters) as it is; a new entry needs a reboot"),
    ("symbol binding changed", re.compile(r"binding changed"),
     "keep the variable's declaration (static or not) as it was"),
    ("section group changed", re.compile(r"groups cannot be patched|new section group"),
     "avoid changing COMDAT/inline definitions"),
    ("module static key or call", re.compile(r"uses a key that lives in module"),
     "use static_key_enabled() or a plain call in the patched function"),
    ("static local removed", re.compile(r"reference to static local variable .* was removed"),
     "keep using the static local variable, or move the logic into a callback"),
    ("needs the rest of its commit", re.compile(r"nothing to redirect: the patch only adds"),
     "add the file of its commit that calls the new functions"),
    ("unknown table of code addresses", re.compile(r"a table pykpatch does not know points inside"),
     "report the section; keep the functions it points into out of the patch"),
    ("runtime shift constant", re.compile(r"shifts by the runtime constant"),
     "use the variable itself in the patched function"),
    ("source does not match the kernel", re.compile(r"the source does not match the running kernel"),
     "build from the exact source, config and compiler of the kernel"),
]


def problem_lines(message: str) -> List[str]:
    """The individual reasons in a refusal message (one per line that names a problem)."""
    lines = []
    for line in message.splitlines():
        line = line.strip().lstrip("- ").strip()
        if line and not line.endswith(":") and not line.startswith("the patch cannot be live"):
            lines.append(line)
    return lines or [message.strip()]


def refusal_groups(message: str) -> List[str]:
    """Every refusal group the message's problems fall into, in order; [] if none."""
    found = []
    for line in problem_lines(message) + [message]:
        for title, pattern, _ in REFUSAL_GROUPS:
            if pattern.search(line) and title not in found:
                found.append(title)
                break
    return found


def refusal_group(message: str) -> Optional[str]:
    groups = refusal_groups(message)
    return groups[0] if groups else None


def refusal_reason(message: str, limit: int = 2) -> str:
    """One line an author can act on: the first problem(s) of the refusal."""
    lines = problem_lines(message)
    matched = [l for l in lines if any(p.search(l) for _, p, _ in REFUSAL_GROUPS)] or lines
    text = "; ".join(matched[:limit])
    if len(matched) > limit:
        text += f" (and {len(matched) - limit} more)"
    return text if len(text) <= 400 else text[:400] + "..."


# -- the report ---------------------------------------------------------------------------------

def outcome_of(rec: dict) -> str:
    """Final outcome of one patch: loaded / load-error / refused / no-change / tool-error / pending."""
    build = rec.get("build")
    if build is None:
        return "not built yet"
    if build["outcome"] != "built":
        return build["outcome"]
    load = rec.get("load")
    if load is None:
        return "built, not loaded yet"
    return "built and loaded cleanly" if load["outcome"] == "loaded" else "load-error"


def render(manifest: dict, results: dict) -> str:
    entries = manifest["entries"]
    patches = results.get("patches", {})
    runnable = [e for e in entries if e["status"] == "single-file"]
    by_outcome: Dict[str, List[dict]] = {}
    for e in runnable:
        by_outcome.setdefault(outcome_of(patches.get(e["name"], {})), []).append(e)
    out: List[str] = []
    w = out.append
    w(f"# Real stable fixes: Debian {manifest['old']} -> {manifest['new']}, "
      f"built for {manifest['release']}")
    w("")
    w(f"Generated by `bench/real_fixes/run_corpus.py` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
      "do not edit by hand. The corpus is made by `bench/real_fixes/make_corpus.py` "
      "(one patch per changed `.c` file, against the older source).")
    w("")
    _corpus_section(w, manifest)
    _outcome_section(w, runnable, by_outcome)
    _refusal_section(w, by_outcome.get("refused", []), patches)
    _tool_error_section(w, by_outcome, patches)
    _no_change_section(w, by_outcome.get("no-change", []), patches)
    _notes_section(w, runnable, patches)
    _time_section(w, runnable, patches, results)
    _not_single_file_section(w, entries, by_outcome.get("not-single-file", []), patches)
    return "\n".join(out) + "\n"


def _corpus_section(w, manifest: dict) -> None:
    entries = manifest["entries"]
    count: Dict[str, int] = {}
    for e in entries:
        count[e["status"]] = count.get(e["status"], 0) + 1
    built = [e for e in entries if e["status"] in ("single-file", "not-single-file")]
    vml = sum(1 for e in built if e["targets"] == ["vmlinux"])
    w("## Corpus")
    w("")
    w(f"- `.c` files that differ between the two sources: **{len(entries)}** "
      f"({count.get('new-file', 0)} new, {count.get('deleted-file', 0)} deleted, the rest changed)")
    w(f"- built by the cloud config: **{len(built)}** ({vml} into vmlinux, "
      f"{len(built) - vml} into modules), as kbuild's own `make -n` of the target tree says")
    w(f"- changed but not built by this config: {count.get('not-built', 0)}")
    w(f"- **changed files built, each run as a single-file fix: {count.get('single-file', 0)}** "
      "(those that turn out not to compile alone are counted as not single-file below)")
    w(f"- headers changed between the versions: {len(manifest.get('changed_headers', []))}")
    w("")


def _outcome_section(w, runnable: List[dict], by_outcome: Dict[str, List[dict]]) -> None:
    order = ["built and loaded cleanly", "refused", "no-change", "not-single-file",
             "tool-error", "load-error",
             "built, not loaded yet", "not built yet"]
    w("## Outcomes")
    w("")
    w("| outcome | patches | vmlinux | module |")
    w("| --- | ---: | ---: | ---: |")
    for key in order + sorted(set(by_outcome) - set(order)):
        group = by_outcome.get(key, [])
        if not group and key in ("built, not loaded yet", "not built yet"):
            continue
        vml = sum(1 for e in group if e["targets"] == ["vmlinux"])
        w(f"| {key} | {len(group)} | {vml} | {len(group) - vml} |")
    w(f"| **total** | **{len(runnable)}** | | |")
    w("")
    w("*not-single-file*: the fix does not compile without the rest of its commit (a "
      "header change), found by kpatch-build compiling it; listed at the end. "
      "*tool-error*: kpatch-build crashed, timed out or failed for a reason other than a "
      "refusal; *load-error*: the module was built but did not load, transition, unload "
      "or keep the kernel quiet (dmesg, taint). Both are bugs to fix.")
    w("")


def _refusal_section(w, refused: List[dict], patches: Dict[str, dict]) -> None:
    w("## Refusals by reason")
    w("")
    if not refused:
        w("None.")
        w("")
        return
    groups: Dict[str, List[dict]] = {}
    for e in refused:
        message = patches[e["name"]]["build"]["message"]
        groups.setdefault(refusal_group(message) or "other", []).append(e)
    actions = {title: action for title, _, action in REFUSAL_GROUPS}
    w("| reason | patches | what the author can do |")
    w("| --- | ---: | --- |")
    for title, group in sorted(groups.items(), key=lambda kv: -len(kv[1])):
        w(f"| {title} | {len(group)} | {actions.get(title, '')} |")
    w("")
    for title, group in sorted(groups.items(), key=lambda kv: -len(kv[1])):
        w(f"### {title} ({len(group)})")
        w("")
        for e in sorted(group, key=lambda e: e["path"]):
            message = patches[e["name"]]["build"]["message"]
            w(f"- `{e['path']}` ({', '.join(e['targets'])}): {_md(refusal_reason(message))}")
        w("")


def _tool_error_section(w, by_outcome: Dict[str, List[dict]], patches: Dict[str, dict]) -> None:
    errors = by_outcome.get("tool-error", []) + by_outcome.get("load-error", [])
    suspects = [e for e in by_outcome.get("no-change", []) if suspect_no_change(_patch_text(e))]
    w("## Tool errors")
    w("")
    if suspects:
        w(f"Also {len(suspects)} suspect \"no change\" outcome(s), listed under No change: "
          "the fix adds table entries kpatch-build neither carries nor refuses.")
        w("")
    if not errors:
        w("None.")
        w("")
        return
    for e in sorted(errors, key=lambda e: e["path"]):
        rec = patches[e["name"]]
        if rec["build"]["outcome"] != "built":
            message = rec["build"]["message"].strip().splitlines()
            w(f"- `{e['path']}` (build, {', '.join(e['targets'])}): "
              f"{_md(' '.join(message[:3])[:600])}")
        else:
            w(f"- `{e['path']}` (load, {', '.join(e['targets'])}): "
              f"{_md('; '.join(rec['load']['errors'])[:600])}")
    w("")


# Added lines that register something in a table the kernel reads at boot or probe
# time: a build that says "no change" for them has silently dropped the fix.
_TABLE_ENTRY = re.compile(r"^\+\s*(DECLARE_PCI_FIXUP\w*|\w*initcall|module_param\w*|__setup|"
                          r"early_param|EXPORT_SYMBOL\w*|DEFINE_STATIC_KEY\w*)\s*\(", re.M)


def suspect_no_change(patch_text: str) -> List[str]:
    """Table-registering macros the patch adds (a "no change" outcome is then wrong)."""
    return sorted({m.group(1) for m in _TABLE_ENTRY.finditer(patch_text)})


def _patch_text(entry: dict) -> str:
    try:
        with open(entry["patch"], errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def _no_change_section(w, group: List[dict], patches: Dict[str, dict]) -> None:
    w("## No change")
    w("")
    w("kpatch-build found no function of the compiled object changed (comments, code this "
      "config compiles out, a `READ_ONCE` that compiles the same, or only line numbers). "
      "Entries marked **suspect** add table entries (PCI fixups, initcalls, module "
      "parameters...) that a livepatch cannot deliver: kpatch-build should refuse them "
      "instead of reporting no change." if group else "None.")
    w("")
    for e in sorted(group, key=lambda e: e["path"]):
        suspect = suspect_no_change(_patch_text(e))
        w(f"- `{e['path']}` ({', '.join(e['targets'])})"
          + (f" -- **suspect**: adds {', '.join(suspect)}" if suspect else ""))
    if group:
        w("")


def _notes_section(w, runnable: List[dict], patches: Dict[str, dict]) -> None:
    noted = [(e, patches[e["name"]]["load"]["notes"]) for e in runnable
             if patches.get(e["name"], {}).get("load", {}).get("notes")]
    if not noted:
        return
    w("## Load notes")
    w("")
    w("Module patches are loaded with their target module loaded first and again loaded "
      "after the patch. Where the target module cannot load in the guest (no hardware, "
      "missing firmware), the patch is still loaded and unloaded on its own:")
    w("")
    for e, notes in sorted(noted, key=lambda t: t[0]["path"]):
        w(f"- `{e['path']}`: {_md(notes[0][:300])}" + (f" (+{len(notes) - 1})" if len(notes) > 1 else ""))
    w("")


def _time_section(w, runnable: List[dict], patches: Dict[str, dict], results: dict) -> None:
    builds = [patches[e["name"]]["build"] for e in runnable if "build" in patches.get(e["name"], {})]
    loads = [patches[e["name"]]["load"] for e in runnable if "load" in patches.get(e["name"], {})]
    runs = results.get("runs", [])
    w("## Time")
    w("")
    if builds:
        secs = sorted(b["seconds"] for b in builds)
        p90 = secs[min(len(secs) - 1, int(0.9 * len(secs)))]
        built_secs = sorted(b["seconds"] for b in builds if b["outcome"] == "built")
        w(f"- kpatch-build, per patch ({len(secs)} patches): median {statistics.median(secs):.1f} s, "
          f"p90 {p90:.1f} s, max {secs[-1]:.1f} s; built modules only: median "
          f"{statistics.median(built_secs) if built_secs else 0:.1f} s (warm goal: <= 10 s)")
        w(f"- sum of kpatch-build times: {sum(secs) / 60:.1f} min")
    if loads:
        lsecs = [l["seconds"] for l in loads]
        w(f"- loading in the guest, per module ({len(lsecs)} modules): median "
          f"{statistics.median(lsecs):.1f} s; sum {sum(lsecs) / 60:.1f} min; guest boots: "
          f"{results.get('guest_boots', 0)}")
    work = sum(b["seconds"] for b in builds) + sum(l["seconds"] for l in loads)
    wall = sum(r["seconds"] for r in runs)
    w(f"- **runner total for the corpus so far: {work / 60:.1f} min** (sum of the per-patch "
      f"build and load times of the results above; wall time of the completed phase runs, "
      f"including reruns: {wall / 60:.1f} min in {len(runs)} runs)")
    w("")
    w("| file | into | outcome | build s | load s |")
    w("| --- | --- | --- | ---: | ---: |")
    for e in sorted(runnable, key=lambda e: e["path"]):
        rec = patches.get(e["name"], {})
        b, l = rec.get("build"), rec.get("load")
        w(f"| `{e['path']}` | {', '.join(e['targets'])} | {outcome_of(rec)} | "
          f"{b['seconds'] if b else ''} | {l['seconds'] if l else ''} |")
    w("")


def _not_single_file_section(w, entries: List[dict], found: List[dict],
                             patches: Dict[str, dict]) -> None:
    group = [(e, e.get("compile_error") or "") for e in entries if e["status"] == "not-single-file"]
    group += [(e, patches[e["name"]]["build"]["message"]) for e in found]
    w("## Not single-file fixes")
    w("")
    w("The fix alone does not compile against the older source: it needs a header change "
      "(or another file) from the same commit. The first compiler error, and the changed "
      "headers whose new names the fix uses:")
    w("")
    if not group:
        w("None.")
    for e, message in sorted(group, key=lambda t: t[0]["path"]):
        errors = [l.strip() for l in message.splitlines() if "error:" in l]
        hint = ", ".join(f"`{h}`" for h in e.get("header_idents", {}))
        w(f"- `{e['path']}` ({', '.join(e['targets'])}): "
          + _md(errors[0][-250:] if errors else message.splitlines()[0][:200])
          + (f" (uses names from {hint})" if hint else ""))
    w("")
    other = [e for e in entries if e["status"] == "not-built"]
    if other:
        w(f"Not built by the cloud config ({len(other)}): "
          + ", ".join(f"`{e['path']}`" for e in sorted(other, key=lambda e: e["path"])))
        w("")


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")
