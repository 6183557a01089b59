"""train_ctr on the shared engine: models learn a synthetic click rule, the saved model loads with one
call, 2 workers with an uneven split, bad input."""

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

from semrec.data.io import write_table
from semrec.models.ctr.models import from_pretrained
from semrec.pipelines.train_ctr import main
from semrec.schemas import CTR_SAMPLES, encode_metadata

FIELDS, PER_FIELD = 4, 25


def _samples(path: Path, n: int, seed: int, width: int = FIELDS, label=None, n_features: int | None = None) -> None:
    """Clicks follow per-feature effects of fields 0-2 (the same in every file) plus noise."""
    rng = np.random.default_rng(seed)
    effect = np.random.default_rng(0).normal(size=(width, PER_FIELD))
    local = rng.integers(0, PER_FIELD, size=(n, width))
    x = local + np.arange(width) * PER_FIELD
    logit = 1.5 * (effect[0, local[:, 0]] + effect[1, local[:, 1]] + effect[2, local[:, 2]])
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.int8) if label is None else np.full(n, label, np.int8)
    t = pa.table({"label": pa.array(y, pa.int8()), "features": pa.array(x.tolist(), pa.list_(pa.int64()))},
                 schema=CTR_SAMPLES.schema(with_optional=False))
    meta = {"table": "ctr_samples", "n_features": n_features or width * PER_FIELD,
            "fields": [f"f{i}" for i in range(width)]}
    write_table(t.replace_schema_metadata(encode_metadata(meta)), path)


@pytest.fixture(scope="module")
def data(tmp_path_factory, ray_local):
    d = tmp_path_factory.mktemp("ctr")
    _samples(d / "train.parquet", 6000, 1)
    _samples(d / "test.parquet", 3000, 2)
    return d


def _args(d: Path, out: Path, *extra) -> list[str]:
    return ["--train_data", str(d / "train.parquet"), "--test_data", str(d / "test.parquet"), "--output", str(out),
            "--run_dir", str(d / "runs"), "--train.batch_size", "512", "--train.lr", "0.01",
            "--model.hidden", "[64, 64]", "--model.hidden2", "[32]", "--model.gate_hidden", "[32]",
            "--model.embedding_dim", "8", *map(str, extra)]


@pytest.mark.parametrize("name", ["lr", "finalmlp"])  # DCN and DeepFM: the same job path (bench_ctr runs all)
def test_models_train_publish_and_load(data, tmp_path, name):
    out = tmp_path / "out"
    assert main(_args(data, out, "--model.name", name, "--train.epochs", "8", "--train.patience", "3",
                      "--train.num_workers", "0")) == 0
    report = json.loads((out / "metrics.json").read_text())
    auc = report["metrics"]["test_AUC"]
    assert auc > 0.75, auc  # the Bayes-optimal AUC of this rule is about 0.9; random is 0.5
    model = from_pretrained(out / "model")  # one call, no training data needed
    effect = np.random.default_rng(0).normal(size=(FIELDS, PER_FIELD))
    best, worst = effect[:3].argmax(axis=1), effect[:3].argmin(axis=1)
    x = torch.tensor([[*(best + [0, 25, 50]), 75], [*(worst + [0, 25, 50]), 75]])
    p = torch.sigmoid(model(x))
    assert p.shape == (2,) and p[0] > p[1]  # the most and the least clickable feature combination


def test_two_workers_finish_on_an_uneven_split(data, tmp_path):
    out = tmp_path / "out"  # ~5,400 training rows in global batches of 1,000: the last one is uneven
    assert main(_args(data, out, "--model.name", "dcn", "--train.epochs", "2", "--train.batch_size", "1000",
                      "--train.num_workers", "2", "--train.cpus_per_worker", "0.5")) == 0
    report = json.loads((out / "metrics.json").read_text())
    assert report["workers"] == 2 and report["epochs_run"] == 2 and 0.5 < report["metrics"]["test_AUC"] <= 1


def test_an_in_process_run_matches_one_ray_train_worker(data, tmp_path):
    """--train.num_workers 0 (Ray Train's local mode) runs the same engine in the job's process: the same
    metrics as one worker for the same seed, and the engine keeps the newest two checkpoints itself."""
    reports = {}
    for workers in ("0", "1"):
        out = tmp_path / workers
        assert main(_args(data, out, "--model.name", "finalmlp", "--train.epochs", "3", "--train.patience", "3",
                          "--train.num_workers", workers, "--run_name", f"workers{workers}")) == 0
        reports[workers] = json.loads((out / "metrics.json").read_text())
    local, worker = (reports[w]["metrics"] for w in ("0", "1"))
    assert reports["0"]["workers"] == 0 and local["test_AUC"] > 0.75
    assert {k: v for k, v in local.items() if k.startswith(("test_", "final_valid_", "valid_"))} == \
        {k: v for k, v in worker.items() if k.startswith(("test_", "final_valid_", "valid_"))}
    run = data / "runs" / "workers0"
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint_000001", "checkpoint_000002"]
    assert sorted(p.name for p in (run / "checkpoint_000002").iterdir()) == [".in_process", "checkpoint.json",
                                                                            "state.pt"]


@pytest.mark.parametrize("case", ["width", "label", "vocabulary", "run name", "diverged"])
def test_bad_input(data, tmp_path, capsys, case):
    bad = tmp_path / "bad.parquet"
    extra, message = [], ""
    if case == "width":
        _samples(bad, 50, 3, width=FIELDS + 1)
        extra, message = ["--test_data", bad], f"{bad}: 5 fields"
    elif case == "label":
        _samples(bad, 50, 3, label=2)
        extra, message = ["--test_data", bad], f"{bad}: row 0 has label 2"
    elif case == "vocabulary":
        _samples(bad, 50, 3, n_features=10)
        extra, message = ["--test_data", bad], "outside the vocabulary 0..9"
    elif case == "run name":
        extra, message = ["--run_name", "../x"], "'../x' is not a safe name"
    else:
        extra, message = ["--train.lr", "1e30", "--train.epochs", "2"], "non-finite (NaN/inf)"
    out = tmp_path / "out"
    args = _args(data, out, "--model.name", "deepfm", "--train.epochs", "1", "--train.num_workers", "0")
    if extra[0] == "--test_data":
        args[3] = str(extra[1])
        extra = extra[2:]
    code = main(args + [str(e) for e in extra])
    err = capsys.readouterr().err
    assert code != 0 and message in err, err[-2000:]
    assert err.rstrip().endswith("nothing was published") and not out.exists()


def test_embedding_l2_default_depends_on_the_model():
    from semrec.config import load_settings
    from semrec.config.settings import TrainCTRSettings

    def l2(*extra):
        return load_settings(TrainCTRSettings, ["--train_data", "a", "--test_data", "b", *extra]).model.embedding_l2

    assert l2() == 0.05 and l2("--model.name", "finalmlp") == 0.05
    assert l2("--model.name", "lr") == 0.0  # the penalty would pin LR's only weights near zero
    assert l2("--model.name", "lr", "--model.embedding_l2", "0.2") == 0.2
