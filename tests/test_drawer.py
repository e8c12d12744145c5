"""The drawer: reports drawn in a process of its own, which a death or a Ctrl-C does not
turn into a lost report."""

from __future__ import annotations

import os
import signal
import time
from concurrent.futures import Future
from pathlib import Path

import pytest

from gradtune import drawer, sweep
from tests import _tables

pytestmark = pytest.mark.slow  # a process that imports the plotting libraries: seconds


@pytest.fixture(autouse=True)
def _own_drawer():
    drawer.stop()
    yield
    drawer.stop()


def _pid() -> int:
    drawer.start()
    assert drawer._proc is not None
    return drawer._proc.pid


def test_draw_writes_the_report_in_another_process(tmp_path):
    pid = _pid()
    assert pid != os.getpid()
    before = time.monotonic()
    paths, ended = drawer.draw(_tables.sweep(6), tmp_path / "out").result(timeout=60)
    assert [Path(p).name for p in paths][-2:] == ["report.html", "optuna-study.jsonl"]
    assert all(Path(p).is_file() for p in paths)
    assert before < ended < time.monotonic()  # one clock for both processes
    assert _pid() == pid  # the same process serves the next sweep


def test_a_ctrl_c_does_not_stop_the_drawer(tmp_path):
    pid = _pid()
    assert os.getsid(pid) == pid  # a session of its own: the terminal's Ctrl-C misses it
    drawer.draw(_tables.sweep(3), tmp_path / "a").result(timeout=60)
    os.kill(pid, signal.SIGINT)  # and one sent to it is ignored
    drawer.draw(_tables.sweep(3), tmp_path / "b").result(timeout=60)
    assert (tmp_path / "b" / "report.html").is_file() and _pid() == pid


def test_a_killed_drawer_says_so_and_is_replaced(tmp_path):
    pid = _pid()
    os.kill(pid, signal.SIGKILL)
    drawer._proc.wait(10)
    # the dead process is noticed at the next request: a new one answers it
    paths, _ = drawer.draw(_tables.sweep(3), tmp_path).result(timeout=60)
    assert _pid() != pid and (tmp_path / "report.html").is_file()


def test_dying_while_drawing_raises_drawer_error(tmp_path):
    pid = _pid()
    future = drawer.draw(_tables.sweep(24), tmp_path)
    time.sleep(0.2)  # the request is on its way or being drawn
    os.kill(pid, signal.SIGKILL)
    try:
        future.result(timeout=60)
    except drawer.DrawerError as exc:
        assert "ended before it answered" in str(exc)
    else:  # it drew the report in 0.2 s: this machine was too quick for the test's kill
        pytest.skip("the report was drawn before the kill")


def test_a_failing_report_raises_with_the_drawers_traceback(tmp_path):
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    with pytest.raises(RuntimeError, match="(?s)report's process failed:.*FileExistsError"):
        drawer.draw(_tables.sweep(3), blocked).result(timeout=60)
    assert drawer._proc is not None and drawer._proc.poll() is None  # it goes on


def test_the_sweep_draws_in_the_driver_when_the_drawer_died(tmp_path):
    swept = _tables.sweep(3)
    failed: Future = Future()
    failed.set_exception(drawer.DrawerError("gone"))
    started = time.monotonic()
    folder, seconds, ended = sweep._report_result((swept, failed), str(tmp_path / "here"), started, started)
    assert folder == str(tmp_path / "here") and (tmp_path / "here" / "report.html").is_file()
    assert 0 < seconds and ended > started


def test_a_table_that_cannot_be_sent_raises_drawer_error_and_leaves_the_drawer_working(tmp_path):
    swept = _tables.sweep(3)
    swept.rows[0].params["knob"] = lambda: None  # not picklable
    with pytest.raises(drawer.DrawerError, match="could not be sent"):
        drawer.draw(swept, tmp_path / "a").result(timeout=60)
    drawer.draw(_tables.sweep(3), tmp_path / "b").result(timeout=60)
    assert (tmp_path / "b" / "report.html").is_file()


def test_stop_ends_the_process():
    pid = _pid()
    proc = drawer._proc
    drawer.stop()
    assert proc is not None and proc.poll() is not None and drawer._proc is None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
