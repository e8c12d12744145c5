"""Why a trial failed, in one line, from the exceptions Ray Tune hands over (no Ray session:
Ray's exception classes are plain Python)."""

from __future__ import annotations

import traceback
from types import SimpleNamespace

import pytest
from ray import cloudpickle
from ray import exceptions as rex

from gradtune import failure
from gradtune.outcome import MAX_ERROR

SIGKILL_DETAIL = (
    "The actor died unexpectedly before finishing this task.\n\tclass_name: ImplicitFunc\n"
    "\tactor_id: 1f2e\n\tpid: 4242\n\tip: 127.0.0.1\nThe actor is dead because its worker process "
    "has died. Worker exit type: SYSTEM_ERROR Worker exit detail: Worker unexpectedly exits with a "
    "connection error code 2. End of file. There are some potential root causes. (1) The process is "
    "killed by SIGKILL by OOM killer due to high memory usage."
)
OOM_DETAIL = (
    "The actor died unexpectedly before finishing this task.\n\tclass_name: ImplicitFunc\n"
    "The actor is dead because its worker process has died. Worker exit type: NODE_OUT_OF_MEMORY "
    "Worker exit detail: Task was killed due to the node running low on memory.\nMemory on the node "
    "(IP: 10.0.0.1, ID: abc) where the task was running was 60.1GB / 62.0GB (0.97)"
)


def task_error(cause: BaseException) -> rex.RayTaskError:
    try:
        raise cause
    except BaseException as exc:  # noqa: BLE001 - any cause, as Ray wraps it
        return rex.RayTaskError("ImplicitFunc.train", traceback.format_exc(), exc).as_instanceof_cause()


def test_an_exception_in_the_trial_is_its_type_and_message():
    assert failure.reason(task_error(ValueError("boom at batch 12"))) == "ValueError: boom at batch 12"
    assert failure.reason(task_error(KeyError("lr"))) == "KeyError: 'lr'"
    assert failure.reason(task_error(RuntimeError())) == "RuntimeError"
    assert failure.reason(RuntimeError("raised on the driver")) == "RuntimeError: raised on the driver"


def test_a_lost_worker_is_told_apart_from_an_exception():
    killed = failure.reason(rex.ActorDiedError())  # no context at all
    assert killed.startswith("worker died (ActorDiedError)")
    died = rex.RayActorError(error_msg=SIGKILL_DETAIL)
    line = failure.reason(died)
    assert line.startswith("worker died (RayActorError): Worker unexpectedly exits")
    assert "out of memory" not in line.split(":")[0]  # a SIGKILL is no evidence of OOM
    oom = failure.reason(rex.RayActorError(error_msg=OOM_DETAIL))
    assert oom.startswith("worker died (out of memory) (RayActorError): Task was killed due to the node running low")
    assert failure.reason(rex.OutOfMemoryError("node low")).startswith("worker died (out of memory)")
    assert failure.reason(rex.WorkerCrashedError()).startswith("worker died (WorkerCrashedError)")


def test_reasons_are_one_line_and_short():
    line = failure.reason(task_error(ValueError("x" * 5000 + "\nsecond line")))
    assert "\n" not in line and len(line) == MAX_ERROR and line.endswith("...")
    assert "\n" not in failure.reason(rex.RayActorError(error_msg=SIGKILL_DETAIL))
    assert failure.reason(None) == failure.NO_ERROR


def test_reason_from_the_text_alone():
    text = "Failure # 1 (occurred at 2025-01-01)\nray::ImplicitFunc.train()\nTraceback (most recent call last):\n" \
           '  File "x.py", line 3, in f\nmypkg.errors.DataError: shard 3 is empty\n'
    assert failure.reason_from_text(text) == "mypkg.errors.DataError: shard 3 is empty"
    assert failure.reason_from_text("something odd\n") == "something odd"
    assert failure.reason_from_text("") == failure.NO_ERROR


@pytest.mark.parametrize("pickled", [True, False])
def test_of_trial_reads_what_tune_kept(tmp_path, pickled):
    text = tmp_path / "error.txt"
    text.write_text("Failure # 1 (occurred at now)\n\x1b[36mray::ImplicitFunc.train()\x1b[39m\nTraceback ...\n"
                    "ValueError: boom\n")
    blob = tmp_path / "error.pkl"
    if pickled:
        blob.write_bytes(cloudpickle.dumps(task_error(ValueError("boom"))))
    trial = SimpleNamespace(error_file=str(text), pickled_error_file=str(blob))
    found = failure.of_trial(trial)
    assert found.reason == "ValueError: boom" and "Traceback" in found.details
    assert "ray::ImplicitFunc.train()\n" in found.details  # Ray's colour codes dropped
    nothing = failure.of_trial(SimpleNamespace(error_file=None, pickled_error_file=None))
    assert nothing == failure.Failure(failure.NO_ERROR, "")
