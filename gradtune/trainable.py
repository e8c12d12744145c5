"""The Ray Tune entry of a trial: Tune's reports and checkpoints around
:func:`gradtune.trial.train`.

The driver only names :func:`trainable` (Tune pickles it by reference); torch and the
training loop are imported inside it, on the worker that runs the trial, so the driver
never pays for importing torch (seconds at every sweep's start).
"""

from __future__ import annotations

import tempfile
from typing import Any


def trainable(config: dict[str, Any], spec_data: dict[str, Any], parallel_seeds: bool = False) -> None:
    """The Ray Tune function trainable: ``tune.with_parameters(trainable, spec_data=...)``.
    Reports carry ``node_id``; every ``training.checkpoint_every`` steps a report carries
    a checkpoint; a retried trial goes on from the last checkpoint it reported.
    ``search.seeds`` > 1: :func:`gradtune.multiseed.train`, with ``parallel_seeds`` seeds 1
    to N-1 in actors of their own (the trial's placement group has a bundle per seed).
    ``resources.workers`` > 1: :func:`gradtune.rankactor.train`, this process rank 0 of a
    data-parallel job whose other ranks are actors in the trial's placement group."""
    import logging

    import ray
    import torch
    from ray import tune

    from gradtune import checkpoint, multiseed, outcome, trial
    from gradtune.spec import SweepSpec

    # Ray logs "Checkpoint successfully created at ..." at INFO for every checkpoint, and
    # forwards each line to the driver's terminal: dozens a trial, saying nothing.
    logging.getLogger("ray.train._internal.storage").setLevel(logging.WARNING)
    spec = SweepSpec.model_validate(spec_data)
    torch.set_num_threads(max(1, int(spec.resources.cpu)))
    node_id = ray.get_runtime_context().get_node_id()

    def report(metrics: dict[str, Any]) -> None:
        tune.report({**metrics, outcome.NODE_ID: node_id})

    def save(metrics: dict[str, Any], state: dict[str, Any]) -> None:
        # Written on local disk first; Tune copies it into the sweep's storage before
        # report returns, and keeps the last few (CheckpointConfig in sweep.run).
        with tempfile.TemporaryDirectory(prefix="gradtune-checkpoint-") as directory:
            checkpoint.save(state, directory)
            found = tune.Checkpoint.from_directory(directory)
            found.set_metadata({"step": state["step"], "healthy_step": state["healthy_step"]})
            tune.report({**metrics, outcome.NODE_ID: node_id}, checkpoint=found)

    resume = None
    latest = tune.get_checkpoint()  # a retry: the last checkpoint the trial reported
    if latest is not None:
        with latest.as_directory() as directory:
            resume = checkpoint.load(directory)
    if spec.resources.workers > 1:  # one trial, N ranks: this process is rank 0
        from gradtune import rankactor

        rankactor.train(spec, config, report, save=save, resume=resume)
        return
    # search.seeds > 1: the seeds of the configuration in lockstep, one aggregated report.
    if spec.search.seeds == 1:
        trial.train(spec, config, report, save=save, resume=resume)
        return
    remote = None
    if parallel_seeds:
        from gradtune.seedactor import RemoteSeed

        remote = RemoteSeed
    multiseed.train(spec, config, report, save=save, resume=resume, remote=remote)
