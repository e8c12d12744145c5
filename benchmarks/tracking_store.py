"""Benchmark: what one ``MlflowClient.log_batch`` costs on a SQLite tracking store, per
request and per metric point, on an idle machine and with every core busy (as during a
sweep, when the writer's thread shares the cores with the trials).

The CPU time of the calling thread (``time.thread_time``) is what gradtune's summary counts
for its writer; wall time is printed beside it. "Busy" starts one spinning process per core
(killed by PID at the end).

    python benchmarks/tracking_store.py [--repeats 20]

Prints a table, then one JSON line: ``request_ms`` and ``point_us`` (a least-squares fit of
CPU time against points per request), idle and busy.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

SIZES = (1, 12, 60, 120, 360, 1000)  # points per request; a report of the quickstart is ~9-12


def measure(client: MlflowClient, experiment_id: str, repeats: int) -> list[tuple[int, float, float]]:
    """(points, CPU ms per request, wall ms per request) for each size, on a fresh run."""
    rows = []
    for n in SIZES:
        run_id = client.create_run(experiment_id).info.run_id
        step, cpu, wall = 0, 0.0, 0.0
        for i in range(repeats):
            points = [Metric(f"k{j % 12}", 0.5 + i, 1000 + i, step + j // 12) for j in range(n)]
            step += n // 12 + 1
            c, w = time.thread_time(), time.perf_counter()
            client.log_batch(run_id, metrics=points)
            cpu += time.thread_time() - c
            wall += time.perf_counter() - w
        rows.append((n, cpu / repeats * 1e3, wall / repeats * 1e3))
    return rows


def fit(rows: list[tuple[int, float, float]]) -> tuple[float, float]:
    """Per-request ms and per-point us: least squares of CPU ms against points."""
    slope, intercept = statistics.linear_regression([r[0] for r in rows], [r[1] for r in rows])
    return intercept, slope * 1e3


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=20)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        client = MlflowClient(f"sqlite:///{tmp}/mlflow.db")
        experiment_id = client.create_experiment("store-benchmark")
        results = {}
        for load in ("idle", "busy"):
            spinners = []
            if load == "busy":
                spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
                            for _ in range(os.cpu_count() or 1)]
                time.sleep(0.5)
            try:
                rows = measure(client, experiment_id, args.repeats)
            finally:
                for proc in spinners:
                    proc.kill()
                    proc.wait()
            results[load] = (rows, fit(rows))
    print("| load | points | CPU ms/request | wall ms/request | CPU us/point |")
    print("| --- | --- | --- | --- | --- |")
    for load, (rows, _) in results.items():
        for n, cpu, wall in rows:
            print(f"| {load} | {n} | {cpu:.2f} | {wall:.2f} | {cpu / n * 1e3:.1f} |")
    summary = {load: {"request_ms": round(r, 2), "point_us": round(pt, 1)} for load, (_, (r, pt)) in results.items()}
    print(json.dumps({"benchmark": "tracking_store", "repeats": args.repeats, **summary}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
