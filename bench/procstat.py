"""Memory and CPU of a process tree, read from /proc (Linux only, stdlib only).

Used by bench/memory.py (RSS sampled every 50 ms over the server's process tree)
and bench/scale.py (how busy the machine was besides the server and the client,
to tell whether a run was noisy). The tree walk is servers.process_tree, the same
one regbench uses: the root and every live descendant.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import servers

TICKS = os.sysconf("SC_CLK_TCK")
MIB = 1 << 20


@dataclass(frozen=True)
class Rss:
    """Resident memory of one process, bytes (from /proc/PID/status)."""

    total: int  # VmRSS
    anon: int  # RssAnon: heap, stacks, anonymous mappings: where buffered bytes would live
    hwm: int  # VmHWM: the kernel's high-water mark of VmRSS over the process's life


def process_rss(pid: int) -> Rss | None:
    values: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in ("VmRSS", "RssAnon", "VmHWM"):
                    values[key] = int(rest.split()[0]) * 1024  # kB
    except (OSError, ValueError, IndexError):
        return None
    if "VmRSS" not in values:  # a zombie, or a kernel thread
        return None
    return Rss(values["VmRSS"], values.get("RssAnon", 0), values.get("VmHWM", 0))


def tree_rss(root: int) -> dict[int, Rss]:
    """RSS of each live process in the tree rooted at `root`."""
    out: dict[int, Rss] = {}
    for pid in servers.process_tree(root):
        rss = process_rss(pid)
        if rss is not None:
            out[pid] = rss
    return out


def cpu_seconds(pid: int, *, with_children: bool = False) -> float:
    """User + system CPU time of one process (and of its reaped children), seconds."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    ticks = int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    if with_children:
        ticks += int(fields[13]) + int(fields[14])  # cutime, cstime
    return ticks / TICKS


def reset_peaks(root: int) -> bool:
    """Reset VmHWM to the current VmRSS for every process in the tree (Linux >= 4.0:
    `echo 5 > /proc/PID/clear_refs`). Reading VmHWM later then gives each process's exact
    peak since now, whatever the sampling missed. False if any reset was refused."""
    ok = True
    for pid in servers.process_tree(root):
        try:
            with open(f"/proc/{pid}/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            ok = False
    return ok


def tree_peak(root: int) -> int:
    """Sum of VmHWM over the tree: an upper bound of the tree's peak RSS since the last
    reset_peaks (each process's own peak, even if they came at different times)."""
    return sum(r.hwm for r in tree_rss(root).values())


def tree_cpu_seconds(root: int) -> float:
    return sum(cpu_seconds(p, with_children=True) for p in servers.process_tree(root))


def _machine_ticks() -> tuple[int, int, int]:
    """(total, busy, steal) jiffies over all CPUs since boot, from /proc/stat."""
    with open("/proc/stat") as f:
        cols = [int(x) for x in f.readline().split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = (cols + [0] * 8)[:8]
    total = user + nice + system + idle + iowait + irq + softirq + steal
    return total, user + nice + system + irq + softirq, steal


@dataclass
class CpuUse:
    """CPU used during an interval, in % of one core (100% = one core busy)."""

    wall_s: float
    server_pct: float
    client_pct: float
    other_pct: float  # everything else on the machine: other tenants, kernel work
    steal_pct: float  # taken by the hypervisor from this VM
    load_start: tuple[float, float, float]
    load_end: tuple[float, float, float]
    database_pct: float | None = None  # the database server's processes serving us


class CpuMeter:
    """Measures the CPU of the server tree, this client, the database server's processes
    that serve it (when `database_pids` lists them) and the rest of the machine."""

    def __init__(
        self, server_root: int, database_pids: Callable[[], list[int]] | None = None
    ) -> None:
        self.server_root = server_root
        self.database_pids = database_pids
        self._db0 = {p: cpu_seconds(p) for p in database_pids()} if database_pids else {}
        self._t0 = time.monotonic()
        self._machine0 = _machine_ticks()
        self._server0 = tree_cpu_seconds(server_root)
        t = os.times()
        self._client0 = t.user + t.system
        self._load0 = os.getloadavg()

    def stop(self) -> CpuUse:
        wall = max(time.monotonic() - self._t0, 1e-9)
        _, busy1, steal1 = _machine_ticks()
        _, busy0, steal0 = self._machine0
        busy_s = (busy1 - busy0) / TICKS
        steal_s = (steal1 - steal0) / TICKS
        server_s = max(tree_cpu_seconds(self.server_root) - self._server0, 0.0)
        t = os.times()
        client_s = max(t.user + t.system - self._client0, 0.0)
        db_s: float | None = None
        if self.database_pids is not None:  # a backend started since counts from zero
            db_s = sum(
                max(cpu_seconds(p) - self._db0.get(p, 0.0), 0.0) for p in self.database_pids()
            )
        other_s = max(busy_s - server_s - client_s - (db_s or 0.0), 0.0)
        return CpuUse(
            wall_s=wall,
            server_pct=100 * server_s / wall,
            client_pct=100 * client_s / wall,
            other_pct=100 * other_s / wall,
            steal_pct=100 * steal_s / wall,
            load_start=self._load0,
            load_end=os.getloadavg(),
            database_pct=None if db_s is None else 100 * db_s / wall,
        )


# --------------------------------------------------------------------------------------
# RSS sampling
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    t: float  # time.monotonic()
    rss: int  # sum of VmRSS over the tree, bytes
    anon: int  # sum of RssAnon over the tree, bytes
    processes: int


@dataclass
class Window:
    """The samples between two instants, summarised."""

    samples: int
    median_rss: int
    peak_rss: int
    median_anon: int
    peak_anon: int
    max_gap_s: float  # the longest time between two samples: what a spike could hide in


def summarise(samples: list[Sample], start: float, end: float) -> Window | None:
    inside = [s for s in samples if start <= s.t <= end]
    if not inside:
        return None
    gaps = [b.t - a.t for a, b in itertools.pairwise(inside)]
    return Window(
        samples=len(inside),
        median_rss=int(statistics.median(s.rss for s in inside)),
        peak_rss=max(s.rss for s in inside),
        median_anon=int(statistics.median(s.anon for s in inside)),
        peak_anon=max(s.anon for s in inside),
        max_gap_s=max(gaps, default=0.0),
    )


@dataclass
class Sampler:
    """A daemon thread that sums RSS over a process tree every `interval` seconds."""

    root: int
    interval: float = 0.05
    samples: list[Sample] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def sample_once(self) -> Sample:
        tree = tree_rss(self.root)
        s = Sample(
            time.monotonic(),
            sum(r.total for r in tree.values()),
            sum(r.anon for r in tree.values()),
            len(tree),
        )
        self.samples.append(s)
        return s

    def _run(self) -> None:
        next_at = time.monotonic()
        while not self._stop.is_set():
            with contextlib.suppress(OSError):
                self.sample_once()
            next_at += self.interval
            delay = next_at - time.monotonic()
            if delay < 0:  # fell behind (a busy machine): do not try to catch up
                next_at = time.monotonic()
                delay = 0
            self._stop.wait(delay)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def window(self, start: float, end: float) -> Window | None:
        return summarise(list(self.samples), start, end)


def mib(value: float) -> float:
    return value / MIB
