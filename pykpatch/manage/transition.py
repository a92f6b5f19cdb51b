"""Following a livepatch transition to its end, or back to where it began.

The kernel switches tasks one by one; a task asleep in a function the
patch replaces holds the transition up (the kernel sends it a fake signal
every 15 s by itself).  We poll ``transition``, and once it has taken
longer than a few seconds we show which tasks are behind and where they
sleep.  At the timeout we write the opposite value to ``enabled``, which
makes the kernel reverse the transition, and wait for that too: the caller
then leaves the kernel exactly as it found it.
"""

import time
from dataclasses import dataclass, field
from typing import Callable, List, Sequence, Tuple, Type

from pykpatch.kernel import livepatch as klp
from pykpatch.manage.failures import (
    Interrupted, ManageError, TransitionStuck, TransitionTimeout,
)
from pykpatch.manage.sysfs import LiveKernel, Task

DEFAULT_TIMEOUT = 60.0


@dataclass(frozen=True)
class Timing:
    """How long to wait, and how often to look."""

    timeout: float = DEFAULT_TIMEOUT
    # Most transitions end within a second; only after this do we go
    # through /proc to name the tasks that are behind.
    stall_after: float = 3.0
    poll: float = 0.2
    task_refresh: float = 1.0
    clock: Callable[[], float] = field(default=time.monotonic, compare=False)
    sleep: Callable[[float], None] = field(default=time.sleep, compare=False)


@dataclass(frozen=True)
class Progress:
    """What the transition of one patch looks like at one moment."""

    patch: str
    enabling: bool          # direction of the current transition
    reversing: bool         # we are undoing what the command started
    elapsed: float
    timeout: float
    behind: Tuple[Task, ...]  # tasks not yet switched (empty before stall_after)


ProgressCallback = Callable[[Progress], None]


def ignore_progress(_progress: Progress) -> None:
    pass


def complete(live: LiveKernel, name: str, enabling: bool, timing: Timing,
             on_progress: ProgressCallback = ignore_progress) -> None:
    """Wait until patch *name* is fully enabled (or disabled), or undo it.

    On timeout or Ctrl-C the transition is reversed and waited for; then
    TransitionTimeout (or Interrupted) is raised: the patch is back in its
    previous state.  If even the reversal does not finish, TransitionStuck.
    """
    what = "enabling" if enabling else "disabling"
    error_type: Type[ManageError]
    try:
        if _wait(live, name, enabling, False, timing, on_progress):
            return
        error_type, reason = TransitionTimeout, f"timed out after {timing.timeout:.0f} s"
    except KeyboardInterrupt:
        error_type, reason = Interrupted, "interrupted"
    behind = _behind(live, name, enabling)
    _reverse(live, name, enabling, timing, on_progress, behind, what, reason)
    outcome = ("it was reversed: the patch stays active, as before" if not enabling
               else "it was reversed: the kernel is as before")
    raise error_type(f"{what} livepatch '{name}' {reason}, held up by {_count(behind)}; "
                     f"{outcome}. Retry when those tasks are elsewhere, or with a "
                     "longer --timeout", describe_tasks(behind))


def _reverse(live: LiveKernel, name: str, enabling: bool, timing: Timing,
             on_progress: ProgressCallback, behind: List[Task], what: str,
             reason: str) -> None:
    """Undo the transition; TransitionStuck if the undoing stalls as well."""
    live.set_enabled(name, not enabling)
    if _wait(live, name, not enabling, True, timing, on_progress):
        return
    still = _behind(live, name, not enabling)
    raise TransitionStuck(
        f"{what} livepatch '{name}' {reason} and reversing it did not finish "
        f"within {timing.timeout:.0f} s either ({_count(still)} behind); the kernel "
        "keeps trying. Watch it with 'kpatch list'; as a last resort, "
        f"'kpatch force {name} --confirm' (the patch can then never be removed)",
        describe_tasks(still or behind))


def _wait(live: LiveKernel, name: str, enabling: bool, reversing: bool,
          timing: Timing, on_progress: ProgressCallback) -> bool:
    """Poll until the transition ends in the wanted state; False on timeout."""
    start = timing.clock()
    last_tasks = -timing.task_refresh
    behind: Tuple[Task, ...] = ()
    while True:
        elapsed = timing.clock() - start
        if _finished(live, name, enabling):
            return True
        if elapsed >= timing.timeout:
            return False
        if elapsed >= timing.stall_after and elapsed - last_tasks >= timing.task_refresh:
            behind = tuple(_behind(live, name, enabling))
            last_tasks = elapsed
        on_progress(Progress(name, enabling, reversing, elapsed, timing.timeout, behind))
        timing.sleep(timing.poll)


def _finished(live: LiveKernel, name: str, enabling: bool) -> bool:
    status = live.find_status(name)
    if status is None:
        # A disabled patch is freed and its directory goes away.
        if enabling:
            raise ManageError(f"livepatch '{name}' disappeared while being enabled "
                              "(disabled by someone else?)")
        return True
    return not status.transition and status.enabled == enabling


def _behind(live: LiveKernel, name: str, enabling: bool) -> List[Task]:
    target = klp.PATCH_STATE_PATCHED if enabling else klp.PATCH_STATE_UNPATCHED
    return live.tasks_behind(target)


def _count(tasks: List[Task]) -> str:
    return "1 task" if len(tasks) == 1 else f"{len(tasks)} tasks"


def describe_tasks(tasks: Sequence[Task], frames: int = 0) -> List[str]:
    """One header line per task, then its stack (all frames unless *frames*)."""
    lines = []
    for task in tasks:
        ident = f"{task.pid}" if task.pid == task.tid else f"{task.pid}/{task.tid}"
        lines.append(f"task {ident} ({task.comm}) has not switched yet")
        stack = task.stack[:frames] if frames else task.stack
        lines.extend(f"    {frame}" for frame in stack)
        if not task.stack:
            lines.append("    (stack not readable)")
    return lines
