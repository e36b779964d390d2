"""How many CPU threads torch uses when the user did not say: one per core that other processes leave idle.

Policy: torch gets one intra-op thread per core of this process's CPU set minus the cores other
processes at nice 0 or below keep busy (a core counts from half a core of their load), at least
one, read from /proc/stat when training or evaluation starts and every ``RECHECK_SECONDS`` of
training; OpenMP's wait policy stays libgomp's own. Why: a thread sharing its core with another
process makes every parallel kernel wait for it, far slower than one thread fewer
(benchmarks/README.md, "Training beside a busy core"). An explicit count (``train.threads``,
``--threads``, ``OMP_NUM_THREADS``) always wins.
"""
from __future__ import annotations

import math
import os
import time
from typing import Callable, MutableMapping, Optional, Sequence

# The variables that mean "the user chose the thread count".
THREAD_COUNT_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")

BUSY_CORE = 0.5         # a core with at least this much of other processes' load is left to them
SAMPLE_SECONDS = 0.1    # the look at the load before training or evaluation starts
RECHECK_SECONDS = 1.0   # how often ThreadGovernor.step() looks again during training

Stat = dict[str, list[int]]


def usable_cores() -> list[int]:
    """The CPUs this process may run on (its affinity mask), capped by a cgroup CPU quota."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = list(range(os.cpu_count() or 1))
    quota = _cgroup_quota()
    if quota is not None and quota < len(cpus):
        cpus = cpus[:max(1, math.ceil(quota))]
    return cpus


def _cgroup_quota() -> Optional[float]:
    """Cores' worth of CPU the cgroup (v2) allows, or None where unlimited or unknown."""
    try:
        with open("/sys/fs/cgroup/cpu.max") as f:
            quota, period = f.read().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        return None


def read_proc_stat() -> Stat:
    """The first eight counters (user nice system idle iowait irq softirq steal, in clock ticks)
    of each ``cpuN`` line of /proc/stat."""
    out = {}
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu") and not line.startswith("cpu "):
                name, *fields = line.split()
                ticks = [int(x) for x in fields[:8]]
                out[name] = ticks + [0] * (8 - len(ticks))
    return out


def _niceness() -> int:
    try:
        return os.getpriority(os.PRIO_PROCESS, 0)
    except (AttributeError, OSError):
        return 0


def load_between(before: Stat, after: Stat, own_cpu_seconds: float, wall_seconds: float,
                 cpus: Sequence[int], count_niced: bool = False) -> Optional[float]:
    """Cores' worth of CPU that other processes used on ``cpus`` between two /proc/stat readings,
    this process's own CPU time taken out; None when no time passed. Niced processes' time counts
    only with ``count_niced`` (for a niced process: they yield to one at nice 0)."""
    busy = total = 0
    for cpu in cpus:
        d = [b - a for a, b in zip(before.get(f"cpu{cpu}", [0] * 8), after.get(f"cpu{cpu}", [0] * 8))]
        user, nice, system, idle, iowait, irq, softirq, steal = d[:8]
        total += sum(d[:8])
        busy += user + system + irq + softirq + steal + (nice if count_niced else 0)
    if total <= 0 or wall_seconds <= 0:
        return None
    return max(0.0, busy / total * len(cpus) - own_cpu_seconds / wall_seconds)


def other_load(cpus: Optional[Sequence[int]] = None, seconds: float = SAMPLE_SECONDS, *,
               read_stat: Callable[[], Stat] = read_proc_stat,
               process_time: Callable[[], float] = time.process_time,
               sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic,
               count_niced: Optional[bool] = None) -> Optional[float]:
    """Cores' worth of CPU other processes used on ``cpus`` (this process's) over the next
    ``seconds``, or None where /proc/stat cannot be read (see ``load_between``)."""
    cpus = usable_cores() if cpus is None else list(cpus)
    count_niced = _niceness() > 0 if count_niced is None else count_niced
    try:
        before, own0, t0 = read_stat(), process_time(), clock()
        sleep(seconds)
        after, own1, t1 = read_stat(), process_time(), clock()
    except (OSError, ValueError):
        return None
    return load_between(before, after, own1 - own0, t1 - t0, cpus, count_niced)


def choose_threads(cores: int, load: Optional[float]) -> int:
    """Threads for ``cores`` cores beside ``load`` cores' worth of other processes' work: the
    cores not busy (one is, from ``BUSY_CORE`` of load on), within [1, cores]; all of them when
    the load is unknown."""
    if load is None:
        return max(1, cores)
    return max(1, min(cores, cores - math.floor(load + (1.0 - BUSY_CORE))))


def user_threads(requested: int = 0, environ: Optional[MutableMapping[str, str]] = None) -> int:
    """The thread count the user chose: ``requested``, else ``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS``
    (torch starts with it), else 0."""
    if requested:
        return int(requested)
    environ = os.environ if environ is None else environ
    for key in THREAD_COUNT_ENV:
        try:
            if int(environ.get(key, "0").split(",")[0]) > 0:
                import torch
                return torch.get_num_threads()
        except ValueError:
            continue
    return 0


def configure_threads(requested: int = 0, *, load: Optional[Callable[[], Optional[float]]] = None,
                      cores: Optional[int] = None, environ: Optional[MutableMapping[str, str]] = None) -> int:
    """Set torch's intra-op threads and return them: the user's count (``requested``, i.e.
    ``train.threads`` / ``--threads``, or ``OMP_NUM_THREADS``) when there is one, else the
    policy's for the other processes' load that ``load`` reads (default: 0.1 s of /proc/stat)."""
    import torch
    chosen = user_threads(requested, environ)
    if chosen:
        if requested:
            torch.set_num_threads(chosen)
        return chosen
    cpus = usable_cores()
    cores = len(cpus) if cores is None else cores
    threads = choose_threads(cores, (load or (lambda: other_load(cpus)))())
    if threads != torch.get_num_threads():  # torch's own setting left as it is where it agrees
        torch.set_num_threads(threads)
    return threads


class ThreadGovernor:
    """The policy kept up during training: ``step()`` (every step; it costs a clock read) looks at
    the other processes' load since its last look every ``every`` seconds and moves torch's
    thread count to the policy's; nothing when the user chose a count."""

    def __init__(self, requested: int = 0, every: float = RECHECK_SECONDS, *,
                 load: Optional[Callable[[], Optional[float]]] = None,
                 read_stat: Callable[[], Stat] = read_proc_stat,
                 process_time: Callable[[], float] = time.process_time,
                 clock: Callable[[], float] = time.monotonic, cores: Optional[int] = None,
                 environ: Optional[MutableMapping[str, str]] = None):
        self.fixed = bool(user_threads(requested, environ))
        self.every, self.read_stat, self.process_time, self.clock = every, read_stat, process_time, clock
        self.cpus = usable_cores()
        self.cores = len(self.cpus) if cores is None else cores
        self.count_niced = _niceness() > 0
        self.threads = configure_threads(requested, load=load, cores=self.cores, environ=environ)
        self.changes: list[tuple[float, int]] = []   # (seconds since the start, threads) at each change
        self._start = clock()
        self._mark = None if self.fixed else self._look()

    def _look(self):
        try:
            return self.read_stat(), self.process_time(), self.clock()
        except (OSError, ValueError):
            return None

    def step(self) -> int:
        """Look again if ``every`` seconds have passed since the last look; return the threads."""
        if self._mark is None or self.clock() - self._mark[2] < self.every:
            return self.threads
        now = self._look()
        if now is None:
            self._mark = None
            return self.threads
        (before, own0, t0), (after, own1, t1) = self._mark, now
        self._mark = now
        threads = choose_threads(self.cores, load_between(before, after, own1 - own0, t1 - t0, self.cpus,
                                                          self.count_niced))
        if threads != self.threads:
            import torch
            torch.set_num_threads(threads)
            self.threads = threads
            self.changes.append((t1 - self._start, threads))
        return self.threads
