"""docs/klp-build-comparison.md from the bench's results (``run.py report``)."""

import statistics
import time
from typing import List, Optional

from common import REPO, machine
from analysis import ANALYSIS
from patches import MODULE, BenchPatch

# The tools, as results.json and the report name them.
TOOLS = {"klp": "klp-build", "pykpatch": "pykpatch"}


def duration(seconds: Optional[float]) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f} s" if seconds >= 10 else f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds // 60:.0f} min {seconds % 60:02.0f} s"
    return f"{seconds // 3600:.0f} h {seconds % 3600 // 60:02.0f} min"


def guest_cell(load: Optional[dict], entry: BenchPatch) -> str:
    if not load:
        return "-"
    if load["outcome"] == "not loaded":
        return "load error"
    keeps = entry.behaviour is not None and entry.behaviour.keeps
    cell = {True: "loads, still works" if keeps else "loads, behaves",
            False: "loads, WRONG behaviour", None: "loads"}[load["behaves"]]
    if load["outcome"] == "trouble":
        cell += "; then " + trouble(load)
    return cell


# What the kernel said, most serious first (dmesg words -> what the table says).
_TROUBLE = (("kernel BUG", "kernel BUG"), ("Oops", "Oops"), ("general protection", "Oops"),
            ("WARNING:", "kernel WARNING"), ("livepatch: failed", "livepatch error"))


def trouble(load: dict) -> str:
    said = " ".join(load.get("bad_dmesg", []))
    for word, name in _TROUBLE:
        if word in said:
            return name
    return cell_text(load["errors"][0], 60) if load["errors"] else "trouble"


def functions_cell(build: Optional[dict]) -> str:
    if not build:
        return "-"
    if build["decision"] != MODULE:
        return ""
    return ", ".join(f"`{f}`" for f in build.get("functions", [])) or "(none)"


def decision_cell(build: Optional[dict]) -> str:
    if not build:
        return "not run"
    if build["decision"] == MODULE or not build.get("message"):
        return build["decision"]
    return f"{build['decision']} ({cell_text(reason(build['message']), 100)})"


def reason(message: str) -> str:
    """The first line of *message* that says something: not a heading ending in ':'."""
    lines = [l.strip().lstrip("- ") for l in message.splitlines() if l.strip()]
    return next((l for l in lines if not l.endswith(":")), message)


def cell_text(text: str, limit: int) -> str:
    """*text* on one line, fit for a table cell."""
    flat = " ".join(text.split()).replace("|", "\\|")
    return flat if len(flat) <= limit else flat[:limit - 3] + "..."


def disagreements(entries: List[BenchPatch], data: dict) -> List[str]:
    """Lines naming every patch where the tools differ (decision, functions, guest)."""
    found = []
    for entry in entries:
        rec = data["patches"].get(entry.name, {})
        klp, pyk = rec.get("klp"), rec.get("pykpatch", {}).get("warm")
        if not klp or not pyk:
            continue
        why = []
        if klp["decision"] != pyk["decision"]:
            why.append(f"klp-build: {klp['decision']}, pykpatch: {pyk['decision']}")
        elif klp["decision"] == MODULE and \
                sorted(klp.get("functions", [])) != sorted(pyk.get("functions", [])):
            why.append("different functions: klp-build " + ", ".join(klp.get("functions", []))
                       + "; pykpatch " + ", ".join(pyk.get("functions", [])))
        loads = rec.get("load", {})
        if guest_cell(loads.get("klp"), entry) != guest_cell(loads.get("pykpatch"), entry) and \
                klp["decision"] == pyk["decision"] == MODULE:
            why.append(f"guest: klp-build {guest_cell(loads.get('klp'), entry)}, "
                       f"pykpatch {guest_cell(loads.get('pykpatch'), entry)}")
        said = [f"the kernel, with {TOOLS[t]}'s module loaded:\n\n```\n" + "\n".join(lines) + "\n```"
                for t in TOOLS if (lines := kernel_said(loads.get(t)))]
        if why:
            found.append(f"### {entry.name}\n\n" + "\n".join(f"- {w}" for w in why + said) + "\n\n"
                         + ANALYSIS.get(entry.name, "_Not analysed yet (bench/klp_build/analysis.py)._")
                         + "\n")
    return found


def kernel_said(load: Optional[dict]) -> List[str]:
    """The guest's dmesg from the first line that is not livepatch's own through the
    first bad line (BUG, Oops, WARNING): what the kernel said went wrong."""
    excerpt = (load or {}).get("dmesg_excerpt", [])
    bad = set((load or {}).get("bad_dmesg", []))
    start = next((i for i, l in enumerate(excerpt) if "livepatch:" not in l), None)
    end = next((i for i, l in enumerate(excerpt) if l in bad), None)
    if start is None or end is None:
        return []
    return [l for l in excerpt[start:end + 1] if "cut here" not in l]


def timing_notes(entries: List[BenchPatch], data: dict) -> List[str]:
    """How long each kind of run took, and what else the machine was doing."""
    lines = []
    for e in entries:
        klp = build_of(data, e.name, "klp")
        if klp and klp["mode"] == "cold":
            busy = klp["loadavg_before"][0] >= 1.0
            lines.append(
                f"- klp-build's cold run ({e.name}: `make clean`, the whole kernel with debug "
                f"info and BTF, then the patched kernel, checksums and diff) took "
                f"{duration(klp['seconds'])}, at {klp['at']}; load average {klp['loadavg_before'][0]} "
                f"when it started and {klp['loadavg_after'][0]} when it ended"
                + ("; other work was running when it started, so take it as an upper bound."
                   if busy else "."))
    lines += [
        "- klp-build's warm runs (`-S patched`: the original build kept) each rebuild the "
        "patched kernel incrementally: the changed files, then `vmlinux.o`, objtool, the vmlinux "
        "link with BTF and every module's BTF again, then checksums of the whole `vmlinux.o` and "
        "the diff.",
        "- pykpatch cold: a fresh cache holding only the downloaded packages and the build root; "
        "the run unpacks the kernel source, prepares the tree and builds. Warm: the same tree, "
        "prepared. Neither builds the kernel: both compile only the files the patch touches.",
    ]
    each = [l["seconds"] for e in entries for l in data["patches"].get(e.name, {}).get("load", {}).values()
            if l and "seconds" in l]
    if each:
        lines.append(f"- Loading in the guest (1 vCPU, TCG): {len(each)} modules, "
                     f"{duration(sum(each))} in all, median {duration(statistics.median(each))} each "
                     "(target modules, the check three times, insmod, transition, disable, rmmod; a "
                     "guest boot after trouble is not counted).")
    return lines


def render(entries: List[BenchPatch], data: dict) -> str:
    prep = data.get("prepare", {})
    klp_runs = [r for r in data.get("runs", []) if r["phase"] == "klp"]
    where = klp_runs[-1]["machine"] if klp_runs else machine()
    loads = [b["loadavg_before"][0] for e in entries
             if (b := build_of(data, e.name, "klp")) and "loadavg_before" in b]
    lines = [f"# klp-build beside pykpatch's kpatch-build: Debian {data['release']}", "",
             f"Generated by `bench/klp_build/run.py report` ({time.strftime('%Y-%m-%d')}) from "
             "`<cache>/klp-build-bench/results.json`; `bench/klp_build/README.md` says how it runs.",
             "", f"Machine: {where['nproc']} CPUs ({where['cpu']}), {where['mem_gb']} GB"
             + (f"; load average (1 min) when each klp-build run started: {min(loads)} to {max(loads)}"
                if loads else "") + ".", ""]
    lines += table(entries, data)
    lines += ["", "The patches:", ""]
    lines += [f"- {e.name} ({e.kind}, `{e.path(data['release']).relative_to(REPO)}`): {e.note}"
              for e in entries]
    lines += ["", "The real fixes come from Debian 13's 6.12.117-1 -> 6.12.118-1 security update: the "
              "7.x updates in the archive (7.2.11 -> 7.2.12) change nothing 7.3.4 does not already "
              "have (`bench/klp_build/README.md`, \"Real fixes\")."]
    lines += ["", "Guest column: *behaves* means the check's text appears only while the patch is "
              "enabled (the fix shows); *still works* means a check that the patched code still does "
              "its work passed before, during and after; *WRONG behaviour* means the check failed; "
              "*then kernel BUG* (or Oops, WARNING) is what the guest's dmesg said. The checks are "
              "in `bench/klp_build/patches.py`."]
    lines += ["", "## Totals", ""] + totals(entries, data)
    lines += ["", "## How long, and on what", ""] + timing_notes(entries, data)
    lines += ["", "## Where they disagree", ""]
    lines += disagreements(entries, data) or ["They agree on every patch run so far.", ""]
    lines += ["", "## Setup of klp-build's tree", ""] + setup_notes(prep)
    return "\n".join(lines).rstrip() + "\n"


def table(entries: List[BenchPatch], data: dict) -> List[str]:
    rows = ["| patch | expected | klp-build | pykpatch | klp-build patches | pykpatch patches | "
            "klp-build time | pykpatch cold / warm | guest: klp-build | guest: pykpatch |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for entry in entries:
        rec = data["patches"].get(entry.name, {})
        klp, pyk = rec.get("klp"), rec.get("pykpatch", {})
        klp_time = f"{duration(klp['seconds'])} ({klp['mode']})" if klp else "-"
        pyk_time = " / ".join(duration(pyk.get(m, {}).get("seconds")) for m in ("cold", "warm"))
        loads = rec.get("load", {})
        rows.append(f"| {entry.name} | {entry.expect} | {decision_cell(klp)} | "
                    f"{decision_cell(pyk.get('warm'))} | {functions_cell(klp)} | "
                    f"{functions_cell(pyk.get('warm'))} | {klp_time} | {pyk_time} | "
                    f"{guest_cell(loads.get('klp'), entry)} | {guest_cell(loads.get('pykpatch'), entry)} |")
    return rows


def totals(entries: List[BenchPatch], data: dict) -> List[str]:
    out = []
    for tool, label in TOOLS.items():
        builds = [(e, build_of(data, e.name, tool)) for e in entries]
        ran = [(e, b) for e, b in builds if b]
        expected = sum(1 for e, b in ran if b["decision"] == e.expect)
        modules = sum(1 for _, b in ran if b["decision"] == MODULE)
        loads = [data["patches"][e.name].get("load", {}).get(tool) for e, _ in ran]
        clean = sum(1 for l in loads if l and l["outcome"] == "loaded")
        behave = sum(1 for l in loads if l and l["behaves"])
        checks = sum(1 for l in loads if l and l["behaves"] is not None)
        out.append(f"- {label}: {len(ran)} of {len(entries)} patches run; {expected} as expected; "
                   f"{modules} modules, {clean} loaded and unloaded cleanly, {behave} of {checks} "
                   "behaviour checks passed.")
    klp = [b for e in entries if (b := build_of(data, e.name, "klp"))]
    if klp:
        cold = [b["seconds"] for b in klp if b["mode"] == "cold"]
        warm = [b["seconds"] for b in klp if b["mode"] == "warm"]
        out.append(f"- klp-build, all runs: {duration(sum(b['seconds'] for b in klp))}; cold (make "
                   f"clean, whole kernel): {', '.join(duration(s) for s in cold) or '-'}; warm "
                   f"(-S patched): median {duration(statistics.median(warm)) if warm else '-'}, "
                   f"{duration(min(warm)) if warm else '-'} to {duration(max(warm)) if warm else '-'}.")
    phase = [r["seconds"] for r in data.get("runs", []) if r["phase"] == "klp"]
    if phase:
        out.append(f"- `run.py klp`, wall time of the {len(phase)} invocation(s) that ran to their "
                   f"end: {duration(sum(phase))}.")
    for mode in ("cold", "warm"):
        times = [p[mode]["seconds"] for e in entries if (p := data["patches"].get(e.name, {})
                                                          .get("pykpatch")) and mode in p]
        if times:
            out.append(f"- pykpatch {mode}: {duration(sum(times))} in all, median "
                       f"{duration(statistics.median(times))}.")
    return out


def build_of(data: dict, name: str, tool: str) -> Optional[dict]:
    rec = data["patches"].get(name, {})
    return rec.get("klp") if tool == "klp" else rec.get("pykpatch", {}).get("warm")


def setup_notes(prep: dict) -> List[str]:
    if not prep:
        return ["(prepare has not run)"]
    lines = [f"- Compiler in klp-build's build root: {prep['root']['compiler']}; "
             f"`make kernelrelease`: {prep['kernelrelease']}; objtool klp: {prep['objtool_klp']}; "
             f"klp-build sha1 {prep['klp_build_sha1']}."]
    lines += [f"- Config adjusted before olddefconfig: {a}" for a in prep["config_adjusted"]]
    lines += [f"- olddefconfig changed {d}" for d in prep["config_delta"]] or \
        ["- olddefconfig changed nothing in Debian's config."]
    return lines
