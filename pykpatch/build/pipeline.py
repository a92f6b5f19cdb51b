"""kpatch-build as a flat list of stages: from source patches to a livepatch module.

Only the translation units the patch can change are compiled, once before
and once after the patch, in the cached prepared tree of the target kernel.
"""

import json
import logging
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Dict, List, Optional, Set

from pykpatch.build.affected import AffectedObjects, affected_objects, patch_files
from pykpatch.build.compile import Compiled, compile_each, compile_objects
from pykpatch.build.compiler import check_compiler, check_vmlinux_compiler
from pykpatch.build.layout import layout_changes
from pykpatch.build.module import ModuleInputs, check_module, link_module, module_name
from pykpatch.build.objindex import KernelObject, may_be_archive_member
from pykpatch.build.structsizes import struct_sizes
from pykpatch.build.target import Target, custom_target, debian_target
from pykpatch.build.verify import Mismatch, TargetBinary, verify_original
from pykpatch.build.workspace import PatchedTree
from pykpatch.cache import cache_dir
from pykpatch.differ.driver import DiffResult, Outcome, diff_objects
from pykpatch.differ.state import Options
from pykpatch.differ.symbols import AmbiguousSymbol, read_target_symbols
from pykpatch.elf.writer import write_elf
from pykpatch.errors import InputError, Refusal
from pykpatch.kernel import kbuild
from pykpatch.kernel.sections import CALLBACK_SECTION_PREFIXES

log = logging.getLogger("pykpatch")

INCLUDE_DIR = Path(__file__).resolve().parent.parent / "data" / "include"


@dataclass
class BuildOptions:
    patches: List[Path]
    release: Optional[str] = None
    sourcedir: Optional[Path] = None
    headers: Optional[Path] = None
    vmlinux: Optional[Path] = None
    kallsyms: Optional[Path] = None
    modules_dir: Optional[Path] = None
    jobs: int = 2
    name: str = ""
    output: Path = Path(".")
    replace: bool = True
    skip_cleanup: bool = False
    skip_compiler_check: bool = False
    cache: Optional[Path] = None
    # Partial: an object that does not compile or is refused is left out
    # (see BuildResult.left_out) instead of failing the build.
    partial: bool = False
    # The module's description, from the objects' reports and what was left out.
    describe: Optional[Callable[[List[dict], Dict[str, List[str]]], str]] = None
    # Partial: the objects that must be left out with these (they carry one
    # change between them: a header's users, a .c file and its includer).
    together: Optional[Callable[[Set[str]], Set[str]]] = None


@dataclass
class BuildResult:
    module: Optional[Path]       # None: a partial build that kept nothing
    report_path: Optional[Path]
    reports: List[dict] = field(default_factory=list)
    seconds: float = 0.0
    left_out: Dict[str, List[str]] = field(default_factory=dict)   # obj -> why (partial)
    nothing: str = ""            # why a partial build kept nothing


class Progress:
    """Stage announcements on stderr, with elapsed time."""

    def __init__(self) -> None:
        self.start = time.monotonic()

    def stage(self, text: str) -> None:
        log.info("[%5.1fs] %s", time.monotonic() - self.start, text)


def build(opts: BuildOptions, progress: Progress, logfile: Path,
          target: Optional[Target] = None) -> BuildResult:
    """Run every stage; raises KpatchError (Refusal for unpatchable changes).

    *target*: already prepared (else from *opts*)."""
    patches = _existing_patches(opts.patches)
    name = module_name(patches, opts.name)
    files = patch_files(patches)  # bad or unpatchable patches fail before any preparation
    if target is None:
        progress.stage(f"target kernel {opts.release or 'running'}: preparing "
                       "(cached after the first time)")
        target = resolve_target(opts)
    if not opts.skip_compiler_check:
        check_compiler(target)
    progress.stage("finding the objects the patch changes")
    affected = affected_objects(files, target.index, opts.jobs)
    sizes = struct_sizes(target.tree, target.index)
    work = Path(tempfile.mkdtemp(prefix=f"kpatch-build-{name}-"))
    try:
        with ThreadPoolExecutor(max_workers=1) as reader:
            # The compiles are other programs: meanwhile this process reads
            # the vmlinux symbols (2 s), which the diff needs first.
            symbols = reader.submit(_read_vmlinux_symbols, target, affected)
            orig, compiled = compile_twice(target, patches, affected, work, opts.jobs, logfile,
                                           progress, opts.partial)
            symbols.result()
        if not opts.skip_compiler_check:
            check_vmlinux_compiler(target)
        left_out = {obj: [f"does not compile with the patch: {errors}"]
                    for obj, errors in compiled.failed.items()}
        affected = affected.without(left_out)
        progress.stage(f"diffing {len(affected.objects)} object(s)")
        diffed = diff_all(target, affected, orig, compiled.copies, sizes, name, work)
        left_out.update(diffed.refused)
        _leave_out_together(left_out, opts.together)
        kept_reports = [r for r in diffed.reports if r["object"] not in left_out]
        try:
            outputs = settle(diffed, left_out, opts.partial)
        except Refusal as nothing:
            if not opts.partial:
                raise
            return BuildResult(None, None, kept_reports, time.monotonic() - progress.start,
                               left_out, str(nothing))
        progress.stage(f"linking {name}.ko")
        description = opts.describe(kept_reports, left_out) if opts.describe else ""
        in_module = _patches_in_module(patches, target, left_out, opts.jobs) if left_out else patches
        inputs = ModuleInputs(name, outputs, in_module, target.release, opts.replace, description)
        ko = link_module(inputs, target.headers_dir, work / "module", logfile, opts.jobs,
                         target.tools)
        check_module(ko, target.release, target.symvers)
        result = deliver(ko, kept_reports, opts.output)
        result.left_out = left_out
    finally:
        if opts.skip_cleanup:
            log.info("work directory kept: %s", work)
        else:
            shutil.rmtree(work, ignore_errors=True)
    result.seconds = time.monotonic() - progress.start
    return result


def _leave_out_together(left_out: Dict[str, List[str]],
                        together: Optional[Callable[[Set[str]], Set[str]]]) -> None:
    """Leave out, with each left-out object, the objects that carry the same change."""
    while together is not None:
        more = together(set(left_out)) - set(left_out)
        if not more:
            return
        for obj in sorted(more):
            left_out[obj] = ["left out with the other objects of the same changed file"]


def _patches_in_module(patches: List[Path], target: Target, left_out: Dict[str, List[str]],
                       jobs: int) -> List[Path]:
    """The patches whose every object is in the module (what its modinfo names)."""
    kept = []
    for patch in patches:
        try:
            objects = affected_objects(patch_files([patch]), target.index, jobs).objects
        except Refusal:
            continue
        if all(o.obj not in left_out for o in objects):
            kept.append(patch)
    return kept


def _read_vmlinux_symbols(target: Target, affected: AffectedObjects) -> None:
    if any(obj.module is None for obj in affected.objects):
        read_target_symbols(target.symbols)


def _existing_patches(patches: List[Path]) -> List[Path]:
    if not patches:
        raise InputError("no patch given")
    for p in patches:
        if not p.is_file():
            raise InputError(f"patch file {p} does not exist")
    return [p.resolve() for p in patches]


def resolve_target(opts: BuildOptions) -> Target:
    if opts.sourcedir:
        return custom_target(opts.sourcedir, opts.headers, opts.vmlinux, opts.kallsyms,
                             opts.release, opts.modules_dir)
    return debian_target(opts.release, opts.cache, opts.jobs, opts.vmlinux, opts.kallsyms)


def compile_twice(target: Target, patches: List[Path], affected: AffectedObjects, work: Path,
                  jobs: int, logfile: Path, progress: Progress, keep_going: bool = False
                  ) -> "tuple[Dict[str, Path], Compiled]":
    """Original and patched objects; the tree is clean again afterwards, whatever happens.

    *keep_going*: a patched object that does not compile is recorded, not fatal."""
    extra = f"-I{INCLUDE_DIR}"
    with PatchedTree(target.tree, patches, logfile) as tree:
        progress.stage(f"compiling {len(affected.objects)} original object(s)")
        orig = compile_objects(target.tree, target.make_args, affected.objects, work / "orig",
                               jobs=jobs, extra_cflags=extra, logfile=logfile, what="original",
                               tools=target.tools)
        progress.stage("applying the patch")
        tree.apply()
        progress.stage(f"compiling {len(affected.objects)} patched object(s)")
        compile_patched = compile_each if keep_going else _compile_all
        patched = compile_patched(target.tree, target.make_args, affected.objects,
                                  work / "patched", jobs=jobs, extra_cflags=extra,
                                  logfile=logfile, what="patched", tools=target.tools)
    return orig, patched


def _compile_all(*args, **kwargs) -> Compiled:
    return Compiled(compile_objects(*args, **kwargs))


def diff_options(target: Target, obj: KernelObject, sizes: Dict[str, int], name: str,
                 debug: bool = False) -> Options:
    """Options for one object; *debug*: a module's symbols from its debug counterpart."""
    base = Options(symvers=str(target.symvers), objname=obj.target, patch_name=name,
                   struct_sizes=sizes,
                   objtool_at_link=kbuild.objtool_runs_at_link(target.config))
    if obj.module is None:
        return replace(base, symbols=str(target.symbols))
    module = target.module_file(obj.module)
    symbols = target.debug_module(module) if debug and target.debug_module is not None else module
    return replace(base, symbols=str(symbols),
                   module_symbols=lambda other: str(target.module_file(other)),
                   dependencies=target.module_dependencies(obj.module))


def diff_one(target: Target, obj: KernelObject, orig: Path, patched: Path,
             sizes: Dict[str, int], name: str) -> DiffResult:
    """Diff one pair; a module whose shipped symbols are ambiguous is retried with its
    debug module (fetched only then: it costs a pass over the dbg package)."""
    try:
        return diff_objects(str(orig), str(patched), diff_options(target, obj, sizes, name))
    except AmbiguousSymbol as ambiguous:
        if obj.module is None or target.debug_module is None:
            raise
        log.info("%s: the shipped module has %s more than once and no FILE symbols; "
                 "using its debug module", obj.obj, ambiguous.name)
        return diff_objects(str(orig), str(patched),
                            diff_options(target, obj, sizes, name, debug=True))


@dataclass
class Diffed:
    """Every object's diff: outputs and reports of the accepted, reasons of the refused."""

    outputs: Dict[str, Path] = field(default_factory=dict)      # obj -> differ output
    reports: List[dict] = field(default_factory=list)
    refused: Dict[str, List[str]] = field(default_factory=dict)  # obj -> why
    acting: List[str] = field(default_factory=list)  # objs redirecting a function or with callbacks


def diff_all(target: Target, affected: AffectedObjects, orig: Dict[str, Path],
             patched: Dict[str, Path], sizes: Dict[str, int], name: str, work: Path) -> Diffed:
    """Diff every pair; all refusals are gathered, so the author sees them all."""
    diffed = Diffed()
    binaries: Dict[str, TargetBinary] = {}
    for obj in affected.objects:
        reasons = list(layout_changes(orig[obj.obj], patched[obj.obj]))
        try:
            result = diff_one(target, obj, orig[obj.obj], patched[obj.obj], sizes, name)
        except Refusal as refusal:
            # (the differ names the file it read: a copy in the work directory)
            why = str(refusal).replace(f"{patched[obj.obj]}: ", "")
            diffed.refused[obj.obj] = reasons + [why]
            continue
        report = result.report.to_dict()
        report.update(object=obj.obj, target=obj.target, why=affected.reasons[obj.obj])
        diffed.reports.append(report)
        reasons += source_mismatches(target, obj, orig[obj.obj], report, binaries)
        if reasons:
            diffed.refused[obj.obj] = reasons
        if result.outcome is Outcome.PATCH:
            out = work / "diff" / obj.obj
            out.parent.mkdir(parents=True, exist_ok=True)
            write_elf(result.output, out)
            diffed.outputs[obj.obj] = out
            if any(f["patched"] for f in report["functions"]) or any(
                    sec.name.startswith(CALLBACK_SECTION_PREFIXES) for sec in result.output.sections):
                diffed.acting.append(obj.obj)
    return diffed


def settle(diffed: Diffed, left_out: Dict[str, List[str]], partial: bool) -> List[Path]:
    """The differ outputs that go into the module; Refusal when none can (or, unless
    *partial*, when any object was refused)."""
    if left_out and not partial:
        raise Refusal("the patch cannot be live patched:\n" + "\n".join(
            f"{obj}: {why}" for obj, reasons in left_out.items() for why in reasons))
    outputs = {obj: out for obj, out in diffed.outputs.items() if obj not in left_out}
    if not outputs:
        raise Refusal("no change: the patch changes no function of the compiled objects "
                      "(only comments, unused code, or line numbers?)" if not left_out else
                      "every changed object was left out")
    if not any(obj in outputs for obj in diffed.acting):
        added = sorted({f["name"] for r in diffed.reports if r["object"] in outputs
                        for f in r["functions"]})
        raise Refusal("nothing to redirect: the patch only adds " + ", ".join(added) + ", which "
                      "no changed function of the patch calls -- its callers are probably in "
                      "another file of the same commit; add that file to the patch")
    return list(outputs.values())


def source_mismatches(target: Target, obj: KernelObject, orig: Path, report: dict,
                      binaries: Dict[str, TargetBinary]) -> List[str]:
    """Refusal lines for replaced functions whose original code is not the target's."""
    binary_path = target.vmlinux if obj.module is None else target.module_file(obj.module)
    if binary_path is None:
        log.warning("%s: no vmlinux to check the source against (symbols from kallsyms)", obj.obj)
        return []
    binary = binaries.setdefault(str(binary_path), TargetBinary(Path(binary_path)))
    replaced = [f["name"] for f in report["functions"] if f["patched"]]
    return [mismatch_reason(obj, m, binary_path) for m in verify_original(orig, replaced, binary)]


def mismatch_reason(obj: KernelObject, mismatch: Mismatch, binary: Path) -> str:
    if mismatch.missing and may_be_archive_member(obj.src):
        return (f"{binary.name} has no {mismatch.function}: objects of {obj.src} "
                "are lib.a members, linked only when something calls them, and nothing in "
                "this kernel does -- there is nothing to patch")
    return (f"{mismatch.function}: the source does not match the running kernel "
            f"({mismatch.why}); build from the exact source, config and compiler of that kernel")


def deliver(ko: Path, reports: List[dict], output: Path) -> BuildResult:
    """Copy the module and its JSON report into *output*."""
    output.mkdir(parents=True, exist_ok=True)
    dest = output / ko.name
    shutil.copyfile(ko, dest)
    report_path = dest.with_suffix(".json")
    report_path.write_text(json.dumps({"module": dest.name, "objects": reports}, indent=2) + "\n")
    return BuildResult(dest, report_path, reports)


def default_logfile(cache: Optional[Path]) -> Path:
    logs = cache_dir(cache) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    return logs / f"kpatch-build-{time.strftime('%Y%m%d-%H%M%S')}.log"
