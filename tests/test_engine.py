"""The shared engine (semrec.train.engine + launch) on a toy family, 2 real Ray Train workers: a deterministic
error on one rank stops every rank at the same step, is raised on the driver with its own class and message,
and is not retried (Ray Train would rerun the whole worker group max_failures times and fail the same way)."""

import sys

import pytest
from ray import cloudpickle  # the pickler Ray ships functions with

from semrec.config.settings import TrainSettings
from semrec.errors import InputError
from semrec.eval.metrics import NonFiniteScores
from semrec.train.engine import checkpoint_metas, lr_at
from semrec.train.launch import launch, run_state


cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import this test module


def _toy_loop(config: dict) -> None:
    """Ray Train worker entry point: linear regression, 4 steps an epoch; rank 1 fails where
    ``config["fail"]`` says."""
    from pathlib import Path

    import ray.train
    import torch
    from torch import nn

    from semrec.errors import InputError
    from semrec.eval.metrics import NonFiniteScores
    from semrec.train.engine import fit

    class Toy:
        metric = "score"

        def __init__(self):  # a family loads its data here
            if config["fail"] == "family" and ray.train.get_context().get_world_rank() == 1:
                raise InputError("items.parquet: item_id 900 is outside the catalogue 1..800")

        def build(self):
            with open(config["attempts"], "a") as f:  # one line per rank per worker-group start
                f.write(f"{ray.train.get_context().get_world_rank()}\n")
            return nn.Linear(1, 1)

        def batches(self, epoch, rank, world):
            crashed = Path(config["attempts"] + ".crashed")
            if config["fail"] == "crash" and epoch == 1 and not crashed.exists():
                crashed.touch()  # a lost process, once: not a SemrecError, so the run is not agreed failed
                raise RuntimeError("simulated crash")
            for step in range(4):
                if config["fail"] == "batch" and rank == 1 and epoch == 1 and step == 2:
                    raise InputError("shard 1, row 7: item id 99 outside the catalogue")
                yield torch.ones(8, 1)

        def empty_batch(self):
            return torch.zeros(0, 1)

        def size(self, batch):
            return len(batch)

        def loss(self, model, batch):
            return (model(batch) - 1).pow(2).sum()

        def evaluate(self, model, split, rank, world, final):
            if config["fail"] == "evaluate" and rank == 1 and final:
                raise NonFiniteScores("test scores: non-finite (NaN/inf) for row 3")
            return {"score": 1.0, "count": 1}

    ctx = ray.train.get_context()
    fit(Toy, config["train"], ctx.get_world_rank(), ctx.get_world_size())


@pytest.mark.parametrize("fail, error, message", [
    ("family", InputError, "items.parquet: item_id 900 is outside the catalogue 1..800"),
    ("batch", InputError, "shard 1, row 7: item id 99 outside the catalogue"),
    ("evaluate", NonFiniteScores, "test scores: non-finite (NaN/inf) for row 3"),
    (None, None, None)])
def test_a_deterministic_error_on_one_rank_stops_the_run_once(ray_local, tmp_path, capfd, fail, error, message):
    train = TrainSettings(epochs=2, patience=5, num_workers=2, cpus_per_worker=0.5, max_failures=3)
    cfg = {"train": {**train.model_dump(), "threads": 1}, "fail": fail, "attempts": str(tmp_path / "attempts")}
    run = lambda: launch(_toy_loop, cfg, train, tmp_path / "runs", "toy", True, "score")  # noqa: E731
    if error is None:  # the same family without a failure finishes: the failure paths are what differs
        assert run().metrics["done"]
        state = run_state(tmp_path / "runs" / "toy")  # Ray Train recorded the final checkpoint: a rerun starts over
        assert state["done"] and "failed" not in state and "unrecorded" not in state
        # the in-process Ray has no dashboard, so Ray Train's placement-group cleaner cannot reach the State API;
        # its once-a-second warning is silenced in every worker (semrec.pipelines.worker_setup)
        assert "Failed to query Ray Train Controller actor state" not in capfd.readouterr().err
    else:
        with pytest.raises(error) as caught:
            run()
        assert str(caught.value) == message
        assert run_state(tmp_path / "runs" / "toy")["failed"] == error.__name__  # a rerun starts afresh
    # one worker group, started once: not retried (a family that failed to load builds no model)
    assert sorted((tmp_path / "attempts").read_text().split()) == (["0"] if fail == "family" else ["0", "1"])


def test_lr_schedules_warm_up_and_decay_as_documented():
    base = {"lr": 0.01, "epochs": 4}
    const = {**base, "lr_schedule": "constant", "warmup_steps": 4}
    assert [lr_at(const, s, 0) for s in (0, 1, 3, 100)] == pytest.approx([0.0025, 0.005, 0.01, 0.01])
    assert lr_at({**base, "lr_schedule": "constant", "warmup_steps": 0}, 0, 0) == 0.01  # the old default
    cos = {**base, "lr_schedule": "cosine", "warmup_steps": 0}
    assert [lr_at(cos, 9, e) for e in range(4)] == pytest.approx([0.01, 0.008535534, 0.005, 0.001464466])
    inv = {**base, "lr_schedule": "inverse_sqrt", "warmup_steps": 100}
    assert [lr_at(inv, s, 0) for s in (49, 99, 399, 9999)] == pytest.approx([0.005, 0.01, 0.005, 0.001])
    with pytest.raises(ValueError, match="lr_schedule"):
        TrainSettings(lr_schedule="linear")


def test_a_resumed_run_continues_the_schedule_from_its_global_step(ray_local, tmp_path):
    """In-process (num_workers 0) run of 4 steps an epoch, inverse_sqrt with 3 warm-up steps; the process dies
    at the start of epoch 2 and the rerun resumes from epoch 1's checkpoint: epoch 2's last step is global step
    7 (lr * sqrt(3 / 8)), not step 3 again."""
    train = TrainSettings(epochs=2, patience=5, num_workers=0, lr=0.1, lr_schedule="inverse_sqrt", warmup_steps=3)
    cfg = {"train": {**train.model_dump(), "threads": 1}, "fail": "crash", "attempts": str(tmp_path / "attempts")}
    with pytest.raises(Exception, match="simulated crash"):
        launch(_toy_loop, cfg, train, tmp_path / "runs", "toy", True, "score")
    assert [m["lr"] for m, _ in checkpoint_metas(tmp_path / "runs" / "toy")] == pytest.approx([0.1 * (3 / 4) ** 0.5])
    assert launch(_toy_loop, cfg, train, tmp_path / "runs", "toy", True, "score").metrics["done"]
    lrs = sorted((m["epoch"], m["lr"]) for m, _ in checkpoint_metas(tmp_path / "runs" / "toy"))
    assert lrs == [(0, pytest.approx(0.1 * (3 / 4) ** 0.5)), (1, pytest.approx(0.1 * (3 / 8) ** 0.5))]


def test_a_rerun_resumes_only_from_checkpoints_ray_train_recorded(tmp_path):
    """A worker run's checkpoint written but never recorded in Ray Train's snapshot (the job died in between)
    is not what Ray Train restores: run_state names the recorded one, or says none is left."""
    import json

    from semrec.train.engine import META_FILE, RAY_TRAIN_SNAPSHOT, STATE_FILE

    run = tmp_path / "run"

    def checkpoint(name: str, **meta):
        (run / name).mkdir(parents=True)
        (run / name / META_FILE).write_text(json.dumps(meta))
        (run / name / STATE_FILE).write_bytes(b"")

    assert run_state(run) is None
    checkpoint("checkpoint_a", epoch=0)
    assert run_state(run) == {"epoch": 0, "unrecorded": True}  # a worker rerun starts over
    assert run_state(run, in_process=True) == {"epoch": 0}  # in-process resumes from any complete checkpoint
    (run / RAY_TRAIN_SNAPSHOT).write_text(json.dumps({"checkpoints": [str(run / "checkpoint_a")]}))
    checkpoint("checkpoint_b", epoch=1)  # written, not yet recorded
    assert run_state(run) == {"epoch": 0}
    assert run_state(run, in_process=True) == {"epoch": 1}
    checkpoint("checkpoint_c", epoch=1, failed="InputError")  # a deterministic error: never resumed
    assert run_state(run)["failed"] == "InputError"
