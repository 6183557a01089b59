"""The training engine every model family plugs into (runs inside each Ray Train worker).

A family (``Family`` below) supplies the model, this rank's batches of an epoch, a loss as (sum, count),
and sharded evaluation as metric sums; the engine owns everything else:

- the DDP model (``prepare_model`` with ``broadcast_buffers=False``: large per-item constant buffers such
  as token codes or text embeddings are identical on every rank and are not re-broadcast each forward);
- lockstep steps: every rank runs the same number of steps for any data size (a rank whose shard ran
  out runs an empty batch), and the loss is scaled by the global example count of the step, so the
  DDP-averaged gradient is the gradient of the global mean whatever the split (1 worker == 2 workers
  up to per-rank randomness);
- per-rank seeds (dropout differs between ranks) and, in the checkpoint, every rank's CPU and CUDA
  RNG state, restored on resume;
- sharded evaluation: each rank evaluates its share, sums are all-reduced, every rank sees the same
  metrics, so early stopping agrees;
- the learning rate schedule (``lr_at``: linear warm-up, then constant, cosine per epoch or inverse square
  root per step), set on the optimizer before every step from the global step count;
- a checkpoint per epoch from rank 0 (model, optimizer, RNG states, epoch, global step, best metric, best
  model, patience counter, training clock), automatic resume from the latest one, early stopping, and a
  run whose epoch cap is already reached evaluating its best checkpoint instead of training;
- one log line per epoch (loss, validation metric, seconds, examples/s per worker of the training
  pass), and a progress bar on the driver (``driver_progress``);
- deterministic errors stop the run at once: a ``SemrecError`` (bad input met while loading a family's
  data or streaming a shard, a model whose scores are NaN) raised on any rank while making the family,
  building the model, fetching a batch or evaluating is agreed on by every rank at that step's
  collective, reported as the run's final result (``failed``) and re-raised on the driver by ``launch``. Raised from the workers, Ray Train would retry
  it ``--train.max_failures`` times (its failure policy cannot tell it from a lost node) and fail the
  same way each time; any other error is still raised, and retried.
"""

from __future__ import annotations

import copy
import json
import logging
import shutil
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Protocol

import numpy as np
import torch
from torch import nn

from semrec.errors import SemrecError, find_semrec_error, user_message

log = logging.getLogger("semrec.train")
STATE_FILE = "state.pt"
KEEP_CHECKPOINTS = 2  # the newest checkpoints a run keeps (launch's CheckpointConfig; in-process runs alike)
LOCAL_RUN_DIR = "local_run_dir"  # set by launch in the train settings of an in-process run: its folder
IN_PROCESS_MARKER = ".in_process"  # in each checkpoint an in-process run writes
PROGRESS_EVERY_S = 60.0
META_FILE = "checkpoint.json"


def lr_at(train: dict, step: int, epoch: int) -> float:
    """The learning rate of global step ``step`` (0-based) in epoch ``epoch`` under the settings ``train``:
    ``lr`` times a linear warm-up over ``warmup_steps`` times the schedule's decay (constant: 1; cosine:
    (1 + cos(pi * epoch / epochs)) / 2, so the first epoch runs at lr; inverse_sqrt: sqrt(w / (step + 1)) once
    past w = max(warmup_steps, 1))."""
    warmup = int(train.get("warmup_steps") or 0)
    factor = min(1.0, (step + 1) / warmup) if warmup else 1.0
    schedule = train.get("lr_schedule") or "constant"
    if schedule == "cosine":
        factor *= 0.5 * (1.0 + float(np.cos(np.pi * epoch / train["epochs"])))
    elif schedule == "inverse_sqrt":
        factor *= float(np.sqrt(max(warmup, 1) / max(step + 1, warmup, 1)))
    elif schedule != "constant":
        raise ValueError(f"unknown lr_schedule {schedule!r} (constant, cosine, inverse_sqrt)")
    return train["lr"] * factor


class Family(Protocol):
    """What a model family provides to the engine (see ``semrec.train.seqrec.SeqRecFamily``)."""

    metric: str  # validation metric for early stopping and best-model selection (higher is better)

    def build(self) -> nn.Module: ...

    def batches(self, epoch: int, rank: int, world: int) -> Iterable[Any]:
        """This rank's batches of ``epoch`` (deterministic in (seed, epoch, rank, world) for exact resume)."""

    def empty_batch(self) -> Any:
        """A batch of zero examples (run by a rank whose shard ran out, so DDP's collectives line up)."""

    def size(self, batch: Any) -> int:
        """Number of examples the loss of ``batch`` sums over."""

    def loss(self, model: nn.Module, batch: Any) -> torch.Tensor:
        """Sum of the per-example losses of ``batch`` (computed by ``model``'s forward, for DDP)."""

    def evaluate(self, model: nn.Module, split: str, rank: int, world: int, final: bool) -> dict[str, Any]:
        """Metric *sums* (floats or arrays) over this rank's share of ``split``, plus ``"count"``; the engine
        all-reduces them, then divides by the count, or calls the family's optional
        ``finalize(sums, count) -> metrics`` (for metrics that are not means, such as AUC)."""


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") else model


def _frozen(model: nn.Module) -> set[str]:
    """State-dict keys of parameters that do not train (e.g. an LLM's base weights under LoRA): they are what
    ``family.build()`` made them, so checkpoints leave them out."""
    return {k for k, p in _unwrap(model).named_parameters() if not p.requires_grad}


def _state_dict(model: nn.Module) -> dict:
    """The trained state: every buffer and trainable parameter (all of a model without frozen parameters)."""
    frozen = _frozen(model)
    return {k: v.detach().cpu().clone() for k, v in _unwrap(model).state_dict().items() if k not in frozen}


def load_state(model: nn.Module, state: dict) -> None:
    """Load a state written by ``_state_dict``: only frozen parameters may be missing from it."""
    missing, unexpected = _unwrap(model).load_state_dict(state, strict=False)
    bad = sorted(set(missing) - _frozen(model))
    if bad or unexpected:
        raise RuntimeError(f"checkpoint does not fit the model: missing {bad[:5]}, unexpected {list(unexpected)[:5]}")


def rng_state() -> dict:
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Collective:
    """all-reduce / all-gather that also work with one process (no process group)."""

    def __init__(self, world: int, device: torch.device):
        self.world, self.device = world, device

    def sum(self, values) -> list[float]:
        t = torch.as_tensor(np.asarray(values, dtype=np.float64), device=self.device)
        if self.world > 1:
            torch.distributed.all_reduce(t)
        return t.tolist()

    def gather(self, obj: Any) -> list[Any]:
        if self.world == 1:
            return [obj]
        out: list[Any] = [None] * self.world
        torch.distributed.all_gather_object(out, obj)
        return out


def reduce_metrics(coll: Collective, sums: dict[str, Any], finalize=None) -> dict[str, float]:
    """All-reduce a family's evaluation sums (scalars, or arrays such as score histograms) and their
    ``count``; then ``finalize(sums, count)`` (a family's own metrics, e.g. AUC from histograms) or, by
    default, every scalar sum divided by the count."""
    names = sorted(k for k in sums if k != "count")
    parts = [np.atleast_1d(np.asarray(sums[k], dtype=np.float64)).ravel() for k in names]
    total = np.asarray(coll.sum(np.concatenate(parts + [np.array([float(sums["count"])])])))
    reduced, i = {}, 0
    for k, p in zip(names, parts):
        reduced[k] = total[i:i + len(p)] if np.ndim(sums[k]) else float(total[i])
        i += len(p)
    count = float(total[-1])
    if finalize is not None:
        return finalize(reduced, count)
    return {k: v / max(count, 1.0) for k, v in reduced.items()}


class _Agreed(Exception):
    """Every rank agreed that a deterministic error happened: ``args[0]`` = (class name, message, exit code)."""


def _semrec_error(exc: Exception) -> SemrecError:
    """``exc``'s SemrecError (also inside Ray's wrappers, e.g. a streamed read's RayTaskError), or ``exc``
    re-raised: only deterministic errors are agreed on."""
    err = find_semrec_error(exc)
    if err is None:
        raise exc
    return err


def agree(coll: Collective, err: SemrecError | None) -> None:
    """Called by every rank at the same point: raises ``_Agreed`` on all of them if any had ``err``."""
    if coll.sum([float(err is not None)])[0]:
        _raise_agreed(coll, err)


def _raise_agreed(coll: Collective, err: SemrecError | None):
    mine = None if err is None else (type(err).__name__, user_message(err), err.exit_code)
    raise _Agreed(next(e for e in coll.gather(mine) if e is not None))


def fit(make_family: Callable[[], Family], train: dict, rank: int, world: int,
        device: torch.device | None = None) -> None:
    """Train the family ``make_family()`` (e.g. ``partial(SeqRecFamily, config)``: made here, so that bad input
    met while it loads its data is agreed on too) with the settings ``train`` (TrainSettings as a dict) inside
    a Ray Train worker; a deterministic error agreed on by every rank is reported as the final result
    (``failed``), not raised."""
    threads = torch.get_num_threads()
    try:
        _fit(make_family, train, rank, world, device)
    except _Agreed as agreed:
        kind, message, exit_code = agreed.args[0]
        if rank == 0:
            log.error("stopping the run (not retried: the same input fails the same way): %s", message)
        failure = {"failed": kind, "error": message, "exit_code": exit_code, "done": True}
        # Ray Train's result carries the metrics of checkpointed reports
        report_checkpoint(train, failure, "checkpoint_failed",
                          (lambda d: (d / META_FILE).write_text(json.dumps(failure))) if rank == 0 else None)
    finally:
        if train.get(LOCAL_RUN_DIR):
            torch.set_num_threads(threads)  # an in-process run leaves the driver's torch as it found it


def _fit(make_family: Callable[[], Family], train: dict, rank: int, world: int, device: torch.device | None) -> None:
    import ray.train
    import ray.train.torch

    torch.set_num_threads(train["threads"])
    try:
        family = make_family()
        torch.manual_seed(train["seed"])  # the same initial weights on every rank (DDP also broadcasts rank 0's)
        model, err = family.build(), None
        if train.get("init_from"):  # warm start: published weights (a checkpoint, when resuming, overrides them)
            from semrec.models.artefact import load_weights

            load_weights(model, train["init_from"])
    except Exception as e:  # noqa: BLE001 -- a SemrecError is agreed on; anything else is re-raised
        model, err = None, _semrec_error(e)
    coll = Collective(world, device or ray.train.torch.get_device())  # where the model and its collectives live
    agree(coll, err)
    if world > 1:
        model = ray.train.torch.prepare_model(model, parallel_strategy_kwargs={"broadcast_buffers": False})
    else:
        model = model.to(device or ray.train.torch.get_device())
    device = next(model.parameters()).device
    torch.manual_seed(train["seed"] * 1_000_003 + rank)  # per-rank dropout
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=train["lr"], betas=(0.9, 0.999), weight_decay=train["weight_decay"])
    start, best, best_epoch, bad, best_state, prior_s, step = 0, float("-inf"), -1, 0, None, 0.0, 0
    ckpt = latest_checkpoint(train)
    if ckpt:
        with ckpt.as_directory() as d:
            state = torch.load(Path(d) / STATE_FILE, weights_only=True)
        load_state(model, state["model"])
        opt.load_state_dict(state["optimizer"])
        rngs = state["rng"]
        if len(rngs) != world:
            raise RuntimeError(f"the checkpoint was written by {len(rngs)} workers, this run has {world}: resume "
                               f"with --train.num_workers {len(rngs)} (or a new --run_name)")
        set_rng_state(rngs[rank])
        start, best, best_epoch, bad = state["epoch"] + 1, state["best"], state["best_epoch"], state["bad"]
        best_state, prior_s = state["best_model"], float(state.get("train_s", 0.0))
        step = int(state.get("step", 0))  # checkpoints from before the schedule: warm-up restarts
    clock = time.perf_counter()

    def report(metrics: dict, epoch: int, done: bool) -> None:
        train_s = prior_s + time.perf_counter() - clock
        metrics.update({"epoch": epoch, "best_epoch": best_epoch, f"best_{family.metric}": best,
                        "train_s": round(train_s, 1), "done": done})
        rngs = coll.gather(rng_state())

        def write(d: Path) -> None:
            torch.save({"model": _state_dict(model), "optimizer": opt.state_dict(),
                        "rng": rngs, "epoch": epoch, "step": step, "best": best, "best_epoch": best_epoch, "bad": bad,
                        "best_model": best_state, "train_s": train_s}, d / STATE_FILE)
            (d / META_FILE).write_text(json.dumps(
                {k: v for k, v in metrics.items() if isinstance(v, (int, float, bool))}))

        report_checkpoint(train, metrics, f"checkpoint_{epoch:06d}", write if rank == 0 else None)

    epoch = start - 1
    for epoch in range(start, train["epochs"]):
        t0, total, examples, steps = time.perf_counter(), 0.0, 0, 0
        last_log = t0
        model.train()
        it = iter(family.batches(epoch, rank, world))
        cap = train.get("max_steps_per_epoch")
        while True:
            try:
                batch, err = (next(it, None) if not (cap and steps >= cap) else None), None
            except Exception as e:  # noqa: BLE001 -- e.g. bad input met in a streamed shard
                batch, err = None, _semrec_error(e)
            count = family.size(batch) if batch is not None else 0
            have, global_count, failed = coll.sum([float(batch is not None), float(count), float(err is not None)])
            if failed:  # one collective with the step's counts: no rank is left waiting in another
                _raise_agreed(coll, err)
            if not have:  # every rank's shard is done: the same step count everywhere
                break
            loss_sum = family.loss(model, batch if batch is not None else family.empty_batch())
            loss = loss_sum * world / max(global_count, 1.0)  # DDP averages over ranks: this is the global mean
            opt.zero_grad(set_to_none=True)
            loss.backward()
            lr = lr_at(train, step, epoch)
            for group in opt.param_groups:
                group["lr"] = lr
            opt.step()
            step += 1
            total += float(loss_sum.detach())
            examples += count
            steps += 1
            if rank == 0 and time.perf_counter() - last_log >= PROGRESS_EVERY_S:  # long epochs (LLMs) show life
                last_log = time.perf_counter()
                log.info("epoch %d: step %d%s, %d examples on rank 0, mean loss %.4f, %.0f s", epoch + 1, steps,
                         f"/{cap}" if cap else "", examples, total / max(examples, 1), last_log - t0)
        train_loss, examples_all, pass_s = coll.sum([total, float(examples), time.perf_counter() - t0])
        pass_s /= world  # the training pass's seconds, averaged over ranks
        metrics = {f"valid_{k}": v for k, v in evaluate(family, _unwrap(model), "valid", rank, world, False,
                                                         coll).items()}
        score = metrics[f"valid_{family.metric}"]
        if score > best:
            best, best_epoch, bad, best_state = score, epoch, 0, _state_dict(model)
        else:
            bad += 1
        secs = time.perf_counter() - t0
        metrics.update({"train_loss": train_loss / max(examples_all, 1.0), "epoch_s": round(secs, 2),
                        "train_pass_s": round(pass_s, 2), "examples": int(examples_all),
                        "examples_per_s": round(examples_all / secs, 1),
                        "train_examples_per_s_per_worker": round(examples_all / world / max(pass_s, 1e-9), 1),
                        "steps": steps, "lr": lr_at(train, max(step - 1, 0), epoch)})
        if rank == 0:
            log.info("epoch %d/%d: loss %.4f, valid %s %.4f (best %.4f at epoch %d), %.1f s (training pass %.1f s, "
                     "%.0f examples/s per worker, %d workers, lr %.3g)", epoch + 1, train["epochs"], metrics["train_loss"],
                     family.metric, score, best, best_epoch + 1, secs, pass_s,
                     metrics["train_examples_per_s_per_worker"], world, metrics["lr"])
        stop = bad >= train["patience"] or epoch == train["epochs"] - 1
        if stop:
            metrics.update(final_metrics(family, model, best_state, rank, world, coll))
        report(metrics, epoch, stop)
        if stop:
            return
    # the epoch cap was already reached by the checkpoint we resumed from (e.g. a run capped with a lower
    # --train.epochs): evaluate its best model and finish
    if best_state is None:
        raise RuntimeError("nothing to evaluate: the run has no trained epoch (raise --train.epochs)")
    if rank == 0:
        log.info("epoch cap %d reached by the checkpoint (epoch %d): evaluating its best model (epoch %d)",
                 train["epochs"], epoch + 1, best_epoch + 1)
    report(final_metrics(family, model, best_state, rank, world, coll), epoch, True)


def report_checkpoint(train: dict, metrics: dict, name: str, write: Callable[[Path], None] | None) -> None:
    """``ray.train.report(metrics)`` with the checkpoint ``write(folder)`` fills (rank 0; other ranks pass
    None). With workers the folder is temporary and Ray Train copies it into the run's storage; in an
    in-process run (``--train.num_workers 0``: Ray Train's local mode keeps only the object it is given) the
    engine publishes it itself as ``<run dir>/<name>`` (written aside, then renamed, marked with
    ``IN_PROCESS_MARKER``) and keeps its newest ``KEEP_CHECKPOINTS``, as Ray Train would."""
    import ray.train

    local = train.get(LOCAL_RUN_DIR)
    if write is None:
        ray.train.report(metrics, checkpoint=None)
    elif not local:
        with tempfile.TemporaryDirectory() as d:
            write(Path(d))
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))
    else:
        run = Path(local)
        final, tmp = run / name, run / f".{name}.partial"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        write(tmp)
        (tmp / IN_PROCESS_MARKER).touch()
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        for old in sorted(p.parent for p in run.glob(f"checkpoint_*/{IN_PROCESS_MARKER}"))[:-KEEP_CHECKPOINTS]:
            shutil.rmtree(old)  # its own only: a worker run resumed in-process keeps Ray Train's
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(str(final)))


def latest_checkpoint(train: dict):
    """The checkpoint to resume from: Ray Train's (restored from the run's snapshot) or, in an in-process
    run, the newest one under the run's folder (a worker run's checkpoints included)."""
    import ray.train

    local = train.get(LOCAL_RUN_DIR)
    if not local:
        return ray.train.get_checkpoint()
    found = [(m.get("epoch", -1), str(d)) for m, d in resumable_checkpoints(Path(local), in_process=True)]
    return ray.train.Checkpoint.from_directory(max(found)[1]) if found else None


def checkpoint_metas(run_dir: Path) -> list[tuple[dict, Path]]:
    """(metadata, folder) of every checkpoint under ``run_dir`` that rank 0 wrote (``META_FILE``); one
    still being written is skipped."""
    out = []
    for p in Path(run_dir).glob(f"**/{META_FILE}"):
        try:
            out.append((json.loads(p.read_text()), p.parent))
        except (OSError, ValueError):  # being written
            continue
    return out


RAY_TRAIN_SNAPSHOT = "checkpoint_manager_snapshot.json"  # Ray Train's record of a run's reported checkpoints


def resumable_checkpoints(run_dir: Path, in_process: bool) -> list[tuple[dict, Path]]:
    """(metadata, folder) of the checkpoints a rerun of ``run_dir`` resumes from. In-process: every complete
    one (``latest_checkpoint`` picks the newest). On workers: those Ray Train's controller recorded in its
    snapshot, since it restores only those; a checkpoint written but not yet recorded when the job died is not
    restored (Ray Train resumes from an older one, or starts over)."""
    snap = Path(run_dir) / RAY_TRAIN_SNAPSHOT
    recorded = snap.read_text() if snap.exists() else ""
    return [(m, d) for m, d in checkpoint_metas(run_dir)
            if (d / STATE_FILE).exists() and not d.name.endswith(".partial") and
            (in_process or (d / IN_PROCESS_MARKER).exists() or d.name in recorded)]


def final_metrics(family: Family, model: nn.Module, best_state: dict, rank: int, world: int,
                  coll: Collective) -> dict[str, float]:
    """Test and validation metrics of the best epoch's weights, on a copy (the live model stays as it is)."""
    best_model = copy.deepcopy(_unwrap(model))
    load_state(best_model, best_state)
    out = {f"test_{k}": v for k, v in evaluate(family, best_model, "test", rank, world, True, coll).items()}
    out.update({f"final_valid_{k}": v for k, v in
                evaluate(family, best_model, "valid", rank, world, True, coll).items()})
    return out


def evaluate(family: Family, model: nn.Module, split: str, rank: int, world: int, final: bool,
             coll: Collective) -> dict[str, float]:
    """The family's metrics on ``split``: its sharded sums, reduced over every rank (a SemrecError on any
    rank, e.g. NaN scores, is agreed on first)."""
    try:
        sums, err = family.evaluate(model, split, rank, world, final), None
    except Exception as e:  # noqa: BLE001
        sums, err = None, _semrec_error(e)
    agree(coll, err)
    return reduce_metrics(coll, sums, getattr(family, "finalize", None))


@contextmanager
def driver_progress(run_dir: Path, epochs: int, metric: str, every_s: float = 2.0) -> Iterator[None]:
    """A progress bar on the driver while ``trainer.fit()`` runs: epochs done out of ``epochs``, with the
    latest validation metric and the best so far, read from the checkpoints rank 0 writes under ``run_dir``."""
    from tqdm import tqdm

    stop = threading.Event()

    def watch() -> None:
        bar = tqdm(total=epochs, desc=f"training {Path(run_dir).name}", unit="epoch", file=sys.stderr,
                   mininterval=every_s, dynamic_ncols=True)
        seen = -1

        def update() -> None:
            nonlocal seen
            metas = [meta for meta, _ in checkpoint_metas(run_dir)]
            m = max(metas, key=lambda x: x.get("epoch", -1), default={})
            if m.get("epoch", -1) > seen:
                seen = m["epoch"]
                bar.n = min(seen + 1, epochs)
                bar.set_postfix({f"valid {metric}": round(m.get(f"valid_{metric}", float("nan")), 4),
                                 "best": round(m.get(f"best_{metric}", float("nan")), 4)}, refresh=True)

        while not stop.wait(every_s):
            update()
        update()  # the last epoch's checkpoint may land just before fit() returns
        bar.close()

    thread = threading.Thread(target=watch, name="semrec-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)
