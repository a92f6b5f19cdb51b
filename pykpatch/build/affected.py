"""Which kernel objects a patch can change, and where each one lives."""

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Sequence

from pykpatch.build.objindex import KernelObject, ObjectIndex
from pykpatch.build.patchfile import TouchedFile, refuse_unpatchable, touched_files
from pykpatch.errors import Refusal

log = logging.getLogger("pykpatch")


@dataclass
class AffectedObjects:
    """The objects to compile twice, and what the patch touched but this kernel does not build."""

    objects: List[KernelObject] = field(default_factory=list)
    reasons: Dict[str, str] = field(default_factory=dict)  # obj -> why it is affected
    not_built: List[str] = field(default_factory=list)

    def without(self, objs: "Dict[str, object]") -> "AffectedObjects":
        """These objects but those in *objs*."""
        kept = [o for o in self.objects if o.obj not in objs]
        return AffectedObjects(kept, {o.obj: self.reasons[o.obj] for o in kept}, self.not_built)

    def add(self, obj: KernelObject, why: str) -> None:
        if obj.obj not in self.reasons:
            self.objects.append(obj)
            self.reasons[obj.obj] = why


def patch_files(patches: Sequence[Path]) -> List[TouchedFile]:
    """Every file touched by *patches*, refusing the ones we cannot patch."""
    files: List[TouchedFile] = []
    for patch in patches:
        touched = touched_files(patch.read_text(errors="replace"), patch.name)
        refuse_unpatchable(touched, patch.name)
        files.extend(f for f in touched if f not in files)
    return files


def affected_objects(files: Sequence[TouchedFile], index: ObjectIndex, jobs: int) -> AffectedObjects:
    """Map touched files to the objects this kernel's config builds from them."""
    result = AffectedObjects()
    for f in files:
        if f.kind == "source":
            obj = index.for_source(f.path)
            if obj is not None:
                result.add(obj, f"{f.path} changed")
                continue
            # Not an object of its own, but maybe #included by one
            # (kernel/sched/build_policy.c includes rt.c and deadline.c).
            users = index.objects_including(f.path, jobs)
            if not users:
                result.not_built.append(f.path)
            for obj in users:
                result.add(obj, f"includes {f.path}")
        elif f.kind == "header":
            users = index.objects_including(f.path, jobs)
            if not users:
                result.not_built.append(f.path)
            for obj in users:
                result.add(obj, f"includes {f.path}")
        else:
            result.not_built.append(f.path)
    if not result.objects:
        raise Refusal("the patch changes nothing this kernel builds: "
                      + ", ".join(result.not_built)
                      + " (not compiled with this kernel's config)")
    for path in result.not_built:
        log.info("%s: not built by this kernel's config, ignored", path)
    return result
