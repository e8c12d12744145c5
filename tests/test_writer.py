"""The MLflow writer against real stores: a SQLite tracking store for what arrives, and a
loopback port where nothing listens for a server that is down (connection refused, as
after a crash). No MLflow call is mocked."""

from __future__ import annotations

import json
import math
import time

import pytest
from mlflow.exceptions import MlflowException, RestException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.tracking import MlflowClient

from gradtune import cli, writer
from gradtune import spool as spool_mod
from gradtune.writer import Point, Writer
from tests._servers import free_port

# Values a diverging trial reports, and finite ones that must come back bit for bit.
AWKWARD = [math.nan, math.inf, -math.inf, 0.1 + 0.2, 1e-310, 1.7976931348623157e308, -2.5]


@pytest.fixture(autouse=True)
def restore_mlflow_env(monkeypatch):
    """The writer turns MLflow's HTTP retries down for the whole process; undo that after
    each test so other tests' clients keep MLflow's defaults."""
    for name in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR",
                 "MLFLOW_HTTP_REQUEST_TIMEOUT"):
        monkeypatch.setenv(name, "unset-by-test")
        monkeypatch.delenv(name)


@pytest.fixture(scope="module")
def sqlite_store(tmp_path_factory):
    # One database for the module: MLflow takes seconds to create its tables.
    uri = f"sqlite:///{tmp_path_factory.mktemp('store') / 'mlflow.db'}"
    return uri, MlflowClient(uri)


@pytest.fixture
def store(sqlite_store, request):
    """(URI, client, a fresh experiment of this test)."""
    uri, client = sqlite_store
    return uri, client, client.create_experiment(request.node.name)


def dead_uri() -> str:
    return f"http://127.0.0.1:{free_port()}"  # nothing listens: refused at once


def put_trial(w: Writer, exp_id: str, key: str, name: str, reports: int, values=None) -> None:
    w.put("create", key, experiment_id=exp_id, name=name, start_time=1000, tags={"t": name})
    w.put("params", key, params={"lr": "0.1"})
    for step in range(1, reports + 1):
        value = values[step - 1] if values else step / 10
        w.put("metrics", key, points=[Point("loss", value, 2000 + step, step),
                                      Point("grad_norm", 2 * step, 2000 + step, step)])
    w.put("tags", key, tags={"gradtune.outcome": "pruned"})
    w.put("tags", key, tags={"gradtune.outcome": "completed"})  # the later one stands
    w.put("end", key, status="FINISHED", end_time=9000)


@pytest.mark.slow
def test_metrics_wait_to_be_batched_but_not_in_front_of_an_end(store, tmp_path):
    uri, client, exp_id = store
    w = Writer(uri, tmp_path / "spool.jsonl", linger_s=30.0)
    key = w.new_key()
    w.start()
    w.put("create", key, experiment_id=exp_id, name="r", start_time=1000, tags={})
    w.put("metrics", key, points=[Point("loss", 1.0, 2000, 1)])
    time.sleep(1.0)
    (run,) = client.search_runs([exp_id])
    assert run.data.metrics == {}  # lingering, for others to join its request
    w.put("end", key, status="FINISHED", end_time=9000)  # pulls the queue along
    deadline = time.monotonic() + 10
    while client.get_run(run.info.run_id).info.status != "FINISHED" and time.monotonic() < deadline:
        time.sleep(0.1)
    run = client.get_run(run.info.run_id)
    assert run.info.status == "FINISHED" and run.data.metrics == {"loss": 1.0}
    assert w.close(5) == 0


def runs_by_name(client, exp_id):
    return {r.info.run_name: r for r in client.search_runs([exp_id], max_results=100)}


@pytest.mark.slow
def test_records_arrive_in_order_and_metrics_are_batched(store, tmp_path):
    uri, client, exp_id = store
    w = Writer(uri, tmp_path / "spool.jsonl", linger_s=0.0)
    a, b = w.new_key(), w.new_key()
    # Two trials reporting in turn, all queued before the thread starts: the writer sees
    # one backlog and must send each run's metrics in one request.
    w.put("create", a, experiment_id=exp_id, name="a", start_time=1000, tags={})
    w.put("create", b, experiment_id=exp_id, name="b", start_time=1000, tags={})
    for step in range(1, 21):
        for key in (a, b):
            w.put("metrics", key, points=[Point("loss", step / 10, 2000 + step, step)])
    for key in (a, b):
        w.put("tags", key, tags={"gradtune.outcome": "pruned"})
        w.put("tags", key, tags={"gradtune.outcome": "completed"})
        w.put("end", key, status="KILLED", end_time=9000)
    w.put("text", a, path="peer.txt", text=f"my peer is {b}")
    w.start()
    assert w.close(30) == 0 and w.dropped == 0
    # 2 creates + 2 batches (a's and b's metrics, with a's two tag records: one log_batch
    # per run) + a's end + b's two tag records in one + b's end + 1 text
    assert w.requests == 8

    runs = runs_by_name(client, exp_id)
    for name in ("a", "b"):
        run = runs[name]
        history = client.get_metric_history(run.info.run_id, "loss")
        assert [(m.step, m.value, m.timestamp) for m in history] == [
            (s, s / 10, 2000 + s) for s in range(1, 21)]
        assert run.data.tags["gradtune.outcome"] == "completed"
        assert run.info.status == "KILLED" and run.info.end_time == 9000
        assert run.data.tags[writer.KEY_TAG] in (a, b)
    # Run keys in a text become the MLflow run ids when it is sent.
    peer = open(client.download_artifacts(runs["a"].info.run_id, "peer.txt", str(tmp_path))).read()
    assert peer == f"my peer is {runs['b'].info.run_id}"
    assert not (tmp_path / "spool.jsonl").exists()  # the store never went away


@pytest.mark.slow
def test_a_down_server_spools_everything_after_the_budget(store, tmp_path):
    _, _, exp_id = store
    spool = tmp_path / "spool.jsonl"
    w = Writer(dead_uri(), spool, outage_s=0.5, linger_s=0.0)
    w.start()
    key = w.new_key()
    put_trial(w, exp_id, key, "t", reports=3)
    deadline = time.monotonic() + 10
    while not spool.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert spool.exists(), "nothing spooled after the outage budget"
    w.put("end", key, status="FAILED", end_time=9999)  # after spooling: appended too
    assert w.close(1.0) == 9
    lines = [json.loads(line) for line in spool.read_text().splitlines()]
    assert lines[0]["spool"] == 1 and lines[0]["tracking_uri"] == w.uri
    records = [line for line in lines if "op" in line]
    assert [r["seq"] for r in records] == list(range(1, 10))
    assert [r["op"] for r in records] == ["create", "params", "metrics", "metrics", "metrics",
                                          "tags", "tags", "end", "end"]
    assert not any("acked" in line for line in lines)


@pytest.mark.slow
def test_nan_and_inf_round_trip_through_the_spool(store, tmp_path):
    uri, client, exp_id = store
    spool = tmp_path / "spool.jsonl"
    w = Writer(dead_uri(), spool, outage_s=0.0)
    w.start()
    put_trial(w, exp_id, w.new_key(), "spooled", reports=len(AWKWARD), values=AWKWARD)
    assert w.close(0.5) > 0

    # The file is strict JSON (no bare NaN/Infinity), and reads back to the same floats.
    def refuse(token):
        raise AssertionError(f"non-strict JSON token {token}")

    for line in spool.read_text().splitlines():
        json.loads(line, parse_constant=refuse)
    _, _, records = spool_mod.read(spool)
    read = [p.value for r in records if r["op"] == "metrics" for p in r["points"] if p.key == "loss"]
    assert len(read) == len(AWKWARD)
    for got, want in zip(read, AWKWARD):
        assert (math.isnan(got) and math.isnan(want)) or (got == want and type(got) is float)

    # Replayed into MLflow, the values are what MLflow keeps when they are logged directly.
    assert writer.replay(spool, uri) == (len(records), 0)
    direct = client.create_run(exp_id, run_name="direct").info.run_id
    for step, value in enumerate(AWKWARD, 1):
        client.log_metric(direct, "loss", value, step=step)
    replayed = runs_by_name(client, exp_id)["spooled"].info.run_id
    got = [m.value for m in client.get_metric_history(replayed, "loss")]
    want = [m.value for m in client.get_metric_history(direct, "loss")]
    assert [repr(v) for v in got] == [repr(v) for v in want]  # repr: NaN == NaN, bit-exact floats


@pytest.mark.slow
def test_replay_is_idempotent(store, tmp_path):
    uri, client, exp_id = store
    spool = tmp_path / "spool.jsonl"
    w = Writer(dead_uri(), spool, outage_s=0.0)
    w.start()
    a, b = w.new_key(), w.new_key()
    put_trial(w, exp_id, a, "a", reports=5)
    put_trial(w, exp_id, b, "b", reports=4, values=[math.nan, math.inf, 1.0, 2.0])
    w.put("text", a, path="summary.json", text=json.dumps({"a": a, "b": b}))
    total = w.close(0.5)
    assert total == 10 + 9 + 1  # create, params, reports, 2 tags, end; then the text

    assert writer.replay(spool, uri) == (total, 0)
    acked = spool.read_text()

    def snapshot():
        runs = runs_by_name(client, exp_id)
        return {name: (run.info.status, run.data.tags["gradtune.outcome"],
                       [(m.step, repr(m.value)) for m in client.get_metric_history(run.info.run_id, "loss")])
                for name, run in runs.items()}

    once = snapshot()
    assert sorted(once) == ["a", "b"] and len(once["a"][2]) == 5 and len(once["b"][2]) == 4

    # Everything acknowledged: a second sync sends nothing.
    assert writer.replay(spool, uri) == (0, 0)
    # A crash after sending but before the acks were written: every record goes again,
    # the runs are found by their key instead of created twice, metric points are not doubled.
    spool.write_text("".join(line + "\n" for line in acked.splitlines() if '"acked"' not in line))
    assert writer.replay(spool, uri) == (total, 0)
    assert snapshot() == once
    # Acks up to a record: only what follows it is sent.
    lines = acked.splitlines()
    last_acks = [i for i, line in enumerate(lines) if '"acked"' in line][-3:]
    spool.write_text("".join(line + "\n" for i, line in enumerate(lines) if i not in last_acks))
    kept = max(json.loads(line)["acked"] for i, line in enumerate(lines)
               if '"acked"' in line and i not in last_acks)
    assert writer.replay(spool, uri) == (total - kept, 0) and total - kept >= 3
    assert snapshot() == once
    summary = client.download_artifacts(runs_by_name(client, exp_id)["a"].info.run_id,
                                         "summary.json", str(tmp_path))
    ids = {name: run.info.run_id for name, run in runs_by_name(client, exp_id).items()}
    assert json.loads(open(summary).read()) == ids


@pytest.mark.slow
def test_a_record_the_store_refuses_is_dropped_and_the_rest_goes_on(store, tmp_path):
    uri, client, exp_id = store
    w = Writer(uri, tmp_path / "spool.jsonl", linger_s=0.0)
    key = w.new_key()
    w.put("create", key, experiment_id=exp_id, name="r", start_time=1000, tags={})
    w.put("params", key, params={"lr": "0.1"})
    w.put("params", key, params={"lr": "0.2"})  # MLflow params are immutable: 400
    w.put("metrics", key, points=[Point("loss", 1.0, 2000, 1)])
    w.put("metrics", "run-" + "0" * 32, points=[Point("loss", 1.0, 2000, 1)])  # no such run
    w.start()
    assert w.close(30) == 0
    assert w.dropped == 2
    run = runs_by_name(client, exp_id)["r"]
    assert run.data.params["lr"] == "0.1" and run.data.metrics["loss"] == 1.0


@pytest.mark.slow
def test_a_run_s_params_tags_and_metrics_go_in_one_request_unless_refused(store, tmp_path):
    uri, client, exp_id = store
    w = Writer(uri, tmp_path / "spool.jsonl", linger_s=0.0)
    a, b = w.new_key(), w.new_key()
    for key, name in ((a, "a"), (b, "b")):
        w.put("create", key, experiment_id=exp_id, name=name, start_time=1000, tags={})
        w.put("params", key, params={"lr": "0.1"})
        w.put("tags", key, tags={"node": "n1"})
        w.put("metrics", key, points=[Point("loss", 1.0, 2000, 1)])
    w.start()
    assert w.close(30) == 0 and w.dropped == 0
    assert w.requests == 4  # per run: a create, then one log_batch
    w = Writer(uri, tmp_path / "spool.jsonl", linger_s=0.0)
    run_id = runs_by_name(client, exp_id)["a"].info.run_id
    w.adopt(run_id)
    w.put("metrics", run_id, points=[Point("loss", 2.0, 2001, 2)])
    w.put("tags", run_id, tags={"node": "n2", "bad key?!": "x"})  # an invalid tag name: 400
    w.put("metrics", run_id, points=[Point("loss", 3.0, 2002, 3)])
    w.start()
    assert w.close(30) == 0
    # The store refused the merged request; each record was sent alone: only the bad one lost.
    assert w.dropped == 1
    run = client.get_run(run_id)
    assert [m.value for m in client.get_metric_history(run_id, "loss")] == [1.0, 2.0, 3.0]
    assert run.data.params["lr"] == "0.1" and run.data.tags["node"] == "n1"


@pytest.mark.parametrize("exc, retry", [
    (ConnectionRefusedError(), True),
    (TimeoutError(), True),
    (MlflowException("API request to ... failed with exception Connection refused"), True),
    (RestException({"error_code": "TEMPORARILY_UNAVAILABLE", "message": "busy"}), True),
    (RestException({"error_code": "RESOURCE_EXHAUSTED", "message": "429"}), True),
    (MlflowException("bad", error_code=INVALID_PARAMETER_VALUE), False),
    (RestException({"error_code": "PERMISSION_DENIED", "message": "no"}), False),
    (LookupError("never created"), False),
])
def test_what_is_retried(exc, retry):
    assert writer.transient(exc) is retry


def test_backoff_doubles_to_a_cap_with_jitter():
    first, cap = writer.BACKOFF_S
    waits = [[writer.backoff(n) for _ in range(200)] for n in range(1, 12)]
    assert all(first <= w <= 2 * first for w in waits[0])
    assert all(cap / 2 <= w <= cap for w in waits[-1])
    assert len({round(w, 6) for w in waits[-1]}) > 100  # jittered, not in step


@pytest.mark.slow
def test_sync_command_sends_a_spool_and_says_so(store, tmp_path, capsys):
    uri, client, exp_id = store
    storage = tmp_path / "results" / "sweep-x"
    storage.mkdir(parents=True)
    spool = storage / writer.SPOOL_NAME
    w = Writer(dead_uri(), spool, outage_s=0.0)
    w.start()
    put_trial(w, exp_id, w.new_key(), "late", reports=2)
    w.close(0.5)
    # The dead server the spool names: one line, exit 2, records kept.
    assert cli.main(["sync", str(spool), "--timeout", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "7 still pending" in err
    # Given the live store, a storage directory is searched for spools.
    assert cli.main(["sync", str(tmp_path / "results"), "--tracking-uri", uri]) == 0
    assert capsys.readouterr().out.strip() == f"{spool}: 7 records sent to {uri}"
    assert len(client.get_metric_history(runs_by_name(client, exp_id)["late"].info.run_id, "loss")) == 2
    assert cli.main(["sync", str(spool), "--tracking-uri", uri]) == 0
    assert capsys.readouterr().out.strip() == f"{spool}: nothing to send"
    assert cli.main(["sync", str(tmp_path / "nowhere")]) == 2


def test_a_server_down_at_start_fails_in_seconds_in_one_line(in_tmp, capsys, monkeypatch):
    uri = dead_uri()
    started = time.monotonic()
    assert cli.main(["sweep", "--tracking-uri", uri, "--trials", "1"]) == 2
    elapsed = time.monotonic() - started
    err = capsys.readouterr().err
    assert err.startswith(f"error: tracking.uri {uri}: cannot start the MLflow run (")
    assert err.count("\n") == 1
    assert elapsed < 5, f"{elapsed:.1f}s"
    assert not any(in_tmp.rglob(writer.SPOOL_NAME))
