"""The shared engine (semrec.train.engine + launch) on a toy family, 2 real Ray Train workers: a deterministic
error on one rank stops every rank at the same step, is raised on the driver with its own class and message,
and is not retried (Ray Train would rerun the whole worker group max_failures times and fail the same way)."""

import sys

import pytest
from ray import cloudpickle  # the pickler Ray ships functions with

from semrec.config.settings import TrainSettings
from semrec.errors import InputError
from semrec.eval.metrics import NonFiniteScores
from semrec.train.launch import launch, run_state


cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import this test module


def _toy_loop(config: dict) -> None:
    """Ray Train worker entry point: linear regression, 4 steps an epoch; rank 1 fails where
    ``config["fail"]`` says."""
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
def test_a_deterministic_error_on_one_rank_stops_the_run_once(ray_local, tmp_path, fail, error, message):
    train = TrainSettings(epochs=2, patience=5, num_workers=2, cpus_per_worker=0.5, max_failures=3)
    cfg = {"train": {**train.model_dump(), "threads": 1}, "fail": fail, "attempts": str(tmp_path / "attempts")}
    run = lambda: launch(_toy_loop, cfg, train, tmp_path / "runs", "toy", True, "score")  # noqa: E731
    if error is None:  # the same family without a failure finishes: the failure paths are what differs
        assert run().metrics["done"] and "failed" not in run_state(tmp_path / "runs" / "toy")
    else:
        with pytest.raises(error) as caught:
            run()
        assert str(caught.value) == message
        assert run_state(tmp_path / "runs" / "toy")["failed"] == error.__name__  # a rerun starts afresh
    # one worker group, started once: not retried (a family that failed to load builds no model)
    assert sorted((tmp_path / "attempts").read_text().split()) == (["0"] if fail == "family" else ["0", "1"])
