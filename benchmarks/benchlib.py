"""Helpers of the benchmark suites: peak-RSS sampling, result stores and tables."""

import contextlib
import fcntl
import json
import statistics
import threading
import time
from pathlib import Path

import psutil

RESULTS = Path(__file__).resolve().parent / "results"


class PeakRSS:
    """Samples the summed RSS of this process and all its descendants (Ray's raylet, workers, actors)
    every ``interval`` seconds; ``peak_total`` and ``peak_single`` in bytes, and ``peak_titled``: the peak
    of any one process whose title (Ray sets e.g. ``ray::RayTrainWorker...``) contains ``title``;
    ``peak_single_title``: the title of the process that set ``peak_single``; ``peak_private`` and
    ``peak_private_title``: the same for RSS minus the process's shared pages (psutil's ``shared``: file-backed
    and shared-memory pages, among them the Ray object store pages the process has mapped, which every worker
    maps and the object store's size caps)."""

    def __init__(self, interval: float = 0.1, children: bool = True, title: str | None = None):
        self.interval, self.children, self.title = interval, children, title
        self.peak_total = 0
        self.peak_single = 0
        self.peak_single_title = ""
        self.peak_private = 0
        self.peak_private_title = ""
        self.peak_titled = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        me = psutil.Process()
        while not self._stop.is_set():
            total = 0
            for p in [me, *(me.children(recursive=True) if self.children else [])]:
                try:
                    mem = p.memory_info()
                except psutil.Error:
                    continue
                rss = mem.rss
                total += rss
                if rss > self.peak_single:
                    self.peak_single, self.peak_single_title = rss, _title(p)
                if rss - mem.shared > self.peak_private:
                    self.peak_private, self.peak_private_title = rss - mem.shared, _title(p)
                if self.title and rss > self.peak_titled and self.title in _title(p):
                    self.peak_titled = rss
            self.peak_total = max(self.peak_total, total)
            time.sleep(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def _title(p: psutil.Process) -> str:
    """A process's title: its first command-line word, where Ray writes e.g. ``ray::RayTrainWorker...``."""
    try:
        cmd = p.cmdline()
    except psutil.Error:
        return ""
    return cmd[0].strip() if cmd else ""


@contextlib.contextmanager
def locked_runs(name: str, sort_keys: bool = True):
    """The runs stored in results/{name}.json, as a dict to update: read, and written back on exit, under an
    exclusive lock (experiments of one suite may run in parallel processes)."""
    RESULTS.mkdir(exist_ok=True)
    store = RESULTS / f"{name}.json"
    with open(RESULTS / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        runs = json.loads(store.read_text()) if store.exists() else {}
        yield runs
        store.write_text(json.dumps(runs, indent=2, sort_keys=sort_keys) + "\n")


def latency_ms(fn, n: int, warmup: int = 0) -> tuple[float, float]:
    """Median and p99 wall time (ms) of ``fn(i)`` for i in 0..n-1, after ``warmup`` untimed calls ``fn(0)``
    (first calls allocate, and after a large call page faults bring memory back in)."""
    for _ in range(warmup):
        fn(0)
    times = []
    for i in range(n):
        t0 = time.perf_counter()
        fn(i)
        times.append(time.perf_counter() - t0)
    times.sort()
    return 1000 * statistics.median(times), 1000 * times[int(0.99 * (len(times) - 1))]


def write_result(name: str, markdown: str) -> None:
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.md").write_text(markdown.rstrip() + "\n")
    print("\n" + markdown)
