"""Human-readable text for ``list`` and ``info``, from the inventory data."""

from typing import List, Optional

from pykpatch.kernel.livepatch import VMLINUX
from pykpatch.manage.inventory import Json
from pykpatch.manage.sysfs import Task
from pykpatch.manage.transition import describe_tasks

_SHORT_DIGEST = 12


def list_text(report: Json) -> List[str]:
    kernel = report["kernel"]
    lines = ["Loaded patch modules:"]
    if not kernel["livepatch"]:
        lines.append("  (this kernel has no livepatch support)")
    lines += [line for patch in report["patches"] for line in _patch_lines(patch)] \
        or ["  (none)"]
    lines += ["", f"Installed patch modules ({kernel['release']}):"]
    lines += [_installed_line(entry) for entry in report["installed"]] or ["  (none)"]
    for other in report.get("kernels", [])[1:]:
        # A kernel without patches matters only when the running one has some.
        if other["patches"] or report["installed"]:
            lines += _other_kernel_lines(other)
    return lines


def _other_kernel_lines(kernel: Json) -> List[str]:
    """A kernel that is not running: its installed patches, loaded when it boots."""
    state = "installed, not running" if kernel["installed"] else "not installed on this machine"
    lines = ["", f"Installed patch modules ({kernel['release']}, {state}):"]
    names = [f"{p['file'].rsplit('/', 1)[-1]} ({p['name']})" for p in kernel["patches"]]
    if names:
        return lines + names
    release = kernel["release"]
    return lines + [f"  (none: when it lacks fixes the running kernel's patches bring, build them "
                    f"with 'kpatch-build -k {release}' and install them with "
                    f"'kpatch install -k {release} FILE' before booting it)"]


def info_text(report: Json) -> List[str]:
    lines = [f"name:      {report['name']}"]
    module = report["module"]
    if module:
        lines += [f"file:      {module['file']}",
                  f"livepatch: {'yes' if module['livepatch'] else 'no'}",
                  f"vermagic:  {module['vermagic'] or '(none)'}",
                  f"build id:  {module['build_id'] or '(none)'}"]
        lines += _origin_lines(module["origin"], "")
    else:
        lines.append("file:      (unknown: loaded by something other than kpatch)")
    loaded = report["loaded"]
    lines.append(f"state:     {_state(loaded) if loaded else 'not loaded'}")
    if loaded:
        lines += _function_lines(loaded, "")
        lines += _behind_lines(loaded, "")
    for entry in report["installed"]:
        lines.append(f"installed: {entry['file']}")
    if module:
        lines.append("modinfo:")
        lines += [f"  {key}={value}" for key, values in module["modinfo"].items()
                  for value in values]
    return lines


def _patch_lines(patch: Json) -> List[str]:
    lines = [f"{patch['name']} [{_state(patch)}]"]
    lines += _origin_lines(patch["origin"], "    ")
    lines += _function_lines(patch, "    ")
    lines += _behind_lines(patch, "    ")
    return lines


def _state(patch: Json) -> str:
    if not patch["registered"]:
        return "disabled: replaced or disabled, module still loaded"
    return str(patch["state"])


def _origin_lines(origin: Optional[Json], indent: str) -> List[str]:
    if origin is None:
        return [f"{indent}origin: unknown (not built by pykpatch kpatch-build, "
                "or its file is not at hand)"]
    patches = ", ".join(_patch_file(p) for p in origin["patches"]) or "(no patch files recorded)"
    built = []
    if origin["release"]:
        built.append(f"for {origin['release']}")
    if origin["tool_version"]:
        built.append(f"by pykpatch {origin['tool_version']}")
    return [f"{indent}patches: {patches}"] + ([f"{indent}built {' '.join(built)}"] if built else [])


def _patch_file(entry: Json) -> str:
    digest = entry["sha256"]
    return f"{entry['file']} (sha256 {digest[:_SHORT_DIGEST]})" if digest else entry["file"]


def _function_lines(patch: Json, indent: str) -> List[str]:
    lines = []
    for obj in patch["objects"]:
        names = ", ".join(f["name"] if f["sympos"] <= 1 else f"{f['name']},{f['sympos']}"
                          for f in obj["functions"])
        # A module object is patched only once that module is loaded.
        waiting = " (not loaded)" if obj["patched"] is False and obj["name"] != VMLINUX else ""
        lines.append(f"{indent}{obj['name']}{waiting}: {names or '(no functions)'}")
    return lines


def _behind_lines(patch: Json, indent: str) -> List[str]:
    tasks = [Task(t["pid"], t["tid"], t["comm"], t["patch_state"], tuple(t["stack"]))
             for t in patch["behind"]]
    if not tasks:
        return []
    return [f"{indent}{len(tasks)} task(s) not switched yet:"] + \
        [f"{indent}  {line}" for line in describe_tasks(tasks, frames=4)]


def _installed_line(entry: Json) -> str:
    state = "enabled" if entry["enabled"] else "loaded" if entry["loaded"] else "not loaded"
    return f"{entry['file'].rsplit('/', 1)[-1]} ({entry['name']}) [{state}]"
