#!/usr/bin/env python3
"""Build and load every single-file fix of the real-fixes corpus; write docs/real-fixes.md.

Run by hand after ``make_corpus.py``.  Restartable: every result goes into
``<cache>/real-fixes/results.json`` as soon as it is known, and a rerun only
does what is missing::

    python3 bench/real_fixes/run_corpus.py all           # build, load, report
    python3 bench/real_fixes/run_corpus.py build [NAME...] [--redo]
    python3 bench/real_fixes/run_corpus.py load  [NAME...] [--redo]
    python3 bench/real_fixes/run_corpus.py report
    ... --budget MINUTES   stop starting new work after this long
    ... --redo-outcome tool-error   build again what last ended so
    ... --pykpatch DIR      kpatch-build from a snapshot of the source

``REAL_FIXES_LINE=6.12`` (for both scripts) takes the 6.12 corpus instead of
6.1's: Debian 6.12.117-1 -> 6.12.118-1 for 6.12.117+deb13-cloud-amd64,
report in docs/real-fixes-6.12.md (see common.CORPORA).

``build`` runs the real ``kpatch-build`` (a subprocess, per-patch timeout)
for the target kernel and sorts each patch into built / refused / no change
/ tool error.  ``load`` boots the target kernel once in the test guest and,
for every module built, loads it (for a module patch: with the target
module loaded before the patch, then loaded after it), waits for the
transition, disables, unloads and checks dmesg and the taint flags; the
guest is rebooted only after trouble.
"""

import argparse
import hashlib
import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import List

import report as report_mod
from common import RELEASE, REPO, REPORT, corpus_dir, manifest_path, read_json, results_path
from benchlib import BAD_DMESG, GuestSession, ResultsFile, kpatch_build_error  # noqa: E402

from pykpatch.errors import KpatchError
from pykpatch.log import setup_logging
from pykpatch.manage.modinfo import read_module_info

log = logging.getLogger("pykpatch")

BUILD_TIMEOUT = 600      # seconds per kpatch-build (a cold first build prepares the tree)
TRANSITION_TIMEOUT = 30  # seconds for a patch transition to finish
OUTPUT_LIMIT = 4000      # characters of output kept per step

# Taint bits that loading modules brings by itself: P(0) is not expected;
# O out-of-tree (12), E unsigned (13), K livepatch (15), C staging (10).
EXPECTED_TAINT = (1 << 10) | (1 << 12) | (1 << 13) | (1 << 15)
_TAINT_NAMES = "PFSRMBUDAWCIOELKXT"


# -- results file -----------------------------------------------------------------------------------

class Results(ResultsFile):
    """results.json: per patch {"build": {...}, "load": {...}}, plus the runs' wall times."""

    def reclassify(self) -> None:
        """Sort stored failures again with the current rules (they may have been refined)."""
        for rec in self.data["patches"].values():
            build = rec.get("build", {})
            if build.get("outcome") not in (None, "built") and "stderr" in build:
                timed_out = build["message"].startswith("timed out")
                outcome, message = classify_build(build["rc"], build["stderr"], timed_out)
                build.update(outcome=outcome, message=bounded(message))


def bounded(text: str, limit: int = OUTPUT_LIMIT) -> str:
    return text if len(text) <= limit else "[...]\n" + text[-limit:]


def livepatch_name(entry: dict) -> str:
    """A short, unique module name (the kernel's sysfs name: no '-')."""
    stem = re.sub(r"[^A-Za-z0-9_]", "_", Path(entry["path"]).stem)[:30]
    digest = hashlib.sha1(entry["path"].encode()).hexdigest()[:6]
    return f"rf_{stem}_{digest}"


# -- build phase --------------------------------------------------------------------------------

def classify_build(rc: int, stderr: str, timed_out: bool) -> "tuple[str, str]":
    """(outcome, message) from kpatch-build's exit and stderr."""
    if timed_out:
        return "tool-error", f"timed out after {BUILD_TIMEOUT} s"
    if "Traceback (most recent call last)" in stderr:
        return "tool-error", "traceback: " + _traceback_summary(stderr)
    if rc == 0:
        return "built", ""
    message = kpatch_build_error(stderr)
    if rc < 0:
        return "tool-error", f"killed by signal {-rc}: {message}"
    if message.startswith("no change"):
        return "no-change", message
    if message.startswith("compiling the patched objects failed"):
        # The original compiled: the fix needs more of its commit (a header) to compile.
        return "not-single-file", message
    if report_mod.refusal_group(message) is not None:
        return "refused", message
    return "tool-error", message or f"exit {rc} without a message"


def _traceback_summary(stderr: str) -> str:
    lines = [l for l in stderr.strip().splitlines() if l.strip()]
    where = [l.strip() for l in lines if l.strip().startswith("File ")]
    return f"{lines[-1].strip()} (at {where[-1] if where else '?'})"


def build_one(entry: dict, out_root: Path, source: Path = REPO) -> dict:
    name = livepatch_name(entry)
    out = out_root / name
    for old in out.glob("*"):
        old.unlink()
    argv = [sys.executable, "-m", "pykpatch", "build", "-k", RELEASE, "-o", str(out),
            "-n", name, entry["patch"]]
    started = time.monotonic()
    # This checkout's pykpatch (or --pykpatch DIR), whatever else is installed.
    env = dict(os.environ, PYTHONPATH=str(source))
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            errors="replace", start_new_session=True, cwd=source, env=env)
    timed_out = False
    try:
        stdout, stderr = proc.communicate(timeout=BUILD_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        timed_out = True
    seconds = time.monotonic() - started
    outcome, message = classify_build(proc.returncode, stderr, timed_out)
    result = {"outcome": outcome, "message": bounded(message), "seconds": round(seconds, 1),
              "rc": proc.returncode, "module_name": name,
              "at": time.strftime("%Y-%m-%d %H:%M:%S")}
    if outcome == "built":
        kos = sorted(out.glob("*.ko"))
        if not kos:
            result.update(outcome="tool-error", message="SUCCESS printed but no .ko in " + str(out))
        else:
            result["module"] = str(kos[0])
            result["functions"] = [l.strip() for l in stdout.splitlines() if l.startswith("  ")]
    if outcome != "built":
        result["stderr"] = bounded(stderr)
    return result


def build_phase(entries: List[dict], results: Results, redo: bool, deadline: float,
                source: Path = REPO) -> None:
    out_root = corpus_dir() / "out"
    todo = [e for e in entries if redo or "build" not in results.get(e["name"])]
    log.info("build: %d patch(es) to build (%d already done)", len(todo), len(entries) - len(todo))
    started, done = time.monotonic(), 0
    for i, entry in enumerate(todo, 1):
        if time.monotonic() > deadline:
            log.warning("build: time budget used up; %d patch(es) left for the next run",
                        len(todo) - i + 1)
            break
        result = build_one(entry, out_root, source)
        rec = results.get(entry["name"])
        rec["build"] = result
        rec.pop("load", None)  # a new module must be loaded again
        results.save()
        done += 1
        log.info("build [%d/%d] %s: %s (%.1f s)%s", i, len(todo), entry["path"],
                 result["outcome"], result["seconds"],
                 "" if result["outcome"] == "built" else ": " + result["message"].splitlines()[0][:150])
    results.record_run("build", time.monotonic() - started, done)


# -- load phase ---------------------------------------------------------------------------------

class Exercise:
    """Load, transition, disable and unload one livepatch module in the guest."""

    def __init__(self, guest, ko: Path, name: str, targets: List[str]) -> None:
        self.guest = guest
        self.ko = ko
        self.name = name
        self.targets = [t for t in targets if t != "vmlinux"]
        self.sysfs = f"/sys/kernel/livepatch/{name}"
        self.steps: List[str] = []
        self.notes: List[str] = []
        self.dirty = False   # the guest should be rebooted before the next module

    def sh(self, cmd: str, timeout: float = 60) -> "tuple[bool, str]":
        result = self.guest.run(cmd, timeout=timeout)
        out = result.out.strip()
        self.steps.append(f"$ {cmd} -> {result.rc}" + (f": {out[-300:]}" if out else ""))
        return result.ok, out

    def wait(self, condition: str, timeout: float = TRANSITION_TIMEOUT) -> bool:
        tries = int(timeout / 0.2)
        ok, _ = self.sh(f"for i in $(seq {tries}); do if {condition}; then exit 0; fi; "
                        "sleep 0.2; done; exit 1", timeout=timeout + 30)
        return ok

    def loaded_modules(self) -> List[str]:
        _, out = self.sh("cut -d' ' -f1 /proc/modules")
        return out.split()

    def run(self) -> dict:
        remote = self.guest.put(self.ko, f"/tmp/{self.ko.name}")
        self.sh("dmesg -C")
        taint_before = self.taint()
        errors: List[str] = []
        if self.targets:
            for order in ("target-first", "patch-first"):
                errors += self.cycle(remote, order)
                if self.dirty:
                    break
        else:
            errors += self.cycle(remote, "vmlinux")
        dmesg = self.sh("dmesg")[1]
        bad = [l for l in dmesg.splitlines() if any(b in l for b in BAD_DMESG)]
        if bad and self.targets and not errors:
            bad = self.discount_target_noise(bad)
        new_taint = (self.taint() & ~taint_before) & ~EXPECTED_TAINT
        if bad:
            errors.append("bad dmesg: " + " | ".join(bad[:8]))
            self.dirty = True
        if new_taint:
            errors.append(f"new taint {taint_flags(new_taint)} ({new_taint:#x})")
            self.dirty = True
        return {"outcome": "loaded" if not errors else "load-error", "errors": errors,
                "notes": self.notes, "steps": [bounded(s, 400) for s in self.steps[-40:]],
                "dmesg": bounded(dmesg, 3000) if errors else ""}

    def taint(self) -> int:
        ok, out = self.sh("cat /proc/sys/kernel/tainted")
        return int(out) if ok and out.isdigit() else 0

    def cycle(self, remote: str, order: str) -> List[str]:
        """One load/transition/disable/unload cycle; returns the errors."""
        # Modules the patch links against (modinfo depends=) other than its
        # targets: insmod does not load them (modprobe would), and removing
        # the target in the previous cycle may have removed them.
        for dep in module_depends(self.ko):
            if dep.replace("-", "_") not in [t.replace("-", "_") for t in self.targets]:
                self.sh(f"modprobe {dep}")
        loaded_before = set(self.loaded_modules())
        ours: List[str] = []
        if order == "target-first":
            ours = self.load_targets(loaded_before, order)
        ok, out = self.sh(f"insmod {remote}")
        if not ok:
            self.cleanup_targets(ours)
            return [f"{order}: insmod failed: {out}"]
        if order == "patch-first":
            ours = self.load_targets(loaded_before, order)
        errors = []
        if not self.wait(f"[ $(cat {self.sysfs}/transition) = 0 ]"):
            errors.append(f"{order}: the transition did not finish within {TRANSITION_TIMEOUT} s")
            self.dirty = True
        ok, out = self.sh(f"cat {self.sysfs}/enabled")
        if out != "1":
            errors.append(f"{order}: enabled is {out!r} after loading")
        for target in self.targets:
            if target.replace("-", "_") in ours or target.replace("-", "_") in loaded_before:
                ok, out = self.sh(f"cat {self.sysfs}/{target.replace('-', '_')}/patched")
                if out != "1":
                    errors.append(f"{order}: {target} is loaded but patched is {out!r}")
        self.sh(f"echo 0 > {self.sysfs}/enabled")
        if not self.wait(f"[ ! -d {self.sysfs} ]"):
            errors.append(f"{order}: disabling did not finish within {TRANSITION_TIMEOUT} s")
            self.dirty = True
            return errors
        ok, out = self.sh(f"rmmod {self.name}")
        if not ok:
            errors.append(f"{order}: rmmod failed: {out}")
            self.dirty = True
        self.cleanup_targets(ours)
        return errors

    def load_targets(self, loaded_before: "set[str]", order: str) -> List[str]:
        """modprobe the patch's target modules; which ones we loaded ourselves."""
        ours = []
        for target in self.targets:
            mod = target.replace("-", "_")
            if mod in loaded_before:
                continue
            ok, out = self.sh(f"modprobe {mod}")
            if ok:
                ours.append(mod)
            else:
                self.notes.append(f"{order}: target module {mod} does not load in the guest: "
                                  f"{out.splitlines()[-1] if out else 'no message'}")
        return ours

    def cleanup_targets(self, ours: List[str]) -> None:
        for mod in reversed(ours):
            ok, out = self.sh(f"modprobe -r {mod}")
            if not ok:
                self.notes.append(f"could not remove target module {mod}: {out[-200:]}")

    def discount_target_noise(self, bad: List[str]) -> List[str]:
        """Control run: if loading the target module alone says the same, it is not ours."""
        self.sh("dmesg -C")
        loaded = set(self.loaded_modules())
        ours = self.load_targets(loaded, "control")
        self.cleanup_targets(ours)
        control = self.sh("dmesg")[1]
        noise = {_strip_time(l) for l in control.splitlines() if any(b in l for b in BAD_DMESG)}
        kept = [l for l in bad if _strip_time(l) not in noise]
        if len(kept) < len(bad):
            self.notes.append(f"{len(bad) - len(kept)} dmesg warning line(s) come from loading "
                              "the target module alone (control run without the patch)")
        return kept


def module_depends(ko: Path) -> List[str]:
    return [d for d in (read_module_info(ko).get("depends") or "").split(",") if d]


def _strip_time(line: str) -> str:
    return re.sub(r"^\[\s*[\d.]+\]\s*", "", line)


def taint_flags(bits: int) -> str:
    return "".join(c for i, c in enumerate(_TAINT_NAMES) if bits & (1 << i)) or "-"


def load_phase(entries: List[dict], results: Results, redo: bool, deadline: float) -> None:
    todo = []
    for e in entries:
        rec = results.get(e["name"])
        if rec.get("build", {}).get("outcome") == "built" and (redo or "load" not in rec):
            todo.append(e)
    log.info("load: %d module(s) to load", len(todo))
    if not todo:
        return
    started, done = time.monotonic(), 0
    from pykpatch.provider.debian import DebianKernel
    session = GuestSession(DebianKernel(RELEASE), corpus_dir() / "guest")
    try:
        for i, entry in enumerate(todo, 1):
            if time.monotonic() > deadline:
                log.warning("load: time budget used up; %d module(s) left", len(todo) - i + 1)
                break
            rec = results.get(entry["name"])
            rec["load"] = load_one(session, entry, rec["build"])
            results.save()
            done += 1
            load = rec["load"]
            log.info("load [%d/%d] %s: %s (%.1f s)%s", i, len(todo), entry["path"],
                     load["outcome"], load["seconds"],
                     "" if not load["errors"] else ": " + load["errors"][0][:200])
    finally:
        session.close()
        results.record_run("load", time.monotonic() - started, done)
        results.data["guest_boots"] = results.data.get("guest_boots", 0) + session.boots
        results.save()


def load_one(session: GuestSession, entry: dict, build: dict) -> dict:
    from pykpatch.testbed.vm import GuestError
    started = time.monotonic()
    ko = Path(build["module"])
    guest = session.ensure()  # a guest that does not boot stops the phase: no module's fault
    try:
        exercise = Exercise(guest, ko, build["module_name"], entry["targets"])
        result = exercise.run()
        if exercise.dirty:
            session.close()
    except (GuestError, KpatchError) as err:
        tail = session.guest.console_tail(30) if session.guest is not None else ""
        result = {"outcome": "load-error", "errors": [f"guest: {err}".splitlines()[0][:500]],
                  "notes": [], "steps": [], "dmesg": bounded(tail, 3000)}
        session.close()
    result["seconds"] = round(time.monotonic() - started, 1)
    result["at"] = time.strftime("%Y-%m-%d %H:%M:%S")
    return result


# -- driver -------------------------------------------------------------------------------------

def runnable(manifest: dict, names: List[str]) -> List[dict]:
    """The single-file patches, in a fixed pseudo-random order.

    The order mixes subsystems, vmlinux and modules, so partial results of a
    run cut short by its time budget are a fair sample of the whole corpus.
    """
    entries = sorted((e for e in manifest["entries"] if e["status"] == "single-file"),
                     key=lambda e: hashlib.sha1(e["path"].encode()).hexdigest())
    if names:
        wanted = set(names)
        entries = [e for e in entries if e["name"] in wanted or e["path"] in wanted]
        if not entries:
            raise KpatchError(f"none of {', '.join(names)} is a single-file patch of the corpus")
    return entries


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("phase", choices=["all", "build", "load", "report"])
    parser.add_argument("names", nargs="*", help="patch names or source paths (default: all)")
    parser.add_argument("--redo", action="store_true", help="redo these even if done")
    parser.add_argument("--budget", type=float, default=60.0, metavar="MINUTES",
                        help="start no new patch after this long (default 60)")
    parser.add_argument("--redo-outcome", action="append", default=[], metavar="OUTCOME",
                        help="build again the patches whose last outcome was this "
                             "(built, tool-error, load-error...; repeatable)")
    parser.add_argument("--pykpatch", type=Path, default=REPO, metavar="DIR",
                        help="run kpatch-build from this copy of the source (default: this "
                             "checkout), e.g. a snapshot while the checkout is being edited")
    parser.add_argument("-d", "--debug", action="store_true")
    args = parser.parse_args()
    setup_logging("run_corpus", args.debug)
    manifest = read_json(manifest_path(), None)
    if manifest is None:
        print("run_corpus: no corpus yet; run bench/real_fixes/make_corpus.py first",
              file=sys.stderr)
        return 1
    results = Results(results_path())
    results.reclassify()
    deadline = time.monotonic() + args.budget * 60
    try:
        entries = runnable(manifest, args.names)
        if args.redo_outcome:
            for e in entries:
                rec = results.get(e["name"])
                last = rec.get("load", {}).get("outcome") or rec.get("build", {}).get("outcome")
                if last in args.redo_outcome:
                    rec.pop("build")
                    rec.pop("load", None)
        if args.phase in ("all", "build"):
            build_phase(entries, results, args.redo, deadline, args.pykpatch.resolve())
        if args.phase in ("all", "load"):
            load_phase(entries, results, args.redo, deadline)
    except KpatchError as err:
        print(f"run_corpus: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("run_corpus: interrupted; results so far are saved", file=sys.stderr)
        return 130
    REPORT.write_text(report_mod.render(manifest, results.data))
    print(f"report: {REPORT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
