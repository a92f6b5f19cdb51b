"""Stalled transitions: shown, timed out, reversed, cleaned up (fake kernel tree)."""

import io

import pytest

from pykpatch.cli.kpatch import _ProgressView
from pykpatch.manage import actions
from pykpatch.manage.failures import Interrupted, TransitionStuck, TransitionTimeout
from pykpatch.manage.sysfs import Task
from pykpatch.manage.transition import Progress
from test_kpatch_cli_support import (  # noqa: F401  (fixtures)
    FakeKernel, FakeTask, cli, fake, make_ko, no_real_kernel,
)

SLEEPER = FakeTask(42, 42, "sleeper", ["sleeper_wait+0x2a/0x50 [sleeper]",
                                       "kthread+0xe8/0x110", "ret_from_fork+0x22/0x30"],
                   stuck=True)


def test_stalled_load_shows_the_task_then_reverses_and_removes(fake, tmp_path) -> None:
    fake.add_task(SLEEPER)
    fake.add_task(FakeTask(7, 7, "bash", ["do_wait+0x1/0x2"]))
    seen = []
    with pytest.raises(TransitionTimeout) as caught:
        actions.load(fake.host, str(make_ko(tmp_path)), fake.timing(timeout=5), seen.append)
    error = caught.value
    assert error.exit_code == 3
    assert "timed out after 5 s, held up by 1 task" in str(error)
    assert "the kernel is as before" in str(error)
    assert error.details[:2] == ["task 42 (sleeper) has not switched yet",
                                 "    sleeper_wait+0x2a/0x50 [sleeper]"]
    # the live view named the sleeper (only it: bash switched) after stall_after
    stalled = [p for p in seen if p.behind]
    assert stalled and all(p.elapsed >= 1.0 for p in stalled)
    assert {t.comm for p in stalled for t in p.behind} == {"sleeper"}
    assert any(p.reversing for p in seen) or seen[-1].elapsed >= 5
    # nothing left behind
    assert not (fake.host.livepatch / "livepatch_test").exists()
    assert not (fake.host.sys_module / "livepatch_test").exists()
    assert not (fake.host.runtime / "livepatch_test.ko").exists()


def test_released_task_lets_the_load_finish(fake, tmp_path) -> None:
    sleeper = FakeTask(**{**SLEEPER.__dict__})
    fake.add_task(sleeper)

    def release_after_3s(progress: Progress) -> None:
        if progress.elapsed >= 3:
            sleeper.stuck = False

    message = actions.load(fake.host, str(make_ko(tmp_path)), fake.timing(timeout=30),
                           release_after_3s)
    assert "is enabled" in message
    assert fake.read("livepatch_test", "transition") == "0"


def test_stalled_unload_is_reversed_and_the_patch_stays(fake) -> None:
    fake.add_patch("livepatch_test")
    fake.add_task(SLEEPER, state=-1)
    with pytest.raises(TransitionTimeout) as caught:
        actions.unload(fake.host, "livepatch_test", fake.timing(timeout=4))
    assert "the patch stays active, as before" in str(caught.value)
    assert fake.read("livepatch_test", "enabled") == "1"
    assert fake.read("livepatch_test", "transition") == "0"
    assert fake.ran("rmmod") == []


def test_stuck_reversal_is_reported_and_module_kept(fake, tmp_path) -> None:
    fake.add_task(SLEEPER)
    stubborn = FakeTask(50, 51, "stubborn", ["other_wait+0x1/0x2"], stuck=True)

    def block_both_directions(seconds: float) -> None:
        # once the reversal is asked for, a task that had switched gets stuck
        if fake.read("livepatch_test", "enabled") == "0" and stubborn not in fake.tasks:
            fake.add_task(stubborn, state=1)
        FakeKernel.tick(fake, seconds)

    timing = fake.timing(timeout=3)
    timing = type(timing)(**{**timing.__dict__, "sleep": block_both_directions})
    with pytest.raises(TransitionStuck) as caught:
        actions.load(fake.host, str(make_ko(tmp_path)), timing)
    assert caught.value.exit_code == 4
    assert "kpatch force livepatch_test --confirm" in str(caught.value)
    assert "task 50/51 (stubborn) has not switched yet" in caught.value.details
    assert fake.ran("rmmod") == []


def test_ctrl_c_during_a_transition_reverses_it(fake, tmp_path) -> None:
    fake.add_task(SLEEPER)

    def interrupt(progress: Progress) -> None:
        if not progress.reversing and progress.elapsed >= 2:
            raise KeyboardInterrupt

    with pytest.raises(Interrupted) as caught:
        actions.load(fake.host, str(make_ko(tmp_path)), fake.timing(timeout=30), interrupt)
    assert caught.value.exit_code == 130
    assert not (fake.host.sys_module / "livepatch_test").exists()


def test_cli_exit_code_and_message_on_timeout(cli, fake, tmp_path) -> None:
    fake.add_task(SLEEPER)
    code, out, err = cli("load", "--timeout", "2", str(make_ko(tmp_path)))
    assert code == 3
    assert out == ""
    lines = err.splitlines()
    assert any(line.startswith("kpatch: error: enabling livepatch 'livepatch_test' timed out")
               for line in lines)
    assert "  task 42 (sleeper) has not switched yet" in lines
    assert "      sleeper_wait+0x2a/0x50 [sleeper]" in lines


# --- the live view --------------------------------------------------------------------

class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def _progress(elapsed: float, tasks=(), reversing: bool = False) -> Progress:
    return Progress("livepatch_test", True, reversing, elapsed, 60.0, tuple(tasks))


TASK = Task(42, 42, "sleeper", 0, ("sleeper_wait+0x2a/0x50 [sleeper]", "kthread+0xe8/0x110"))


def test_plain_view_prints_only_changes() -> None:
    stream = io.StringIO()
    with _ProgressView(stream) as view:
        view.update(_progress(0.2))
        view.update(_progress(0.4))
        view.update(_progress(3.0, [TASK]))
        view.update(_progress(4.0, [TASK]))
        view.update(_progress(60.0, [TASK], reversing=True))
    text = stream.getvalue()
    assert "\x1b" not in text
    assert text.count("enabling livepatch 'livepatch_test'") == 3
    assert text.count("task 42 (sleeper) has not switched yet") == 2
    assert "reversing: enabling" in text


def test_tty_view_redraws_in_place_and_clears() -> None:
    stream = _Tty()
    with _ProgressView(stream) as view:
        view.update(_progress(1.0))
        view.update(_progress(3.0, [TASK]))
    text = stream.getvalue()
    assert "\x1b[1A\r\x1b[J" in text          # one-line block replaced
    assert text.endswith("\x1b[5A\r\x1b[J")   # header, count, task, 2 frames erased
    assert "sleeper_wait+0x2a/0x50 [sleeper]" in text


def test_patch_freed_while_its_status_is_read_is_gone_not_a_crash(fake, monkeypatch) -> None:
    # Seen in the VM: after `enabled` went to 0 the kernel freed the patch
    # between listing its directory and reading its object directories.
    import shutil

    from pykpatch.manage import sysfs

    directory = fake.add_patch("livepatch_test", enabled=0, transition=1)
    real_read_object = sysfs._read_object

    def freed_meanwhile(path):
        shutil.rmtree(directory)
        return real_read_object(path)

    monkeypatch.setattr(sysfs, "_read_object", freed_meanwhile)
    live = sysfs.LiveKernel(fake.host)
    assert live.find_status("livepatch_test") is None
