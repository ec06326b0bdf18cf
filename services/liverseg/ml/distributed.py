"""Data-parallel training processes: the launcher, and the few collectives the training loop needs.

``launch`` runs rank 0 in the calling process (the train stage: it alone has the store, so it alone writes) and
ranks 1… as spawned processes, one per GPU (NCCL) or CPU share (gloo). They meet through a file in a work folder,
so no port has to be chosen. A rank that dies takes the others down, never leaving them waiting: every collective
has a timeout; gloo fails the others' next collective at once; a watcher in the launcher stops every rank as soon
as one exits with an error and names it (ending the launcher itself if its own rank stays stuck, as NCCL can until
its timeout); a spawned rank whose launcher died stops by itself.
"""

from __future__ import annotations

import itertools
import logging
import multiprocessing
import multiprocessing.connection
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from liverseg.errors import EXIT_FAILED, CannotRun

__all__ = [
    "COLLECTIVE_TIMEOUT_S", "RankFailed", "Ranks", "broadcast_flag", "gather", "interleave", "launch", "mean_of",
    "sum_of", "sync_buffers",
]

log = logging.getLogger(__name__)
R = TypeVar("R")

# Longest a rank waits for the others at one collective: above rank 0's longest lone work between two of them
# (a checkpoint upload), far below a training run.
COLLECTIVE_TIMEOUT_S = 600.0
# After a rank died: how long the launcher's own rank may take to fail its collective before the launcher ends.
STUCK_GRACE_S = 30.0
JOIN_TIMEOUT_S = 120.0


class RankFailed(CannotRun):
    """A training process died or failed: the run stops (and, run again, resumes from its last checkpoint)."""


@dataclass(frozen=True)
class Ranks:
    """This process's place among the training processes."""

    rank: int = 0
    world_size: int = 1

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def device(self, device_type: str) -> torch.device:
        """The device of this rank: its own GPU (cuda:rank), or the CPU."""
        return torch.device("cuda", self.rank) if device_type == "cuda" else torch.device("cpu")


def _init_group(ranks: Ranks, device_type: str, init_method: str, timeout_s: float) -> None:
    if device_type == "cuda":
        torch.cuda.set_device(ranks.rank)
    dist.init_process_group("nccl" if device_type == "cuda" else "gloo", init_method=init_method, rank=ranks.rank,
                            world_size=ranks.world_size, timeout=timedelta(seconds=timeout_s))


def _end_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def _stop_with(parent: int) -> None:
    """End this process when the one that launched it is gone (its pod was killed, or it was killed alone)."""
    def watch() -> None:
        while os.getppid() == parent:
            threading.Event().wait(1.0)
        os._exit(EXIT_FAILED)
    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _rank_main(ranks: Ranks, parent: int, device_type: str, init_method: str, folder: str, timeout_s: float,
               target: Callable[..., None], args: tuple) -> None:
    """A spawned rank: join the group, run ``target(ranks, *args)``; a failure is logged, left in ``folder`` for
    the launcher to name, and ends the process with exit code 1."""
    _stop_with(parent)
    code = 0
    try:
        _init_group(ranks, device_type, init_method, timeout_s)
        target(ranks, *args)
    except BaseException as exc:
        reason = f"{type(exc).__name__}: {exc}"
        Path(folder, f"rank{ranks.rank}.error").write_text(reason)
        log.error("training rank failed", extra={"rank": ranks.rank, "error": reason})
        code = EXIT_FAILED
    finally:
        _end_group()
    # Done: end here rather than in the interpreter's teardown, which can abort on threads the communication
    # library still holds ("terminate called without an active exception": it would read as a crash).
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


class _Watcher(threading.Thread):
    """Watches the spawned ranks (the only thread that reaps them); the first that exits with an error stops the
    others. ``all_exited`` is set once every one has exited."""

    def __init__(self, children: dict[int, multiprocessing.Process], folder: Path):
        super().__init__(name="rank-watch", daemon=True)
        self.children, self.folder = children, folder
        self.failure: str | None = None
        self.failed, self.all_exited, self.done = threading.Event(), threading.Event(), threading.Event()

    def run(self) -> None:
        waiting = dict(self.children)
        while waiting and not self.done.is_set():
            for sentinel in multiprocessing.connection.wait([c.sentinel for c in waiting.values()], timeout=1.0):
                rank = next(r for r, c in waiting.items() if c.sentinel == sentinel)
                child = waiting.pop(rank)
                child.join()
                if child.exitcode != 0 and not self.done.is_set():
                    self._fail(rank, child.exitcode)
                    return
        if not waiting:
            self.all_exited.set()

    def _fail(self, rank: int, code: int) -> None:
        error = self.folder / f"rank{rank}.error"
        why = error.read_text() if error.exists() else ("killed by signal " + str(-code) if code < 0 else "no error")
        self.failure = f"training rank {rank} of {len(self.children) + 1} exited with code {code} ({why})"
        log.error("a training rank died: stopping the others", extra={"rank": rank, "error": self.failure})
        for child in self.children.values():
            if child.is_alive():
                child.terminate()
        self.failed.set()
        if not self.done.wait(STUCK_GRACE_S):
            log.error("rank 0 did not stop after a rank died: ending the training", extra={"error": self.failure})
            os._exit(EXIT_FAILED)


def launch(world_size: int, device_type: str, folder: Path, rank0: Callable[[Ranks], R],
           target: Callable[..., None], args: Sequence[Any] = (), timeout_s: float = COLLECTIVE_TIMEOUT_S) -> R:
    """Run ``world_size`` ranks: ``rank0(Ranks(0, N))`` here, ``target(Ranks(r, N), *args)`` in a spawned process
    for r = 1…N-1 (``target`` and ``args`` must be picklable). Returns what ``rank0`` returns.

    Args:
        world_size: processes (each on its own GPU with ``device_type`` "cuda").
        device_type: "cuda" (NCCL) or "cpu" (gloo).
        folder: an empty local folder for the rendezvous file and the ranks' error notes.
        rank0: the launcher's own rank.
        target: what every other rank runs.
        args: more arguments of ``target``.
        timeout_s: longest wait at one collective operation.

    Raises:
        RankFailed: a rank died or failed (naming it), or did not finish.
    """
    folder.mkdir(parents=True, exist_ok=True)
    init_method = f"file://{folder.resolve() / 'rendezvous'}"
    spawn = multiprocessing.get_context("spawn")  # CUDA cannot be forked
    children = {rank: spawn.Process(target=_rank_main, name=f"train-rank-{rank}",
                                    args=(Ranks(rank, world_size), os.getpid(), device_type, init_method, str(folder),
                                          timeout_s, target, tuple(args)))
                for rank in range(1, world_size)}
    for child in children.values():
        child.start()
    watcher = _Watcher(children, folder)
    watcher.start()
    try:
        _init_group(Ranks(0, world_size), device_type, init_method, timeout_s)
        result = rank0(Ranks(0, world_size))
        deadline = time.monotonic() + JOIN_TIMEOUT_S
        while not (watcher.all_exited.is_set() or watcher.failed.is_set()) and time.monotonic() < deadline:
            watcher.all_exited.wait(0.1)
        if not watcher.all_exited.is_set():
            late = sorted(r for r, c in children.items() if c.is_alive())
            raise RankFailed(watcher.failure or f"training ranks {late} still ran {JOIN_TIMEOUT_S:g} s after rank 0")
        return result
    except RankFailed:
        raise
    except BaseException as exc:
        # A collective that failed because another rank died: name that rank rather than the broken connection.
        if watcher.failed.wait(5.0 if isinstance(exc, RuntimeError) else 0.0):
            raise RankFailed(watcher.failure) from exc
        if isinstance(exc, RuntimeError) and any(w in str(exc).lower() for w in ("timeout", "timed out")):
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise RankFailed(f"the training ranks stopped answering each other: a collective operation waited "
                             f"more than {timeout_s:g} s ({first})") from exc
        raise
    finally:
        watcher.done.set()
        watcher.join(2.0)
        _end_group()
        for child in children.values():
            if child.is_alive():
                child.terminate()
            child.join(10.0)
            if child.is_alive():  # stopped, or deaf to SIGTERM
                child.kill()
                child.join()


# -- collectives (every rank calls each, in the same order) -----------------------------------------------------
def _tensor(values: Sequence[float], device: torch.device) -> torch.Tensor:
    # NCCL reduces only tensors on the rank's GPU; float64 so that sums of per-step losses lose nothing.
    return torch.tensor(values, dtype=torch.float64, device=device)


def mean_of(values: Sequence[float], device: torch.device) -> float:
    """The mean of every rank's ``values`` together (the same figure on every rank)."""
    total = _tensor([sum(values), len(values)], device)
    dist.all_reduce(total)
    return float(total[0] / total[1])


def sum_of(value: int, device: torch.device) -> int:
    total = _tensor([value], device)
    dist.all_reduce(total)
    return int(total[0])


def broadcast_flag(flag: bool, device: torch.device) -> bool:
    """Rank 0's ``flag`` on every rank: decisions that end the loop (the time budget) must be the same."""
    value = _tensor([float(flag)], device)
    dist.broadcast(value, src=0)
    return bool(value[0])


def gather(values: list[float]) -> list[list[float]]:
    """Every rank's ``values``, in rank order, on every rank."""
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, values)
    return gathered


def interleave(per_rank: list[list[float]]) -> list[float]:
    """Undo a ``[r::N]`` split: rank r held items r, r + N, r + 2N, … of the whole list."""
    return [v for group in itertools.zip_longest(*per_rank) for v in group if v is not None]


def sync_buffers(module: torch.nn.Module) -> None:
    """Rank 0's buffers (batch-norm running statistics) on every rank. Parameters agree after every step; each
    rank's buffers follow its own batches, so validation and checkpoints use rank 0's."""
    for buffer in module.buffers():
        dist.broadcast(buffer, src=0)
