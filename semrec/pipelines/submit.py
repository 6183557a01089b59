"""Submit a semrec job to a Ray cluster: ``python jobs/submit.py --address URL -- python jobs/X.py ...``.

What it adds to ``ray job submit``:
- every path flag of the job (``--items``, ``--output``, ``--config``, ... found from the job's settings
  model) is made absolute on this machine before submission, since the job runs inside a temporary
  copy of the working directory (jobs refuse relative paths there);
- the repository is uploaded as the working directory without ``.venv``, ``.git``, ``out/``, ``data/``;
- token authentication: the token is read from ``--token-file``, ``RAY_AUTH_TOKEN``,
  ``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token`` and sent as a bearer header;
- it waits, streams the job's log, and exits with the job's own exit code (2 settings, 3 input data, ...).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from pathlib import Path

from semrec.config import path_fields

ROOT = Path(__file__).resolve().parents[2]
EXCLUDES = [".venv", ".git", "out", "data", "*.egg-info", ".benchmarks", "__pycache__", ".pytest_cache"]


def _jobs() -> dict:
    from semrec.config.settings import (BuildCacheSettings, PrepareDataSettings, ServeSettings, TokenizeItemsSettings,
                                        TokenizeUsersSettings, TrainCTRSettings, TrainGenerativeSettings,
                                        TrainSeqRecSettings)

    return {"tokenize_items": TokenizeItemsSettings, "tokenize_users": TokenizeUsersSettings,
            "train_seqrec": TrainSeqRecSettings, "train_ctr": TrainCTRSettings, "prepare_data": PrepareDataSettings,
            "build_cache": BuildCacheSettings, "serve_dmqn": ServeSettings, "train_generative": TrainGenerativeSettings}


def absolute_paths(entrypoint: list[str], cwd: Path | None = None) -> list[str]:
    """Rewrite the values of the job's path flags in ``entrypoint`` to absolute paths (relative to ``cwd``)."""
    cwd = cwd or Path.cwd()
    job = next((Path(a).stem for a in entrypoint if a.endswith(".py") and Path(a).stem in _jobs()), None)
    if job is None:
        raise SystemExit(f"submit: the entrypoint runs none of jobs/{{{','.join(_jobs())}}}.py: {' '.join(entrypoint)}")
    flags = {f"--{name}" for name in path_fields(_jobs()[job])}
    out, i = [], 0
    while i < len(entrypoint):
        a = entrypoint[i]
        flag, eq, value = a.partition("=")
        if flag in flags and eq:
            out.append(f"{flag}={_abs(value, cwd)}")
        elif a in flags and i + 1 < len(entrypoint):
            out += [a, _abs(entrypoint[i + 1], cwd)]
            i += 1
        else:
            out.append(a)
        i += 1
    return out


def _abs(value: str, cwd: Path) -> str:
    p = Path(os.path.expanduser(value))
    return str(p if p.is_absolute() else (cwd / p).resolve())


def auth_headers(token_file: str | None) -> dict[str, str]:
    """Bearer header from --token-file, else $RAY_AUTH_TOKEN, else $RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token."""
    token = os.environ.get("RAY_AUTH_TOKEN") if not token_file else None
    path = Path(token_file or os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token").expanduser()
    if not token and (token_file or path.is_file()):
        token = path.read_text().strip()
    return {"Authorization": f"Bearer {token}"} if token else {}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" not in argv:
        argv = argv if any(a in ("-h", "--help") for a in argv) else [*argv, "--help"]
        entry = []
    else:
        k = argv.index("--")
        argv, entry = argv[:k], argv[k + 1:]
    p = argparse.ArgumentParser(prog="submit", description=__doc__, formatter_class=argparse.RawTextHelpFormatter,
                                usage="python jobs/submit.py [--address URL] [--token-file F] [--no-wait] -- "
                                      "python jobs/JOB.py [job flags]")
    p.add_argument("--address", default=os.environ.get("RAY_ADDRESS", "http://127.0.0.1:8265"),
                   help="dashboard address of the head node (default: $RAY_ADDRESS or http://127.0.0.1:8265)")
    p.add_argument("--token-file", help="file holding the cluster's auth token (default: $RAY_AUTH_TOKEN_PATH, "
                                        "$RAY_AUTH_TOKEN, ~/.ray/auth_token)")
    p.add_argument("--no-wait", action="store_true", help="print the submission id and return")
    p.add_argument("--timeout", type=float, default=0, help="give up waiting after this many seconds (0 = never)")
    args = p.parse_args(argv)
    if not entry:
        p.error("nothing to submit: add `-- python jobs/JOB.py ...`")
    from ray.job_submission import JobStatus, JobSubmissionClient

    entry = absolute_paths(entry)
    client = JobSubmissionClient(args.address, headers=auth_headers(args.token_file))
    job = client.submit_job(entrypoint=shlex.join(entry),
                            runtime_env={"working_dir": str(ROOT), "excludes": EXCLUDES})
    print(f"submitted {job}: {' '.join(entry)}", flush=True)
    if args.no_wait:
        return 0
    shown, start = 0, time.monotonic()
    while True:
        status = client.get_job_status(job)
        logs = client.get_job_logs(job)
        sys.stdout.write(logs[shown:])
        sys.stdout.flush()
        shown = len(logs)
        if status in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
            break
        if args.timeout and time.monotonic() - start > args.timeout:
            print(f"submit: {job} still {status} after {args.timeout:g} s; not waiting longer", file=sys.stderr)
            return 124
        time.sleep(1)
    code = getattr(client.get_job_info(job), "driver_exit_code", None)
    print(f"{job}: {status}" + (f" (exit {code})" if code is not None else ""), file=sys.stderr)
    return 0 if status == JobStatus.SUCCEEDED else (code or 1)
