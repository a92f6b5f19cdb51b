"""Applying patches to the cached source tree without ever leaving it dirty.

The prepared tree is shared by every build for a kernel, so a patch is
applied in place only under a lock, after every file it touches has been
saved to a backup directory with a journal.  Leaving the block restores the
files, whatever happened.  If a build is killed outright, the journal is
still there and the next build restores the tree before doing anything.

Restored files get a new modification time on purpose: the objects in the
tree were last built from the patched text, and make must rebuild them.
"""

import fcntl
import json
import logging
import shutil
from pathlib import Path
from typing import IO, List, Optional, Sequence

from pykpatch.build.patchfile import touched_files
from pykpatch.errors import Refusal
from pykpatch.process import run

log = logging.getLogger("pykpatch")

LOCK_FILE = ".pykpatch-lock"
BACKUP_DIR = ".pykpatch-backup"
JOURNAL = "journal.json"


class PatchedTree:
    """A lock on *tree*, and the patches applied within the block only."""

    def __init__(self, tree: Path, patches: Sequence[Path], logfile: Optional[Path] = None) -> None:
        self.tree = tree
        self.patches = list(patches)
        self.logfile = logfile
        self._lock: Optional[IO[str]] = None
        self.applied = False

    @property
    def backup_dir(self) -> Path:
        return self.tree / BACKUP_DIR

    def __enter__(self) -> "PatchedTree":
        self._lock = open(self.tree / LOCK_FILE, "w")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for another build using %s", self.tree)
            fcntl.flock(self._lock, fcntl.LOCK_EX)
        restore_tree(self.tree)
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            restore_tree(self.tree)
        finally:
            self.applied = False
            if self._lock is not None:
                self._lock.close()
                self._lock = None

    def apply(self) -> None:
        """Apply every patch in order; on the first that fails, restore and refuse."""
        self._save_originals()
        for patch in self.patches:
            check = run(["patch", "-p1", "-N", "--dry-run", "-s", "-i", patch.resolve()],
                        cwd=self.tree, check=False, logfile=self.logfile)
            if check.returncode != 0:
                restore_tree(self.tree)
                raise Refusal(f"{patch.name} does not apply to the kernel source "
                              f"({self.tree}):\n{check.stdout.strip()}")
            run(["patch", "-p1", "-N", "-s", "--no-backup-if-mismatch", "-r", "-",
                 "-i", patch.resolve()], cwd=self.tree, logfile=self.logfile,
                what=f"applying {patch.name}")
        self.applied = True

    def restore(self) -> None:
        restore_tree(self.tree)
        self.applied = False

    def _save_originals(self) -> None:
        paths: List[str] = []
        for patch in self.patches:
            for f in touched_files(patch.read_text(errors="replace"), patch.name):
                if f.path not in paths:
                    paths.append(f.path)
        if self.backup_dir.exists():
            shutil.rmtree(self.backup_dir)
        self.backup_dir.mkdir()
        entries = []
        for rel in paths:
            src = self.tree / rel
            existed = src.is_file()
            if existed:
                dest = self.backup_dir / "files" / rel
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, dest)
            entries.append({"path": rel, "existed": existed})
        # The journal is written last: without it the backup is incomplete and unused.
        (self.backup_dir / JOURNAL).write_text(json.dumps(entries))


def restore_tree(tree: Path) -> None:
    """Undo an interrupted or finished patch application in *tree*, if any."""
    backup = tree / BACKUP_DIR
    journal = backup / JOURNAL
    if not journal.is_file():
        if backup.exists():
            shutil.rmtree(backup)
        return
    for entry in json.loads(journal.read_text()):
        target = tree / entry["path"]
        if entry["existed"]:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(backup / "files" / entry["path"], target)
        elif target.exists():
            target.unlink()
    journal.unlink()
    shutil.rmtree(backup)
    log.debug("restored %s", tree)
