"""The one output policy of every semrec job: what ``--output`` may replace, an exclusive lock, stale
staging clean-up, and the atomic publish.

Rules (checked before any work; a refusal is one line and exit 2, and deletes nothing):

- ``--output`` may replace only a previous output of the same job kind, recognised by the
  ``_SEMREC_OUTPUT.json`` manifest every job writes at the top of its output, or an empty folder;
- an output that equals, contains or lies inside any input of the job is refused;
- an existing regular file (or a symlink) at ``--output`` is refused;
- a foreign folder (no manifest, or another job's) is refused unless ``--overwrite`` is given;
  ``--overwrite`` never applies to the rules above;
- an exclusive lock ``.<name>.lock`` beside the output makes a second job with the same ``--output``
  fail at once (exit 4) with a message naming the holder (host, pid, job, start time);
- while holding the lock, leftovers of earlier runs that died (``.<name>.staging-*``, ``.<name>.old-*``)
  are removed, and the run says so; a previous output that a killed run had renamed aside but not yet
  replaced is put back first.

The output is built in ``.<name>.staging-*`` beside the destination and published by rename only when
the job succeeds, so a failed or killed run never leaves a partial output and an earlier output stays
intact until the new one is complete.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import shutil
import socket
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

from semrec.errors import ConfigError, SemrecError

log = logging.getLogger("semrec.output")
OUTPUT_MANIFEST = "_SEMREC_OUTPUT.json"


class OutputBusyError(SemrecError):
    """Another job holds the lock of the same ``--output``."""

    exit_code = 4


def _real(p: str | Path) -> Path:
    return Path(os.path.realpath(os.path.expanduser(str(p))))


def _inside(child: Path, parent: Path) -> bool:
    return child == parent or parent in child.parents


def output_kind(dest: Path) -> str | None:
    """The job kind recorded in an output's manifest, or None for a folder semrec did not write."""
    try:
        return json.loads((dest / OUTPUT_MANIFEST).read_text()).get("job")
    except (OSError, ValueError, AttributeError):
        return None


def check_output(dest: str | Path, job: str, inputs: Iterable[str | Path | None] = (),
                 overwrite: bool = False) -> Path:
    """Refuse an ``--output`` that would destroy anything but an earlier output of ``job``; returns it absolute."""
    given = Path(os.path.expanduser(str(dest)))
    absolute = given.absolute()
    if absolute.is_symlink():
        raise ConfigError(f"--output {dest} is a symlink (to {os.path.realpath(absolute)}): give the real path")
    real = _real(absolute)
    if real.exists() and not real.is_dir():
        raise ConfigError(f"--output {dest} is an existing file, not a folder: refusing to replace it "
                          f"(choose another path)")
    for p in inputs:
        if p is None:
            continue
        inp = _real(p)
        if _inside(inp, real):
            what = "is" if inp == real else "contains"
            raise ConfigError(f"--output {dest} {what} the input {p}: publishing would delete it (choose an output "
                              f"outside every input)")
        if _inside(real, inp):
            raise ConfigError(f"--output {dest} lies inside the input {p}: the output would mix with the input "
                              f"(choose an output outside every input)")
    if _inside(_real(Path.cwd()), real):
        raise ConfigError(f"--output {dest} contains the working directory {Path.cwd()}: refusing to replace it")
    if real.is_dir() and any(real.iterdir()):
        kind = output_kind(real)
        if kind != job and not overwrite:
            found = f"an output of {kind}" if kind else f"a folder without {OUTPUT_MANIFEST}"
            raise ConfigError(f"--output {dest} is {found}, not an earlier {job} output: refusing to replace it "
                              f"(choose an empty or new path, or pass --overwrite to replace the folder)")
    return absolute


# ----------------------------------------------------------------------------- lock
def _holder(lock_path: Path) -> str:
    try:
        h = json.loads(lock_path.read_text())
        return f"{h['job']} (pid {h['pid']} on {h['host']}, started {h['started']})"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


@contextmanager
def output_lock(dest: Path, job: str) -> Iterator[Path]:
    """Exclusive, non-blocking ``flock`` on ``.<name>.lock`` beside ``dest``, holding who took it.

    The lock file is removed on release; an inode check after locking makes that safe against a
    concurrent job that opened the old file.
    """
    path = dest.parent / f".{dest.name}.lock"
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise OutputBusyError(f"--output {dest} is being written by {_holder(path)}; lock {path}") from None
            raise
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the holder released and removed the file between our open and flock: retry
    try:
        info = {"job": job, "pid": os.getpid(), "host": socket.gethostname(),
                "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        os.ftruncate(fd, 0)
        os.write(fd, (json.dumps(info) + "\n").encode())
        yield path
    finally:
        try:
            os.unlink(path)
        finally:
            os.close(fd)


def clean_stale(dest: Path) -> list[Path]:
    """Remove leftovers of dead runs at ``dest`` (call with the lock held); returns what was removed."""
    removed = []
    olds = sorted(dest.parent.glob(f".{dest.name}.old-*"), key=lambda p: p.stat().st_mtime)
    if olds and not dest.exists():  # killed between "old aside" and "new in": the old output is the only copy
        os.rename(olds.pop(), dest)
        log.warning("restored the previous output %s that an interrupted run had moved aside", dest)
    for p in [*dest.parent.glob(f".{dest.name}.staging-*"), *olds]:
        shutil.rmtree(p, ignore_errors=True)
        removed.append(p)
        log.warning("removed %s, left by an earlier run at this output that did not finish", p)
    return removed


# ----------------------------------------------------------------------------- staged output
@contextmanager
def job_output(dest: str | Path, job: str, inputs: Iterable[str | Path | None] = (),
               overwrite: bool = False) -> Iterator[Path]:
    """Check ``dest`` against the policy, lock it, clean stale leftovers, and yield a fresh staging folder;
    on success write the output manifest and publish the staging folder at ``dest`` by rename.

    On any exception the staging folder is removed and ``dest`` is left untouched.
    """
    dest = check_output(dest, job, inputs, overwrite)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with output_lock(dest, job):
        clean_stale(dest)
        staging = dest.parent / f".{dest.name}.staging-{uuid.uuid4().hex[:8]}"
        staging.mkdir()
        try:
            yield staging
            (staging / OUTPUT_MANIFEST).write_text(json.dumps(
                {"job": job, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "host": socket.gethostname()},
                indent=2) + "\n")
            publish(staging, dest)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise


def publish(staging: Path, dest: Path) -> None:
    """Replace ``dest`` by ``staging`` with two renames (old aside, new in), then delete the old output."""
    old = None
    if dest.exists():
        old = dest.parent / f".{dest.name}.old-{uuid.uuid4().hex[:8]}"
        os.rename(dest, old)
    try:
        os.rename(staging, dest)
    except BaseException:
        if old is not None:
            os.rename(old, dest)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
