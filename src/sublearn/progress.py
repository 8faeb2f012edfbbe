"""A job's progress, for whoever watches it: a line in its log at a steady pace (runs or teachers done out
of the job's total, time elapsed, estimated time left) and the same, as JSON, in a small file beside its
sheet (`SHEET.progress.json`), which `sublearn status` reads. Torch-free.

Time left: before the first run is done, the cost model's FLOPs at the planned rate (``gflops``, the
config's batch.gflops) less the time spent; then the FLOPs still to do at the rate measured so far, less
the time since the last run finished (so the estimate counts down between runs).
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from pathlib import Path

from . import cost
from .catalog import dataset_key
from .outputs import atomic_write_text

INTERVAL_S = 30.0  # a progress line at least this often


def progress_file(sheet: str | Path) -> Path:
    """Where a job with this sheet keeps its progress."""
    sheet = Path(sheet)
    return sheet.with_name(sheet.name.removesuffix(".jsonl") + ".progress.json")


def duration(seconds: float | None) -> str:
    """'45 s', '12 min', '3.4 h'."""
    if seconds is None:
        return "unknown"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


class Progress:
    """Runs (or teachers) done out of a job's total, with the time left; reported by ``advance`` and, while
    the job runs, every ``interval`` seconds from a timer thread. Use it as a context manager."""

    def __init__(self, what: str, total: int, total_flops: float, status_file: str | Path | None = None,
                 gflops: float | None = None, interval: float = INTERVAL_S, out=print):
        self.what, self.total, self.total_flops = what, total, float(total_flops)
        self.status_file = Path(status_file) if status_file else None
        self.gflops, self.interval, self.out = gflops, interval, out
        self.flops_of: dict[str, float] | None = None  # item id -> its FLOPs (of_runs, of_teachers)
        self.done = 0
        self.done_flops = 0.0
        self.started = self.last_done = time.time()
        self._lock, self._write = threading.Lock(), threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Progress:
        self.report()
        if self.interval:
            self._thread = threading.Thread(target=self._tick, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, kind, error, trace) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.report("finished" if kind is None else "failed")

    def _tick(self) -> None:
        while not self._stop.wait(self.interval):
            self.report()

    def advance(self, item) -> None:
        """One more run (or teacher) done: ``item`` (with an ``id``) of ``flops_of``, else of ``item`` FLOPs."""
        flops = self.flops_of[item.id] if self.flops_of is not None else float(item)
        with self._lock:
            self.done += 1
            self.done_flops += flops
            self.last_done = time.time()
        self.report()

    def seconds_left(self, now: float | None = None) -> float | None:
        now = time.time() if now is None else now
        with self._lock:
            if self.done >= self.total:
                return 0.0
            if self.done_flops > 0:
                rate = self.done_flops / max(self.last_done - self.started, 1e-9)
                return max(0.0, (self.total_flops - self.done_flops) / rate - (now - self.last_done))
        if self.gflops:
            return max(0.0, self.total_flops / (self.gflops * 1e9) - (now - self.started))
        return None

    def record(self, state: str = "running") -> dict:
        now = time.time()
        return {"what": self.what, "done": self.done, "total": self.total, "state": state,
                "elapsed_s": round(now - self.started, 1), "left_s": self.seconds_left(now),
                "flops_done": self.done_flops, "flops_total": self.total_flops, "updated": now,
                "pid": os.getpid(), "host": socket.gethostname()}

    def line(self, record: dict) -> str:
        left = "" if record["state"] != "running" else f", ~{duration(record['left_s'])} left"
        return (f"[progress] {record['done']}/{record['total']} {self.what} done, {duration(record['elapsed_s'])} "
                f"elapsed{left}" + ("" if record["state"] == "running" else f" ({record['state']})"))

    def report(self, state: str = "running") -> None:
        with self._write:  # the timer thread and the job's own thread
            record = self.record(state)
            self.out(self.line(record), flush=True)
            if self.status_file is not None:
                try:
                    atomic_write_text(self.status_file, json.dumps(record) + "\n")
                except OSError:  # progress is for watching: a full disk must not fail the job here
                    pass


def _with_flops(what: str, flops_of: dict[str, float], sheet, gflops: float | None) -> Progress:
    progress = Progress(what, len(flops_of), sum(flops_of.values()), progress_file(sheet), gflops)
    progress.flops_of = flops_of
    return progress


def of_runs(stacks, sheet, gflops: float | None = None) -> Progress:
    """A batch job's progress over its stacks' runs (``advance(run)``), each run its stack's FLOPs over its size."""
    return _with_flops("runs", {run.id: cost.stack_flops(stack, dataset_key(run.rc.config.dataset,
                                                                            run.rc.config.emnist_split)) / len(stack)
                                for stack in stacks for run in stack}, sheet, gflops)


def of_teachers(teachers, sheet, gflops: float | None = None) -> Progress:
    """A teacher job's progress over its teachers (``advance(teacher)``)."""
    return _with_flops("teachers", {t.id: cost.teacher_flops(t.rc, dataset_key(t.rc.config.dataset,
                                                                               t.rc.config.emnist_split))
                                    for t in teachers}, sheet, gflops)
