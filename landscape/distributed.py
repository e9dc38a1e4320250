"""Running under ``torchrun``: ranks, sample shards, one all-reduce, and a work queue for grid points.

Nothing here holds state: every function asks ``torch.distributed`` whether a process group is initialized
and, when none is (or it has one process), does the single-process thing, so the analysis code calls these
helpers unconditionally.

Why a work queue on the process group's key-value store rather than collectives: surface points take unequal
time (a reattack point runs PGD; a point far from theta0 may be slower on some hardware), and collectives
would put every rank in lockstep with the slowest. The store (the TCPStore ``torchrun`` already runs) gives
an atomic counter (``add``) from which each rank takes the next unfinished point, and one key per finished
point through which its result travels to rank 0 (``set``/``check``/``get``, which every store implements;
the FileStore of ``init_method="file://..."`` has no queues). ``torch.distributed`` exposes the default store
only as ``_get_default_store``; it is wrapped here, in one place.
"""
from __future__ import annotations

import json
import math
import os
import time
import uuid
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from .errors import ConfigError, LandscapeError


@dataclass(frozen=True)
class World:
    """This process's place in the process group (rank 0 of 1 when there is none)."""
    rank: int = 0
    size: int = 1

    @property
    def main(self) -> bool:
        """True on the process that writes results (rank 0)."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        """True when work is shared between several processes."""
        return self.size > 1


def group_initialized() -> bool:
    """True when this process is in a torch.distributed process group."""
    return dist.is_available() and dist.is_initialized()


def world() -> World:
    """The current process group's rank and size, or ``World(0, 1)`` when none is initialized."""
    if group_initialized():
        return World(dist.get_rank(), dist.get_world_size())
    return World()


def launched_by_torchrun() -> bool:
    """True when the environment says this process is one of several (``WORLD_SIZE`` > 1)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1
    except ValueError:
        return False


def init_from_env(device: torch.device) -> tuple[World, torch.device]:
    """Join the process group ``torchrun`` describes in the environment (no-op for a single process).

    Backend: ``nccl`` for CUDA (each rank on ``cuda:LOCAL_RANK``), ``gloo`` on CPU. Returns the world and the
    device this rank should use. Cost: one rendezvous.
    """
    if not launched_by_torchrun() or group_initialized():
        return world(), device
    if not dist.is_available():
        raise LandscapeError("torch.distributed is not available in this PyTorch build; run without torchrun")
    if device.type == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if local >= torch.cuda.device_count():
            raise LandscapeError(f"LOCAL_RANK {local} but only {torch.cuda.device_count()} CUDA devices; "
                                 "use --nproc-per-node <= the number of GPUs")
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    try:
        dist.init_process_group(backend, device_id=device if device.type == "cuda" else None)
    except (RuntimeError, ValueError) as e:
        raise LandscapeError(f"cannot join the torchrun process group ({backend}): {str(e).splitlines()[0]}") from e
    return world(), device


def check_sync_bn(device: torch.device | str) -> None:
    """SyncBatchNorm (``--sync-bn``) exchanges statistics between GPUs only: its forward pass refuses CPU
    inputs with a ``ValueError`` in every process. Refused here, in one line, before any work."""
    if torch.device(device).type != "cuda":
        raise ConfigError("--sync-bn needs GPUs with nccl (SyncBatchNorm runs on CUDA only); on CPUs under torchrun "
                          "drop --sync-bn (each process then normalizes its own shard)")


def finish(clean: bool = True, refused: bool = False) -> None:
    """Leave the process group if one is initialized (end of a console script). On gloo the processes first
    meet at a barrier: after a clean end (at most 60 s), so that none tears its gloo threads down while a
    peer's last messages are in flight (a rare abort at exit, "terminate called without an active
    exception", seen once in 2-process training under load); after a refusal (``refused``: at most 10 s), so
    that every rank has printed its one line before the first to exit makes torchrun stop the others (about
    1 run in 4 lost rank 1's line). After a crash nobody waits."""
    if not group_initialized():
        return
    if (clean or refused) and dist.get_backend() == "gloo":
        import datetime
        try:
            dist.monitored_barrier(timeout=datetime.timedelta(seconds=60 if clean else 10))
        except RuntimeError:
            pass    # a peer ended otherwise: leave anyway
    dist.destroy_process_group()


# --- samples ---------------------------------------------------------------------------------------------

def shard_bounds(n: int, w: World, unit: int = 1) -> tuple[int, int]:
    """This rank's contiguous slice ``[lo, hi)`` of ``n`` samples, cut on multiples of ``unit``.

    The ``ceil(n / unit)`` blocks of ``unit`` samples are shared out as evenly as possible (rank r gets
    blocks ``[r*B//size, (r+1)*B//size)``), so a block (an attack batch, a BatchNorm batch) is never split:
    the samples of each block are processed exactly as a single process processes them. A rank may get
    no samples when there are fewer blocks than ranks.
    """
    if unit < 1:
        raise ConfigError(f"shard unit must be positive, got {unit}")
    blocks = math.ceil(n / unit)
    lo_b, hi_b = w.rank * blocks // w.size, (w.rank + 1) * blocks // w.size
    return min(lo_b * unit, n), min(hi_b * unit, n)


def shard_sizes(n: int, size: int, unit: int = 1) -> list[int]:
    """The number of samples ``shard_bounds`` gives each of ``size`` ranks."""
    return [hi - lo for lo, hi in (shard_bounds(n, World(r, size), unit) for r in range(size))]


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum ``t`` over ranks in place (one all-reduce; nothing without a process group). Every rank receives
    the same values, so drivers that branch on them stay in step."""
    if world().active:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_gather_rows(t: torch.Tensor, counts: list[int]) -> torch.Tensor:
    """Concatenate every rank's ``t`` (``counts[r]`` rows on rank r, same trailing shape) in rank order.
    One all-gather of padded blocks."""
    w = world()
    if not w.active:
        return t
    most = max(max(counts), 1)
    padded = torch.zeros((most, *t.shape[1:]), dtype=t.dtype, device=t.device)
    padded[:len(t)] = t
    blocks = [torch.empty_like(padded) for _ in range(w.size)]
    dist.all_gather(blocks, padded)
    return torch.cat([b[:c] for b, c in zip(blocks, counts)])


def broadcast_from_main(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (a pickled broadcast of trusted data made by rank 0 of this job)."""
    if not world().active:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def broadcast_tensor(t: torch.Tensor) -> torch.Tensor:
    """Rank 0's values of ``t`` (same shape and dtype on every rank), in place."""
    if world().active:
        dist.broadcast(t, src=0)
    return t


def run_on_main(fn, *args, **kwargs) -> Any:
    """Run ``fn`` on rank 0 only and hand its result, or its ``LandscapeError``, to every rank, so a refusal
    on rank 0 (e.g. "already holds a surface") stops all ranks with the same one-line message instead of
    leaving them waiting."""
    w = world()
    if not w.active:
        return fn(*args, **kwargs)
    outcome: tuple[str, Any] = ("ok", None)
    if w.main:
        try:
            outcome = ("ok", fn(*args, **kwargs))
        except LandscapeError as e:
            outcome = ("error", str(e))
    kind, value = broadcast_from_main(outcome)
    if kind == "error":
        raise LandscapeError(value)
    return value


# --- a work queue for independent tasks ------------------------------------------------------------------

class TaskQueue:
    """Tasks ``0..n-1`` shared out dynamically: ``claim()`` gives the next unclaimed task (or None), ``put()``
    sends a finished task's (JSON-able) result to rank 0, which ``drain()``s them as they come.

    Single process: a plain counter and list. Distributed: an atomic counter and one result key per task on
    the process group's store, under a prefix unique to this queue (chosen by rank 0 and broadcast, the only
    collective). Rank 0 polls only the tasks claimed and not yet received (about one per rank).
    """

    def __init__(self, n: int, name: str = "tasks"):
        self.n, self.world = int(n), world()
        self._next = 0
        self._local: list[Any] = []
        self.received = 0
        if self.world.active:
            self._key = broadcast_from_main(f"landscape/{name}/{uuid.uuid4().hex}" if self.world.main else None)
            self._store = dist.distributed_c10d._get_default_store()
            self._waiting: list[int] = []  # claimed tasks whose results rank 0 has not read yet
            self._seen = 0                 # tasks 0 .. _seen-1 are in _waiting or received

    def claim(self) -> int | None:
        """The next unclaimed task, or None when all are claimed. One store round trip."""
        if self.world.active:
            k = int(self._store.add(f"{self._key}/next", 1)) - 1
        else:
            k, self._next = self._next, self._next + 1
        return k if k < self.n else None

    def claimed(self) -> int:
        """How many tasks have been claimed so far (all ranks)."""
        return min(int(self._store.add(f"{self._key}/next", 0)) if self.world.active else self._next, self.n)

    def put(self, task: int, result: Any) -> None:
        """Send finished ``task``'s result to rank 0 (exact for floats: JSON keeps repr round-trips)."""
        if self.world.active:
            self._store.set(f"{self._key}/done/{task}", json.dumps(result))
        else:
            self._local.append(result)

    def drain(self, wait_for: int | None = None, poll: float = 0.02) -> list[Any]:
        """Results received so far (rank 0; no waiting), or, with ``wait_for``, until that many have been
        received in total. Only rank 0 may drain."""
        if not self.world.main:
            raise RuntimeError("only rank 0 drains the results")
        out: list[Any] = []
        while True:
            if self.world.active:
                claimed = self.claimed()
                self._waiting += range(self._seen, claimed)
                self._seen = claimed
                still = []
                for k in self._waiting:
                    key = f"{self._key}/done/{k}"
                    if self._store.check([key]):
                        out.append(json.loads(self._store.get(key)))
                        self._store.delete_key(key)
                    else:
                        still.append(k)
                self._waiting = still
            else:
                out, self._local = out + self._local, []
            if wait_for is None or self.received + len(out) >= wait_for:
                break
            time.sleep(poll)
        self.received += len(out)
        return out


__all__ = ["World", "world", "launched_by_torchrun", "init_from_env", "check_sync_bn", "group_initialized", "finish",
           "shard_bounds", "shard_sizes", "all_reduce_sum", "all_gather_rows", "broadcast_from_main",
           "broadcast_tensor", "run_on_main", "TaskQueue"]
