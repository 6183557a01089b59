"""Scheduled retraining: a TOML pipeline of semrec jobs run as one version (``jobs/retrain.py``).

    <root>/steps/<step>-<key>/     each step's published output; key = hash of (job, args with upstream keys
                                   substituted, fingerprints of external input paths). An existing output is
                                   reused (the step is skipped); a step killed midway published nothing, so a
                                   rerun starts it again (training steps resume from their checkpoints under
                                   <root>/ray_train/<step>-<key>)
    <root>/versions/<id>/run.json  the run record: step keys, skipped or ran, seconds, the gate's decision,
                                   metrics, settings, git revision, status (promoted | refused | failed)
    <root>/current                 symlink -> versions/<id>, swapped atomically (rename of a new link)

Sub-commands: ``run`` (the pipeline, then the gate, then promotion), ``status`` (the versions), ``rollback``
(current -> the promoted version before it, or --to ID). Exit codes: 0 promoted (or nothing to do), 4 refused
by the gate, a failed step's own code otherwise.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from importlib import import_module
from pathlib import Path

from semrec.config.settings import RetrainAdminSettings, RetrainSettings, RetrainStep
from semrec.errors import ConfigError, InputError, SemrecError

log = logging.getLogger("semrec.retrain")
TRAINING_JOBS = {"tokenize_users", "train_seqrec", "train_ctr", "train_generative"}
REFUSED = 4


class GateRefused(SemrecError):
    exit_code = REFUSED


# ----------------------------------------------------------------------------- step keys
def fingerprint(path: Path) -> list:
    """What identifies an external input: every file's relative path, size and modification time."""
    if path.is_file():
        st = path.stat()
        return [[path.name, st.st_size, st.st_mtime_ns]]
    return [[str(f.relative_to(path)), f.stat().st_size, f.stat().st_mtime_ns]
            for f in sorted(path.rglob("*")) if f.is_file()]


def _values(v) -> list:
    return v if isinstance(v, list) else [v]


def resolve(step: RetrainStep, outputs: dict[str, Path], keys: dict[str, str], root: Path) -> tuple[list[str], str]:
    """(argv of the step's job without --output, the step's key). External inputs (existing paths outside
    ``root``; what lives under ``root`` is the pipeline's own, e.g. a negatives cache) enter the key by their
    fingerprints."""
    argv, key_args, externals = [], {}, {}
    for flag, value in step.args.items():
        if flag in ("output", "run_dir", "run_name", "config"):
            raise ConfigError(f"step {step.name}: --{flag} is set by the pipeline")
        resolved = []
        for v in _values(value):
            if isinstance(v, str) and "{" in v:
                for name in outputs:
                    v = v.replace("{" + name + "}", str(outputs[name]))
                if "{" in v:
                    raise ConfigError(f"step {step.name}: {flag} = {value!r} names no earlier step "
                                      f"(earlier: {list(outputs)})")
            resolved.append(v)
        key_args[flag] = value  # upstream steps enter the key through their own keys
        for v in resolved:
            if isinstance(v, bool):
                argv.append(f"--{flag}" if v else f"--no-{flag}")
            else:
                argv += [f"--{flag}", str(v)]
                p = Path(str(v))
                inside = p.absolute() == root or root in p.absolute().parents
                if isinstance(v, str) and not inside and p.exists():
                    externals[str(p)] = fingerprint(p)
    upstream = {n: keys[n] for n in outputs if any("{" + n + "}" in str(x) for v in step.args.values()
                                                   for x in _values(v))}
    payload = json.dumps({"job": step.job, "args": key_args, "upstream": upstream, "inputs": externals},
                         sort_keys=True, default=str)
    return argv, hashlib.sha256(payload.encode()).hexdigest()[:16]


def git_revision() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parents[2],
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or None
    except OSError:
        return None


# ----------------------------------------------------------------------------- versions
def _versions(root: Path) -> list[dict]:
    out = []
    for f in sorted((root / "versions").glob("*/run.json")):
        try:
            out.append(json.loads(f.read_text()))
        except ValueError:
            continue
    return sorted(out, key=lambda r: r["id"])


def current_id(root: Path) -> str | None:
    link = root / "current"
    return Path(os.readlink(link)).name if link.is_symlink() else None


def point_current(root: Path, version: str) -> None:
    """Atomic: a new symlink renamed over ``current`` (readers see the old or the new version, never none)."""
    tmp = root / f".current.{os.getpid()}"
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    os.symlink(Path("versions") / version, tmp)
    os.replace(tmp, root / "current")


def prune(root: Path, keep: int) -> list[str]:
    """Keep the newest ``keep`` promoted versions (and the current one); remove older version records and every
    step output no kept record uses."""
    promoted = [r for r in _versions(root) if r["status"] == "promoted"]
    cur = current_id(root)
    kept = {r["id"] for r in promoted[-keep:]} | ({cur} if cur else set())
    removed = []
    for r in _versions(root):
        if r["id"] not in kept and r["status"] == "promoted":
            shutil.rmtree(root / "versions" / r["id"])
            removed.append(r["id"])
    used = {Path(s["output"]).name for r in _versions(root) for s in r["steps"]}
    for d in (root / "steps").glob("*"):
        if d.is_dir() and d.name not in used and not d.name.startswith("."):
            shutil.rmtree(d, ignore_errors=True)
    return removed


# ----------------------------------------------------------------------------- run
def run(s: RetrainSettings) -> dict:
    if not s.steps:
        raise ConfigError("no steps: give the pipeline as [[steps]] in --config")
    root = Path(s.root).absolute()
    for d in ("steps", "versions", "ray_train"):
        (root / d).mkdir(parents=True, exist_ok=True)
    os.environ.pop("SEMREC_CONFIG", None)  # the steps take their settings from the pipeline only
    started = datetime.now(timezone.utc)
    outputs, keys, records = {}, {}, []
    for step in s.steps:
        argv, key = resolve(step, outputs, keys, root)
        out = root / "steps" / f"{step.name}-{key}"
        outputs[step.name], keys[step.name] = out, key
        rec = {"name": step.name, "job": step.job, "key": key, "output": str(out)}
        t0 = time.perf_counter()
        if (out / "_SEMREC_OUTPUT.json").exists():
            rec["status"] = "skipped"
            log.info("step %s: unchanged (%s), skipped", step.name, out.name)
        else:
            extra = ["--output", str(out)]
            if step.job in TRAINING_JOBS:
                extra += ["--run_dir", str(root / "ray_train"), "--run_name", f"{step.name}-{key}"]
            log.info("step %s: %s %s", step.name, step.job, " ".join(argv + extra))
            main = import_module(f"semrec.pipelines.{step.job}").main
            rc = main(argv + extra)
            if rc != 0:
                raise StepFailed(step.name, rc)
            rec["status"] = "ran"
        rec["seconds"] = round(time.perf_counter() - t0, 2)
        metrics = out / "metrics.json"
        if metrics.exists():
            rec["metrics"] = json.loads(metrics.read_text()).get("metrics")
        records.append(rec)
    version = started.strftime("%Y%m%dT%H%M%SZ") + "-" + hashlib.sha256(
        "".join(keys.values()).encode()).hexdigest()[:8]
    record = {"id": version, "created": started.isoformat(), "git": git_revision(), "steps": records,
              "settings": json.loads(s.model_dump_json()),
              "seconds": round((datetime.now(timezone.utc) - started).total_seconds(), 2)}
    decision = gate(s, root, records)
    record.update(decision)
    vdir = root / "versions" / version
    vdir.mkdir(parents=True, exist_ok=True)
    (vdir / "run.json").write_text(json.dumps(record, indent=2) + "\n")
    if record["status"] == "promoted":
        point_current(root, version)
        record["pruned"] = prune(root, s.keep)
        print(f"version {version} promoted: {root / 'current'} -> versions/{version} ({decision['reason']})")
    else:
        print(f"version {version} refused: {decision['reason']}; current stays {current_id(root)}",
              file=sys.stderr)
        raise GateRefused(f"quality gate refused version {version}: {decision['reason']}")
    return record


class StepFailed(SemrecError):
    def __init__(self, step: str, rc: int):
        super().__init__(f"step {step} failed (exit {rc}); rerun the same command to resume at this step")
        self.exit_code = rc


def gate(s: RetrainSettings, root: Path, records: list[dict]) -> dict:
    if s.gate is None:
        return {"status": "promoted", "reason": "no quality gate configured"}
    g = s.gate
    rec = next(r for r in records if r["name"] == g.step)
    new = (rec.get("metrics") or {}).get(g.metric)
    if new is None:
        raise InputError(f"gate: step {g.step}'s metrics.json has no {g.metric!r} "
                         f"(has {sorted(rec.get('metrics') or {})[:8]})")
    cur = current_id(root)
    out = {"gate": {"step": g.step, "metric": g.metric, "tolerance": g.tolerance, "new": new}}
    if g.floor is not None and new < g.floor:
        return {**out, "status": "refused", "reason": f"{g.metric} {new:.4f} < floor {g.floor}"}
    if cur is None:
        return {**out, "status": "promoted", "reason": f"first version ({g.metric} {new:.4f})"}
    cur_rec = json.loads((root / "versions" / cur / "run.json").read_text())
    old = cur_rec.get("gate", {}).get("new")
    out["gate"]["current"], out["gate"]["current_id"] = old, cur
    same_eval = _eval_inputs(cur_rec, g.step) == _eval_inputs({"steps": records}, g.step)
    out["gate"]["same_evaluation_data"] = same_eval
    if old is None:
        return {**out, "status": "promoted", "reason": f"current version {cur} has no {g.metric}"}
    if not same_eval:  # the current version's number was measured on other data: not comparable
        if g.on_changed_data == "promote":
            out["gate"]["baseline_reset"] = True
            return {**out, "status": "promoted", "reason": f"evaluation data changed since version {cur}: "
                                                           f"{g.metric} {new:.4f} is the new baseline "
                                                           f"(gate.on_changed_data = promote)"}
        return {**out, "status": "refused", "reason": f"evaluation data changed since version {cur}, whose "
                                                      f"{g.metric} {old:.4f} was measured on other data, so it is not "
                                                      f"comparable with {new:.4f}; set gate.on_changed_data = "
                                                      f"\"promote\" to accept new data as a new baseline"}
    if new + g.tolerance >= old:
        return {**out, "status": "promoted", "reason": f"{g.metric} {new:.4f} >= current {old:.4f} - {g.tolerance}"}
    return {**out, "status": "refused", "reason": f"{g.metric} {new:.4f} < current {old:.4f} - {g.tolerance} "
                                                  f"(version {cur})"}


def _eval_inputs(record: dict, step: str) -> list[str]:
    """Keys of the steps before the gated one whose job is prepare_data: the evaluation data's identity."""
    out = []
    for r in record["steps"]:
        if r["name"] == step:
            break
        if r["job"] == "prepare_data":
            out.append(r["key"])
    return out


# ----------------------------------------------------------------------------- status / rollback
def status(s: RetrainAdminSettings) -> list[dict]:
    root = Path(s.root)
    cur = current_id(root)
    rows = _versions(root)
    print(f"{'':2}{'version':28} {'status':9} {'metric':>24} {'steps ran':>9} {'seconds':>8}")
    for r in rows:
        g = r.get("gate") or {}
        metric = f"{g.get('metric', '-')} {g['new']:.4f}" if "new" in g else "-"
        ran = sum(st["status"] == "ran" for st in r["steps"])
        print(f"{'*' if r['id'] == cur else ' ':2}{r['id']:28} {r['status']:9} {metric:>24} {ran:>9} "
              f"{r['seconds']:>8}")
    return rows


def rollback(s: RetrainAdminSettings) -> str:
    root = Path(s.root)
    cur = current_id(root)
    promoted = [r["id"] for r in _versions(root) if r["status"] == "promoted"]
    if s.to is not None:
        if s.to not in promoted:
            raise InputError(f"version {s.to!r} is not a kept promoted version ({promoted})")
        target = s.to
    else:
        earlier = [v for v in promoted if cur is None or v < cur]
        if not earlier:
            raise InputError(f"no promoted version before the current one ({cur}) to roll back to")
        target = earlier[-1]
    point_current(root, target)
    print(f"current: {cur} -> {target}")
    return target


COMMANDS = {"run": (RetrainSettings, run), "status": (RetrainAdminSettings, status),
            "rollback": (RetrainAdminSettings, rollback)}


def main(argv: list[str] | None = None) -> int:
    from semrec.pipelines.runtime import job_main

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        print("usage: retrain.py {run,status,rollback} [--help | options]\n\n" + (__doc__ or ""),
              file=sys.stdout if argv and argv[0] in ("-h", "--help") else sys.stderr)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    settings_cls, fn = COMMANDS[argv[0]]
    return job_main(settings_cls, fn, f"retrain {argv[0]}", argv[1:])
