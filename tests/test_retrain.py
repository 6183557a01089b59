"""jobs/retrain.py: a synthetic data -> item tokens -> sequential model pipeline run as versions: the first run is
promoted, an unchanged rerun skips every step, a degraded setting is refused by the gate and `current` does
not move, rollback moves it back, status lists the versions."""

import json
import os
import time

import pytest

from semrec.pipelines.retrain import main

PIPELINE = """
root = "{root}"
keep = 3

[gate]
step = "seqrec"
metric = "test_NDCG@10"
tolerance = 0.0

[[steps]]
name = "data"
job = "prepare_data"
[steps.args]
format = "synthetic"
items = 300
users = 500
embedding_dim = 16
text = false
seed = 3

[[steps]]
name = "items"
job = "tokenize_items"
[steps.args]
embeddings = "{{data}}/item_embeddings"
"quantizer.kind" = "rkmeans"
"quantizer.codebook_size" = 16
plots = false

[[steps]]
name = "seqrec"
job = "train_seqrec"
[steps.args]
sequences = "{{data}}/user_sequences"
tokens = "{{items}}"
"model.mode" = "semantic"
"model.hidden" = 32
"model.max_len" = 20
"train.epochs" = {epochs}
"train.lr" = {lr}
"train.batch_size" = 128
"train.num_workers" = 0
"eval.negatives_dir" = "{root}/negatives"
dataset = "synthetic"
"""


def _config(tmp_path, name, epochs=3, lr=3e-3):
    p = tmp_path / f"{name}.toml"
    p.write_text(PIPELINE.format(root=tmp_path / "retrain", epochs=epochs, lr=lr))
    return p


def _record(root, version):
    return json.loads((root / "versions" / version / "run.json").read_text())


def test_versions_skip_gate_and_rollback(ray_local, tmp_path, capsys):
    root = tmp_path / "retrain"
    good = _config(tmp_path, "good")
    assert main(["run", "--config", str(good)]) == 0
    first = os.readlink(root / "current").split("/")[-1]
    rec = _record(root, first)
    assert rec["status"] == "promoted" and [s["status"] for s in rec["steps"]] == ["ran"] * 3
    assert rec["git"] and rec["gate"]["new"] > 0 and rec["steps"][2]["metrics"]["test_NDCG@10"] == rec["gate"]["new"]

    # nothing changed: every step skipped, in seconds, and the equal model is promoted again
    time.sleep(1.1)  # version ids have one-second resolution
    t0 = time.perf_counter()
    assert main(["run", "--config", str(good)]) == 0
    assert time.perf_counter() - t0 < 20
    second = os.readlink(root / "current").split("/")[-1]
    assert second != first and [s["status"] for s in _record(root, second)["steps"]] == ["skipped"] * 3

    # a degraded setting: only the training step reruns, the gate refuses it, current stays
    time.sleep(1.1)
    rc = main(["run", "--config", str(_config(tmp_path, "bad", epochs=1, lr=1e-6))])
    err = capsys.readouterr().err
    assert rc == 4 and "refused" in err and "test_NDCG@10" in err, err
    assert os.readlink(root / "current").split("/")[-1] == second
    refused = [r for r in (root / "versions").iterdir() if r.name not in (first, second)]
    assert len(refused) == 1
    bad = _record(root, refused[0].name)
    assert bad["status"] == "refused" and [s["status"] for s in bad["steps"]] == ["skipped", "skipped", "ran"]
    assert bad["gate"]["new"] < bad["gate"]["current"] and bad["gate"]["same_evaluation_data"]

    # rollback: back to the first version; status marks it
    assert main(["rollback", "--root", str(root)]) == 0
    assert os.readlink(root / "current").split("/")[-1] == first
    assert main(["status", "--root", str(root)]) == 0
    out = capsys.readouterr().out
    assert f"* {first}" in out and "refused" in out
    assert main(["rollback", "--root", str(root), "--to", "nope"]) != 0


def test_bad_pipelines_fail_clearly(tmp_path, capsys):
    p = tmp_path / "p.toml"
    p.write_text('root = "x"\n[[steps]]\nname = "a"\njob = "train_seqrec"\nargs = { sequences = "{b}/s" }\n')
    assert main(["run", "--config", str(p)]) != 0
    assert "names no earlier step" in capsys.readouterr().err
    p.write_text('[gate]\nstep = "zzz"\n[[steps]]\nname = "a"\njob = "prepare_data"\n')
    assert main(["run", "--config", str(p)]) != 0
    assert "gate.step 'zzz' is not a step" in capsys.readouterr().err
    p.write_text('[[steps]]\nname = "a"\njob = "prepare_data"\nargs = { output = "x" }\n')
    assert main(["run", "--config", str(p), "--root", str(tmp_path / "r")]) != 0
    assert "--output is set by the pipeline" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["--help"], []])
def test_usage(argv, capsys):
    assert main(argv) == (0 if argv else 2)
    captured = capsys.readouterr()
    assert "run,status,rollback" in captured.out + captured.err


def test_killed_between_steps_the_rerun_skips_what_finished(ray_local, tmp_path):
    """jobs/retrain.py SIGKILLed once its second step has published: the rerun skips both finished steps and
    completes the pipeline."""
    import signal
    import subprocess
    import sys

    from helpers import ROOT

    config = _config(tmp_path, "good")
    root = tmp_path / "retrain"
    with open(tmp_path / "killed.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, str(ROOT / "jobs" / "retrain.py"), "run", "--config", str(config)],
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, "RAY_AUTH_MODE": "disabled"})
    deadline, done = time.time() + 300, []
    while time.time() < deadline and proc.poll() is None:
        done = list((root / "steps").glob("items-*/_SEMREC_OUTPUT.json"))
        if done:
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert done, (tmp_path / "killed.log").read_text()[-2000:]
    assert not (root / "current").exists() and not list((root / "versions").glob("*/run.json"))
    assert main(["run", "--config", str(config)]) == 0
    rec = json.loads((root / "current" / "run.json").read_text())
    assert [s["status"] for s in rec["steps"]] == ["skipped", "skipped", "ran"] and rec["status"] == "promoted"


def _gate_case(tmp_path, current_metric, current_data_key, **gate):
    """A retraining root whose current version measured ``current_metric`` on data step key ``current_data_key``."""
    from semrec.config.settings import GateSettings, RetrainSettings, RetrainStep
    from semrec.pipelines.retrain import point_current

    root = tmp_path / "root"
    (root / "versions" / "v1").mkdir(parents=True)
    (root / "versions" / "v1" / "run.json").write_text(json.dumps({
        "id": "v1", "status": "promoted", "gate": {"new": current_metric},
        "steps": [{"name": "data", "job": "prepare_data", "key": current_data_key},
                  {"name": "seqrec", "job": "train_seqrec", "key": "m1"}]}))
    point_current(root, "v1")
    s = RetrainSettings(root=root, gate=GateSettings(step="seqrec", metric="test_NDCG@10", **gate),
                        steps=[RetrainStep(name="data", job="prepare_data"),
                               RetrainStep(name="seqrec", job="train_seqrec")])
    return s, root


def _records(data_key, metric):
    return [{"name": "data", "job": "prepare_data", "key": data_key},
            {"name": "seqrec", "job": "train_seqrec", "key": "m2", "metrics": {"test_NDCG@10": metric}}]


def test_gate_never_compares_numbers_measured_on_other_data(tmp_path):
    from semrec.pipelines.retrain import gate

    # same evaluation data: the recorded numbers are compared
    s, root = _gate_case(tmp_path, 0.30, "d1", tolerance=0.01)
    assert gate(s, root, _records("d1", 0.295))["status"] == "promoted"
    assert gate(s, root, _records("d1", 0.28))["status"] == "refused"
    # other evaluation data: not comparable, refused by default even when the number looks better
    d = gate(s, root, _records("d2", 0.50))
    assert d["status"] == "refused" and "evaluation data changed" in d["reason"]
    assert d["gate"]["same_evaluation_data"] is False
    # ... or promoted as a new baseline when configured, even when the number looks worse
    s, root = _gate_case(tmp_path / "b", 0.30, "d1", on_changed_data="promote")
    d = gate(s, root, _records("d2", 0.10))
    assert d["status"] == "promoted" and d["gate"]["baseline_reset"] and "new baseline" in d["reason"]
    # the floor holds whatever the data and the current version
    s, root = _gate_case(tmp_path / "c", 0.30, "d1", on_changed_data="promote", floor=0.2)
    d = gate(s, root, _records("d2", 0.10))
    assert d["status"] == "refused" and "floor" in d["reason"]
    assert gate(s, root, _records("d2", 0.25))["status"] == "promoted"
