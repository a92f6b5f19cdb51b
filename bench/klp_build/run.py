#!/usr/bin/env python3
"""klp-build (Linux 7.3's own live patch builder) beside pykpatch's kpatch-build, same patches, same kernel.

Run by hand (hours: klp-build builds the whole kernel once); restartable:
every result goes into ``<cache>/klp-build-bench/results.json`` as soon as
it is known, and a rerun does only what is missing::

    python3 bench/klp_build/run.py all                  # everything, in order
    python3 bench/klp_build/run.py prepare              # klp-build's tree and build root
    python3 bench/klp_build/run.py klp      [NAME...]   # klp-build: first run cold, then -S patched
    python3 bench/klp_build/run.py pykpatch [NAME...]   # kpatch-build: cold (fresh cache), warm
    python3 bench/klp_build/run.py load     [NAME...]   # every module of both in the guest
    python3 bench/klp_build/run.py report               # docs/klp-build-comparison.md
    ... --redo      do these again even if done (prepare --redo: a new tree, so
                    klp-build's next run is cold again)
    ... --cold      klp: start from a clean build even if klp-tmp/1-orig is complete

``prepare`` unpacks a separate, full copy of the kernel source from the
linux-source .deb into ``<cache>/klp-build-bench/linux-<series>/`` (klp-build
works in the tree and runs ``make clean``; pykpatch's prepared tree is left
alone), with the Debian kernel's config, and makes a build root for it:
pykpatch's trixie root (debootstrap, gcc-14 and kbuild's tools) plus what
klp-build needs (``KLP_PACKAGES``), in a directory of its own
(``<cache>/buildroot/trixie-gcc-14-klp-build``).  klp-build runs plain
``make``; a wrapper ``make`` first in its PATH adds the Debian release and
compiler (``KERNELRELEASE=``, ``CC=``) to every make command line, so
that the module's vermagic is the Debian kernel's.

``klp`` runs ``scripts/livepatch/klp-build -T -j N -o OUT.ko PATCH`` in the
tree, inside the root: the first patch cold (klp-build's stage 1, ``make
clean`` and a build of vmlinux and every module), the later ones with
``-S patched`` (its stage 2: the original build and objects of stage 1 are
kept, only the patched kernel is built again, incrementally).
"""

import argparse
import hashlib
import logging
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from common import REPO, REPORT, bench_dir, machine, read_config, read_json
from benchlib import BAD_DMESG, GuestSession, ResultsFile, cold_cache, kpatch_build_error  # noqa: E402
from patches import MODULE, BenchPatch, select
from report import TOOLS, duration, render

from pykpatch.cache import cache_dir
from pykpatch.elf.reader import read_elf
from pykpatch.errors import KpatchError
from pykpatch.kernel import kbuild
from pykpatch.log import setup_logging
from pykpatch.manage.modinfo import read_module_info
from pykpatch.process import run, run_pipeline
from pykpatch.provider.buildroot import BuildRoot
from pykpatch.provider.debian import BACKPORTS_7_RELEASE, DebianKernel, compiler_package, host_suite

log = logging.getLogger("pykpatch")

# What klp-build needs beyond pykpatch's build root (buildroot.TOOLS):
# recountdiff (patchutils) and patch for its patch handling, gawk (it calls
# gawk by name), libxxhash-dev for objtool's klp subcommands (without it:
# "not implemented"), pkg-config for objtool's library flags, openssl to make
# the module signing key a full build of this config wants, util-linux for
# getopt (essential in a minbase root; named to be sure).
KLP_PACKAGES = ("patch", "patchutils", "gawk", "libxxhash-dev", "pkg-config", "openssl",
                "util-linux")
KLP_PROGRAMS = {"recountdiff": "patchutils", "patch": "patch", "gawk": "gawk",
                "getopt": "util-linux", "openssl": "openssl", "pkg-config": "pkg-config"}
# klp-build's validate_config: what it needs and what it refuses.
REQUIRED_CONFIG = ("LIVEPATCH", "KLP_BUILD")
REFUSED_CONFIG = ("GCC_PLUGIN_LATENT_ENTROPY", "GCC_PLUGIN_RANDSTRUCT", "LD_DEAD_CODE_DATA_ELIMINATION")
ROOT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

COLD_TIMEOUT = 8 * 3600      # seconds: klp-build's first run (a whole kernel, 2 cores)
WARM_TIMEOUT = 2 * 3600      # seconds: a later klp-build run (-S patched)
PYKPATCH_TIMEOUT = 1800      # seconds per kpatch-build
TRANSITION_TIMEOUT = 30      # seconds for a patch transition in the guest
OUTPUT_TAIL = 60             # lines of output kept per run
DMESG_BEFORE, DMESG_AFTER = 4, 16   # guest dmesg kept around the first bad line
# Taint a locally built livepatch module brings by itself: O (12), E (13), K (15).
EXPECTED_TAINT = (1 << 12) | (1 << 13) | (1 << 15)


# -- where things are ------------------------------------------------------------------------------

class Bench:
    """The bench's places for one kernel release, and how commands enter its build root."""

    def __init__(self, release: str) -> None:
        self.release = release
        self.kernel = DebianKernel(release)
        self.dir = bench_dir()
        self._tools: Optional[List[str]] = None

    @property
    def tree(self) -> Path:
        return self.dir / f"linux-{self.kernel.release.series}"

    @property
    def klp_tmp(self) -> Path:
        return self.tree / "klp-tmp"

    @property
    def bin(self) -> Path:
        return self.dir / "bin"

    @property
    def logs(self) -> Path:
        d = self.dir / "logs"
        d.mkdir(exist_ok=True)
        return d

    def out(self, tool: str, name: str) -> Path:
        d = self.dir / "out" / tool / name
        d.mkdir(parents=True, exist_ok=True)
        return d

    def patch_copy(self, entry: BenchPatch) -> Path:
        """The patch, copied where the build root sees it (the cache is bound into it)."""
        dest = self.dir / "patches" / f"{entry.name}.patch"
        dest.parent.mkdir(exist_ok=True)
        shutil.copyfile(entry.path(self.release), dest)
        return dest

    def debian_config(self) -> Path:
        """The Debian kernel's config.  7.x's image package is a metapackage (the
        files are in linux-binary-/linux-modules-): the headers package has it too."""
        try:
            return self.kernel.config
        except KpatchError as err:
            log.warning("no config from %s (%s); taking the headers package's .config",
                        self.kernel.packages.names["image"], str(err).splitlines()[0])
            return self.kernel.headers_dir / ".config"

    def compiler(self) -> str:
        return kbuild.config_compiler(self.debian_config())

    @property
    def tools(self) -> List[str]:
        """The prefix that runs a command in klp-build's root (nothing on a host of the
        kernel's own Debian release), with the Debian release and compiler for make."""
        if self._tools is None:
            if host_suite() == self.kernel.release.suite:
                root: List[str] = []
            else:
                klp_root = KlpBuildRoot(self.kernel.cache, self.kernel.release.suite,
                                        compiler_package(self.compiler()))
                root = klp_root.ensure().prefix([self.kernel.cache, Path(tempfile.gettempdir())])
            self._tools = [*root, "env", f"PATH={self.bin}:{ROOT_PATH}", "LC_ALL=C"]
        return self._tools


class KlpBuildRoot(BuildRoot):
    """pykpatch's build root of the kernel's suite, plus KLP_PACKAGES, in a
    directory of its own (BuildRoot has no way to add packages; see README)."""

    def __init__(self, cache: Path, suite: str, compiler: str) -> None:
        super().__init__(cache, suite, compiler)
        self.dir = cache / "buildroot" / f"{suite}-{compiler}-klp-build"

    def packages(self) -> List[str]:
        return [*super().packages(), *KLP_PACKAGES]


# -- results ---------------------------------------------------------------------------------------

class Results(ResultsFile):
    """results.json: {"prepare": {...}, "patches": {name: {"klp", "pykpatch", "load"}}, "runs": [...]}."""

    def __init__(self, path: Path, release: str) -> None:
        super().__init__(path)
        if self.data.get("release") not in (None, release):
            raise KpatchError(f"{path} holds results for {self.data['release']}, not {release}; "
                              "move it away to start again")
        self.data["release"] = release

    def record_run(self, phase: str, seconds: float, count: int, **extra) -> None:
        super().record_run(phase, seconds, count, machine=machine(), **extra)


def tail(text: str, lines: int = OUTPUT_TAIL) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def run_timed(argv: Sequence[str], cwd: Path, logfile: Path, timeout: float,
              env: Optional[Dict[str, str]] = None) -> "tuple[int, str, float, bool]":
    """(exit code, output, seconds, timed out): *argv* with stdout and stderr into
    *logfile*; on timeout SIGTERM (klp-build then restores the tree), later SIGKILL."""
    log.debug("run: %s (in %s)", " ".join(map(str, argv)), cwd)
    started = time.monotonic()
    with open(logfile, "w") as out:
        proc = subprocess.Popen([str(a) for a in argv], cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, env=env)
        timed_out = False
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            stop(proc)
        except BaseException:  # Ctrl-C: the run is in a session of its own, stop it too
            stop(proc)
            raise
    seconds = time.monotonic() - started
    return proc.returncode, logfile.read_text(errors="replace"), seconds, timed_out


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the run's process group (klp-build's trap reverts the patch and
    restores scripts/setlocalversion), SIGKILL if it is still there 2 minutes later."""
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


# -- prepare ---------------------------------------------------------------------------------------

_UNPACKED = ".klp-bench-unpacked"


def prepare(bench: Bench, results: Results, redo: bool) -> None:
    done = results.data.get("prepare", {})
    if done.get("ok") and (bench.tree / _UNPACKED).is_file() and not redo:
        log.info("prepare: done before (%s); --redo to do it again", bench.tree)
        return
    started = time.monotonic()
    unpack_tree(bench, redo)
    debian = bench.debian_config()
    adjusted = install_config(bench, debian)
    write_make_wrapper(bench)
    root = check_root(bench)
    run([*bench.tools, "make", "-s", "olddefconfig"], cwd=bench.tree, what="make olddefconfig",
        logfile=bench.logs / "prepare.log")
    config = read_config(bench.tree / ".config")
    missing = [f"CONFIG_{o}" for o in REQUIRED_CONFIG if config.get(o) != "y"]
    refused = [f"CONFIG_{o}" for o in REFUSED_CONFIG if config.get(o) == "y"]
    record = {"ok": not missing and not refused, "tree": str(bench.tree),
              "config_adjusted": adjusted, "config_delta": config_delta(read_config(debian), config),
              "missing": missing, "refused": refused, "root": root,
              "kernelrelease": make_kernelrelease(bench), "objtool_klp": objtool_klp(bench),
              "klp_build_sha1": hashlib.sha1((bench.tree / "scripts/livepatch/klp-build")
                                             .read_bytes()).hexdigest()[:12]}
    record["ok"] = record["ok"] and record["kernelrelease"] == bench.release \
        and record["objtool_klp"] == "ok"
    record["seconds"] = round(time.monotonic() - started, 1)
    results.data["prepare"] = record
    results.save()
    show_prepare(record, bench.release)


def unpack_tree(bench: Bench, redo: bool) -> None:
    """The whole source of the linux-source .deb, in a tree of its own (done once)."""
    stamp = bench.tree / _UNPACKED
    if stamp.is_file() and not redo:
        return
    if bench.tree.exists():
        shutil.rmtree(bench.tree)
    bench.tree.mkdir(parents=True)
    deb = bench.kernel.deb("source")
    log.info("prepare: unpacking %s into %s", deb.name, bench.tree)
    run_pipeline([["dpkg-deb", "--fsys-tarfile", deb],
                  ["tar", "-xO", "--wildcards", "--occurrence=1", "./usr/src/linux-source-*.tar.xz"],
                  ["tar", "-I", "xz -T0", "-xf", "-", "-C", bench.tree, "--strip-components=1"]],
                 what=f"unpacking the kernel source from {deb.name}")
    stamp.write_text(bench.kernel.packages.version + "\n")


def install_config(bench: Bench, debian: Path) -> List[str]:
    """Debian's config as the tree's .config; what had to change for a full build:
    Debian signs with a key of its own build (``output/signing_key.pem``), which a
    build elsewhere has not got, so kbuild makes one (certs/signing_key.pem)."""
    text = debian.read_text()
    adjusted = []
    for option, default in (("MODULE_SIG_KEY", "certs/signing_key.pem"), ("SYSTEM_TRUSTED_KEYS", ""),
                            ("SYSTEM_REVOCATION_KEYS", "")):
        m = re.search(rf'^CONFIG_{option}="([^"]*)"$', text, re.M)
        if m and m.group(1) and m.group(1) != default and not m.group(1).startswith("pkcs11:") \
                and not (bench.tree / m.group(1)).is_file():
            text = text.replace(m.group(0), f'CONFIG_{option}="{default}"')
            adjusted.append(f'CONFIG_{option}: "{m.group(1)}" -> "{default}" (no such file)')
    (bench.tree / ".config").write_text(text)
    return adjusted


def write_make_wrapper(bench: Bench) -> None:
    bench.bin.mkdir(exist_ok=True)
    wrapper = bench.bin / "make"
    wrapper.write_text(
        "#!/bin/sh\n"
        "# klp-build runs plain make; every make gets the Debian kernel's release\n"
        "# (the module's vermagic) and compiler (the config's CC_VERSION_TEXT).\n"
        f"exec /usr/bin/make KERNELRELEASE={bench.release} CC={bench.compiler()} \"$@\"\n")
    wrapper.chmod(0o755)


def check_root(bench: Bench) -> dict:
    """The programs klp-build calls, where it runs; the compiler's version."""
    script = "; ".join(f"command -v {p} >/dev/null || echo missing {p}" for p in KLP_PROGRAMS)
    # (cwd: a directory the build root sees)
    proc = run([*bench.tools, "sh", "-c", script + "; test -e /usr/include/xxhash.h || "
                "echo missing xxhash.h"], cwd=bench.dir, what="checking klp-build's programs")
    missing = [line.split()[1] for line in proc.stdout.splitlines() if line.startswith("missing")]
    if missing:
        packages = sorted({KLP_PROGRAMS.get(m, "libxxhash-dev") for m in missing})
        raise KpatchError(f"klp-build needs {', '.join(missing)}: apt-get install {' '.join(packages)}")
    cc = run([*bench.tools, bench.compiler(), "--version"], cwd=bench.dir,
             what="the compiler's version")
    return {"compiler": cc.stdout.splitlines()[0], "host_suite": host_suite(),
            "in_build_root": host_suite() != bench.kernel.release.suite}


def config_delta(before: Dict[str, str], after: Dict[str, str]) -> List[str]:
    """Options olddefconfig changed in this build root (a missing rustc turns RUST off...)."""
    names = sorted(set(before) | set(after))
    return [f"CONFIG_{n}: {before.get(n, 'unset')} -> {after.get(n, 'unset')}"
            for n in names if before.get(n) != after.get(n)]


def make_kernelrelease(bench: Bench) -> str:
    proc = run([*bench.tools, "make", "-s", "kernelrelease"], cwd=bench.tree, check=False)
    return proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""


def objtool_klp(bench: Bench) -> str:
    """Build objtool and ask it for its klp subcommands ('ok', or what it says)."""
    proc = run([*bench.tools, "make", "-s", kbuild.OBJTOOL_GOAL], cwd=bench.tree, check=False,
               logfile=bench.logs / "prepare.log")
    if proc.returncode != 0:
        return "objtool did not build: " + tail(proc.stdout, 3)
    proc = run([*bench.tools, f"./{kbuild.OBJTOOL_BINARY}", "klp"], cwd=bench.tree, check=False)
    return "not implemented (no xxhash?)" if "not implemented" in proc.stdout else "ok"


def show_prepare(record: dict, release: str) -> None:
    print(f"klp-build tree: {record['tree']}")
    print(f"  compiler: {record['root']['compiler']}; make kernelrelease: {record['kernelrelease']}"
          f"{'' if record['kernelrelease'] == release else '  (NOT ' + release + ')'}")
    print(f"  objtool klp: {record['objtool_klp']}")
    for line in record["config_adjusted"]:
        print(f"  config adjusted: {line}")
    for line in record["config_delta"]:
        print(f"  olddefconfig changed {line}")
    if record["missing"]:
        print(f"  MISSING (klp-build needs them =y): {', '.join(record['missing'])}")
    if record["refused"]:
        print(f"  klp-build refuses this config: {', '.join(record['refused'])} =y")
    print("prepare: " + ("ready" if record["ok"] else "NOT ready"))


# -- klp-build ----------------------------------------------------------------------------------------

def klp_phase(bench: Bench, results: Results, entries: List[BenchPatch], redo: bool,
              cold: bool, jobs: int) -> None:
    if not results.data.get("prepare", {}).get("ok"):
        raise KpatchError("klp-build's tree is not ready: run 'prepare' first (and read what it says)")
    todo = [e for e in entries if redo or "klp" not in results.get(e.name)]
    reclassify_klp(bench, results, [e for e in entries if e not in todo])
    log.info("klp: %d patch(es) to build", len(todo))
    if not todo:
        return
    started = time.monotonic()
    if cold and bench.klp_tmp.exists():
        shutil.rmtree(bench.klp_tmp)
    undo_killed_run(bench)
    for i, entry in enumerate(todo, 1):
        result = klp_one(bench, entry, jobs)
        results.get(entry.name)["klp"] = result
        results.get(entry.name).setdefault("load", {}).pop("klp", None)
        results.save()
        log.info("klp [%d/%d] %s (%s): %s in %s%s", i, len(todo), entry.name, result["mode"],
                 result["decision"], duration(result["seconds"]),
                 f": {result['message']}" if result["message"] else "")
    results.record_run("klp", time.monotonic() - started, len(todo))


def reclassify_klp(bench: Bench, results: Results, done: List[BenchPatch]) -> None:
    """Take each kept run's decision again from its whole log, so that what klp_decision
    learns (a refusal message it did not know) applies to runs made before."""
    changed = False
    for entry in done:
        result = results.get(entry.name)["klp"]
        logfile = bench.logs / f"klp-{entry.name}.log"
        if not logfile.is_file() or result["message"] == "timed out":
            continue
        decision, message = klp_decision(result["rc"], logfile.read_text(errors="replace"),
                                         Path(result.get("module", "")).is_file(), False)
        if (decision, message) != (result["decision"], result["message"]):
            log.info("klp: %s: %s, no longer %s (its log read again)", entry.name, decision,
                     result["decision"])
            result.update(decision=decision, message=message)
            changed = True
    if changed:
        results.save()


def undo_killed_run(bench: Bench) -> None:
    """Put the tree back as a klp-build killed hard (SIGKILL, the session's end) left it.

    Its exit trap, which never ran, would have reversed its patches (the copies with
    #line markers it writes as ``klp-tmp/NNNN-fixed-*.patch``) and moved its stashed
    files (``scripts/setlocalversion``) back.  Without this the next run applies a
    patch to a tree that already has one and builds a kernel named by the old stash."""
    stash = bench.klp_tmp / "stash"
    stashed = [p for p in stash.rglob("*") if p.is_file()] if stash.is_dir() else []
    if not stashed:
        return
    for fixed in sorted(bench.klp_tmp.glob("[0-9]*-fixed-*.patch"), reverse=True):
        reverse = ["patch", "-p1", "-R", "-s", "-f", "-i", str(fixed)]
        if run([*reverse, "--dry-run"], cwd=bench.tree, check=False).returncode == 0:
            run(reverse, cwd=bench.tree)
            log.warning("klp: a killed run left %s applied; reversed", fixed.name)
    for saved in stashed:
        target = bench.tree / saved.relative_to(stash)
        shutil.move(str(saved), str(target))
        log.warning("klp: a killed run left %s edited; restored", target.relative_to(bench.tree))


def klp_one(bench: Bench, entry: BenchPatch, jobs: int) -> dict:
    """One klp-build run: cold unless a complete original build is kept (then -S patched)."""
    warm = (bench.klp_tmp / "1-orig" / ".complete").is_file()
    out = bench.out("klp", entry.name)
    for old in out.glob("*.ko"):
        old.unlink()
    ko = out / f"klp-{entry.name}.ko"
    argv = [*bench.tools, "./scripts/livepatch/klp-build", "-T", *(["-S", "patched"] if warm else []),
            "-j", str(jobs), "-o", ko, bench.patch_copy(entry)]
    before = machine()
    rc, output, seconds, timed_out = run_timed(argv, bench.tree, bench.logs / f"klp-{entry.name}.log",
                                               WARM_TIMEOUT if warm else COLD_TIMEOUT)
    decision, message = klp_decision(rc, output, ko.is_file(), timed_out)
    result = {"mode": "warm" if warm else "cold", "rc": rc, "decision": decision,
              "message": message, "seconds": round(seconds, 1), "tail": tail(output),
              "changed": objtool_lines(output, "changed function"),
              "new": objtool_lines(output, "new function"),
              "warnings": klp_warnings(output),
              "loadavg_before": before["loadavg"], "loadavg_after": machine()["loadavg"],
              "at": time.strftime("%Y-%m-%d %H:%M:%S")}
    if decision == MODULE:
        result["module"] = str(ko)
        result["functions"], result["functions_from"] = module_functions(ko, result["changed"])
    return result


# klp-build's and objtool's words for what they do not live patch.
_KLP_REFUSALS = ("unsupported patch to", "changed data:", "unsupported static branch key",
                 "unsupported static call key", "would create an undeclared module dependency",
                 "can't patch or reference init code")
_KLP_SETUP = ("not enabled", "not supported", "not built with KLP support", "recountdiff not found",
              "please run from the kernel root", ".config mismatch", "requires bash")


def klp_decision(rc: int, output: str, made_module: bool, timed_out: bool) -> "tuple[str, str]":
    """(decision, message) from klp-build's exit status and output."""
    errors = [l.strip() for l in output.splitlines() if re.search(r"\berror\b", l)]
    first = next((e for e in errors if "klp-build: line" not in e), errors[0] if errors else "")
    if timed_out:
        return "tool error", "timed out"
    if rc == 0 and made_module and "SUCCESS" in output:
        return MODULE, ""
    if "no changes detected" in output:
        return "no change", "no changes detected"
    if "did not apply" in output:
        return "does not apply", first
    if any(r in output for r in _KLP_REFUSALS):
        return "refused", "; ".join(e for e in errors if any(r in e for r in _KLP_REFUSALS))[:500]
    if any(s in output for s in _KLP_SETUP):
        return "setup error", first
    if "kernel build failed" in output:
        return "build error", first
    return "tool error", first or f"exit {rc} without a message"


def klp_warnings(output: str) -> List[str]:
    """klp-build's and objtool's own warnings (fuzz, disabled tracepoints...), not the compiler's."""
    found = []
    for line in output.splitlines():
        if "warning" in line and ("klp-build:" in line or "objtool" in line) and line not in found:
            found.append(line.strip())
    return found[:20]


def objtool_lines(output: str, what: str) -> List[str]:
    """'object: function' of objtool klp diff's 'changed function' / 'new function' lines."""
    found = []
    for m in re.finditer(rf"^(\S+): {what}: (\S+)$", output, re.M):
        entry = f"{m.group(1)}: {m.group(2)}"
        if entry not in found:
            found.append(entry)
    return found


# struct klp_object_ext / klp_func_ext (include/linux/livepatch_external.h, x86-64):
# name @0, funcs @8, callbacks @16 (4 pointers + bool), nr_funcs @56; 64 bytes.
# old_name @0, new_func @8, sympos @16; 24 bytes.
_OBJ_SIZE, _OBJ_FUNCS, _OBJ_NR = 64, 8, 56
_FUNC_SIZE, _FUNC_SYMPOS = 24, 16


def module_functions(ko: Path, changed: List[str]) -> "tuple[List[str], str]":
    """What a klp-build module asks the kernel to patch: the ``.init.klp_funcs`` entries
    its init.c hands to klp_enable_patch() ("object:function[,sympos]"); objtool's
    'changed function' lines only if the module cannot be read."""
    try:
        return klp_funcs(ko), ".init.klp_funcs"
    except (KpatchError, KeyError, IndexError, struct.error) as err:
        log.warning("%s: cannot read .init.klp_funcs (%s); using objtool's output", ko.name, err)
        return [c.replace(".o: ", ":") for c in changed], "objtool output"


def klp_funcs(ko: Path) -> List[str]:
    elf = read_elf(ko)
    objs, funcs = elf.section_by_name(".init.klp_objects"), elf.section_by_name(".init.klp_funcs")
    if objs is None or funcs is None:
        raise KpatchError("no .init.klp_objects/.init.klp_funcs")
    obj_relas, func_relas = relas_by_offset(elf, objs), relas_by_offset(elf, funcs)
    found = []
    for base in range(0, objs.size - _OBJ_SIZE + 1, _OBJ_SIZE):
        name = c_string(obj_relas[base]) if base in obj_relas else "vmlinux"
        start = obj_relas[base + _OBJ_FUNCS].section_offset
        count = struct.unpack_from("<I", objs.data, base + _OBJ_NR)[0]
        for offset in range(start, start + count * _FUNC_SIZE, _FUNC_SIZE):
            sympos = struct.unpack_from("<Q", funcs.data, offset + _FUNC_SYMPOS)[0]
            found.append(f"{name}:{c_string(func_relas[offset])}" + (f",{sympos}" if sympos else ""))
    return found


def relas_by_offset(elf, section) -> dict:
    rela = elf.rela_section_for(section)
    return {r.offset: r for r in rela.relas} if rela is not None else {}


def c_string(rela) -> str:
    data = rela.symbol.section.data
    start = rela.section_offset
    return data[start:data.index(b"\0", start)].decode()


# -- pykpatch ---------------------------------------------------------------------------------------

def pykpatch_phase(bench: Bench, results: Results, entries: List[BenchPatch], redo: bool,
                   pause: float) -> None:
    todo = [e for e in entries if redo or "pykpatch" not in results.get(e.name)]
    log.info("pykpatch: %d patch(es), each cold (fresh cache) then warm", len(todo))
    if not todo:
        return
    started = time.monotonic()
    prime = pykpatch_build(bench, todo[0], cache_dir(), "prime")  # the main cache's tree, made once
    log.info("pykpatch: main cache ready (%s: %s)", duration(prime["seconds"]), prime["decision"])
    for i, entry in enumerate(todo, 1):
        if i > 1 and pause:
            log.info("pykpatch: %d s pause (ext4 is slow right after a tree is deleted)", pause)
            time.sleep(pause)
        cold = pykpatch_cold(bench, entry)
        warm = pykpatch_build(bench, entry, cache_dir(), "warm")
        results.get(entry.name)["pykpatch"] = {"cold": cold, "warm": warm}
        results.get(entry.name).setdefault("load", {}).pop("pykpatch", None)
        results.save()
        log.info("pykpatch [%d/%d] %s: %s, cold %s, warm %s%s", i, len(todo), entry.name,
                 warm["decision"], duration(cold["seconds"]), duration(warm["seconds"]),
                 f": {warm['message']}" if warm["message"] else "")
    results.record_run("pykpatch", time.monotonic() - started, len(todo))


def pykpatch_cold(bench: Bench, entry: BenchPatch) -> dict:
    """A build in a fresh cache (benchlib.cold_cache): the tree is unpacked and prepared."""
    with cold_cache(cache_dir()) as fresh:
        return pykpatch_build(bench, entry, fresh, "cold")


def pykpatch_build(bench: Bench, entry: BenchPatch, cache: Path, mode: str) -> dict:
    out = bench.out("pykpatch", entry.name)
    for old in list(out.glob("*.ko")) + list(out.glob("*.json")):
        old.unlink()
    name = f"pyk-{entry.name}"
    argv = [sys.executable, "-m", "pykpatch", "build", "-k", bench.release, "--cache-dir", cache,
            "-o", out, "-n", name, entry.path(bench.release)]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    rc, output, seconds, timed_out = run_timed(argv, REPO, bench.logs / f"pykpatch-{mode}-{entry.name}.log",
                                               PYKPATCH_TIMEOUT, env)
    decision, message = pykpatch_decision(rc, output, timed_out)
    result = {"mode": mode, "rc": rc, "decision": decision, "message": message,
              "seconds": round(seconds, 1), "tail": tail(output),
              "at": time.strftime("%Y-%m-%d %H:%M:%S")}
    ko = next(iter(sorted(out.glob("*.ko"))), out / f"{name}.ko")
    if decision == MODULE and ko.is_file():
        report = read_json(ko.with_suffix(".json"), {"objects": []})
        result["module"] = str(ko)
        result["functions"] = [f"{o['target']}:{f['name']}" + (f",{f['sympos']}" if f.get("sympos") else "")
                               for o in report["objects"] for f in o["functions"] if f["patched"]]
        result["new"] = [f"{o['target']}:{f['name']}" for o in report["objects"]
                         for f in o["functions"] if f["status"] == "new"]
    elif decision == MODULE:
        result.update(decision="tool error", message=f"exit 0 but no {ko.name}")
    return result


def pykpatch_decision(rc: int, output: str, timed_out: bool) -> "tuple[str, str]":
    if timed_out:
        return "tool error", "timed out"
    if "Traceback (most recent call last)" in output:
        return "tool error", tail(output, 1)
    if rc == 0:
        return MODULE, ""
    message = (kpatch_build_error(output) if "kpatch-build: error: " in output
               else tail(output, 3).strip())
    if message.startswith("no change"):
        return "no change", message
    if "does not apply" in message:
        return "does not apply", message
    if message.startswith("compiling the patched objects failed"):
        return "build error", message
    return "refused", message


# -- load ------------------------------------------------------------------------------------------

def built_module(rec: dict, tool: str) -> Optional[Path]:
    build = rec.get("klp") if tool == "klp" else rec.get("pykpatch", {}).get("warm")
    if build and build.get("decision") == MODULE and Path(build.get("module", "")).is_file():
        return Path(build["module"])
    return None


def load_phase(bench: Bench, results: Results, entries: List[BenchPatch], redo: bool) -> None:
    todo = []
    for entry in entries:
        rec = results.get(entry.name)
        for tool in TOOLS:
            ko = built_module(rec, tool)
            done = rec.get("load", {}).get(tool, {})
            if ko is not None and (redo or done.get("module_sha1") != sha1(ko)):
                todo.append((entry, tool, ko))
    log.info("load: %d module(s) to load", len(todo))
    if not todo:
        return
    started = time.monotonic()
    session = GuestSession(bench.kernel, bench.dir / "guest")
    try:
        for i, (entry, tool, ko) in enumerate(todo, 1):
            result = exercise_module(session, entry, ko)
            results.get(entry.name).setdefault("load", {})[tool] = result
            results.save()
            log.info("load [%d/%d] %s (%s): %s%s", i, len(todo), entry.name, TOOLS[tool],
                     result["outcome"], "" if not result["errors"] else ": " + result["errors"][0][:200])
    finally:
        session.close()
        results.record_run("load", time.monotonic() - started, len(todo))


def sha1(path: Path) -> str:
    return hashlib.sha1(path.read_bytes()).hexdigest()


def exercise_module(session: GuestSession, entry: BenchPatch, ko: Path) -> dict:
    """One module through Exercise in the session's guest; the guest is closed after trouble."""
    from pykpatch.testbed.vm import GuestError
    started = time.monotonic()
    exercise = Exercise(session.ensure(), entry, ko)
    try:
        result = exercise.run()
    except GuestError as err:
        result = exercise.result([f"guest: {str(err).splitlines()[0][:300]}"])
        exercise.dirty = True
    if exercise.dirty:
        session.close()
    result.update(seconds=round(time.monotonic() - started, 1), module_sha1=sha1(ko),
                  at=time.strftime("%Y-%m-%d %H:%M:%S"))
    return result


class Exercise:
    """insmod, transition, enabled, the behaviour check, disable, rmmod, dmesg."""

    def __init__(self, guest, entry: BenchPatch, ko: Path) -> None:
        self.guest = guest
        self.entry = entry
        self.ko = ko
        self.name = read_module_info(ko).name
        self.sysfs = f"/sys/kernel/livepatch/{self.name}"
        self.steps: List[str] = []
        self.outputs: Dict[str, str] = {}
        self.bad: List[str] = []
        self.dmesg_excerpt: List[str] = []
        self.loaded = False
        self.dirty = False

    def sh(self, cmd: str, timeout: float = 60) -> "tuple[bool, str]":
        res = self.guest.run(cmd, timeout=timeout)
        out = res.out.strip()
        self.steps.append(f"$ {cmd.splitlines()[0]} -> {res.rc}" + (f": {out[-200:]}" if out else ""))
        return res.ok, out

    def wait(self, condition: str) -> bool:
        tries = int(TRANSITION_TIMEOUT / 0.2)
        return self.sh(f"for i in $(seq {tries}); do if {condition}; then exit 0; fi; sleep 0.2; "
                       "done; exit 1", timeout=TRANSITION_TIMEOUT + 30)[0]

    def run(self) -> dict:
        self.sh("dmesg -C")
        taint = self.taint()
        errors = self.setup()
        if not errors:
            errors = self.cycle()
        self.teardown()
        dmesg = self.sh("dmesg")[1].splitlines()
        bad_at = [i for i, l in enumerate(dmesg) if any(b in l for b in BAD_DMESG)]
        self.bad = [dmesg[i] for i in bad_at]
        if bad_at:
            # the kernel's own words before the first bad line (usercopy:, livepatch:...) say why
            self.dmesg_excerpt = dmesg[max(0, bad_at[0] - DMESG_BEFORE):bad_at[0] + DMESG_AFTER]
        new_taint = (self.taint() & ~taint) & ~EXPECTED_TAINT
        if self.bad:
            errors.append("dmesg: " + " | ".join(self.bad[:6]))
            self.dirty = True
        if new_taint:
            errors.append(f"new taint {new_taint:#x}")
            self.dirty = True
        return self.result(errors)

    def result(self, errors: List[str]) -> dict:
        b = self.entry.behaviour
        behaves = b.behaves(self.outputs) if b is not None else None
        return {"outcome": self.outcome(errors), "behaves": behaves,
                "errors": errors, "outputs": self.outputs, "bad_dmesg": self.bad[:20],
                "dmesg_excerpt": self.dmesg_excerpt, "steps": self.steps[-40:]}

    def outcome(self, errors: List[str]) -> str:
        """'loaded' (and unloaded, all clean), 'not loaded', or 'trouble' (it loaded, then
        the kernel complained, a transition stuck or rmmod failed)."""
        if not errors:
            return "loaded"
        if self.loaded:
            return "trouble"
        return "not loaded"

    def setup(self) -> List[str]:
        for target in self.entry.targets:
            ok, out = self.sh(f"modprobe {target}")
            if not ok:
                return [f"target module {target} does not load: {out[-200:]}"]
        b = self.entry.behaviour
        if b is not None:
            if b.setup and not self.sh(b.setup)[0]:
                return [f"behaviour setup failed: {b.setup}"]
            self.outputs["before"] = self.sh(b.command)[1]
        return []

    def cycle(self) -> List[str]:
        remote = self.guest.put(self.ko, f"/tmp/{self.ko.name}")
        ok, out = self.sh(f"insmod {remote}")
        if not ok:
            return [f"insmod failed: {out[-300:]}"]
        self.loaded = True
        errors = []
        if not self.wait(f"[ $(cat {self.sysfs}/transition) = 0 ]"):
            errors.append(f"the transition did not finish within {TRANSITION_TIMEOUT} s")
            self.dirty = True
        if self.sh(f"cat {self.sysfs}/enabled")[1] != "1":
            errors.append("enabled is not 1 after loading")
        for target in self.entry.targets:
            if self.sh(f"cat {self.sysfs}/{target}/patched")[1] != "1":
                errors.append(f"{target} is loaded but not patched")
        if self.entry.behaviour is not None:
            self.outputs["enabled"] = self.sh(self.entry.behaviour.command)[1]
        self.sh(f"echo 0 > {self.sysfs}/enabled")
        if not self.wait(f"[ ! -d {self.sysfs} ]"):
            self.dirty = True
            return errors + [f"disabling did not finish within {TRANSITION_TIMEOUT} s"]
        ok, out = self.sh(f"rmmod {self.name}")
        if not ok:
            errors.append(f"rmmod failed: {out[-200:]}")
            self.dirty = True
        if self.entry.behaviour is not None:
            self.outputs["after"] = self.sh(self.entry.behaviour.command)[1]
        return errors

    def teardown(self) -> None:
        b = self.entry.behaviour
        if b is not None and b.teardown:
            self.sh(b.teardown)
        for target in reversed(self.entry.targets):
            self.sh(f"modprobe -r {target}")

    def taint(self) -> int:
        ok, out = self.sh("cat /proc/sys/kernel/tainted")
        return int(out) if ok and out.isdigit() else 0


# -- driver ----------------------------------------------------------------------------------------

PHASES = ("prepare", "klp", "pykpatch", "load", "report")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("phase", choices=("all",) + PHASES)
    parser.add_argument("names", nargs="*", help="bench patches (default: all; see patches.py)")
    parser.add_argument("-k", "--kernel", default=BACKPORTS_7_RELEASE, metavar="RELEASE",
                        help=f"the kernel (default {BACKPORTS_7_RELEASE}; the patches are "
                             "written for its source)")
    parser.add_argument("--redo", action="store_true", help="redo these even if done")
    parser.add_argument("--cold", action="store_true",
                        help="klp: remove klp-tmp first, so the first run builds everything")
    parser.add_argument("-j", "--jobs", type=int, default=os.cpu_count() or 2,
                        help="klp-build's make jobs (default: every CPU)")
    parser.add_argument("--cold-pause", type=float, default=180, metavar="SECONDS",
                        help="pykpatch: pause between cold builds (default 180)")
    parser.add_argument("--output", type=Path, default=REPORT, help=f"the report (default {REPORT})")
    parser.add_argument("-d", "--debug", action="store_true")
    args = parser.parse_args()
    setup_logging("klp-bench", args.debug)
    try:
        entries = select(args.names)
        bench = Bench(args.kernel)
        results = Results(bench.dir / "results.json", args.kernel)
        phases = PHASES if args.phase == "all" else (args.phase,)
        if "prepare" in phases:  # (a new tree loses klp-build's original build: asked for alone)
            prepare(bench, results, args.redo and args.phase == "prepare")
        if "klp" in phases:
            klp_phase(bench, results, entries, args.redo, args.cold, args.jobs)
        if "pykpatch" in phases:
            pykpatch_phase(bench, results, entries, args.redo, args.cold_pause)
        if "load" in phases:
            load_phase(bench, results, entries, args.redo)
        if "report" in phases:
            args.output.write_text(render(entries, results.data))
            print(f"report: {args.output}")
    except (KpatchError, ValueError) as err:
        print(f"klp-bench: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("klp-bench: interrupted; results so far are saved", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
