"""What else the machine did during a workload: the CPU time of every process outside the
benchmark's own tree, the kernel threads', and the hypervisor's steal.

The issue's targets are for a quiet machine, and the machines this project runs on are shared:
other engineers' test suites run on the same 2 cores, and a run's MiB/s moves with them. A
snapshot of /proc before and after each workload tells how quiet it was: `Noise.others` is the
user + system CPU time of processes that are not the benchmark, its children (the server, the
mounts, `dd`) or theirs; `kernel` that of kernel threads (writeback, softirq work, some of it the
workload's own); `steal` the time the hypervisor gave the cores to other guests (/proc/stat).
A process that started and ended within the workload outside the tree is not seen.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")
PF_KTHREAD = 0x00200000


@dataclass(frozen=True)
class _Proc:
    ppid: int
    comm: str
    cpu: float  # user + system seconds so far
    kthread: bool


@dataclass
class Snapshot:
    steal: float
    # by (pid, start time), so that a reused pid is not taken for the process it replaced
    procs: dict[tuple[int, int], _Proc] = field(default_factory=dict)


@dataclass(frozen=True)
class Noise:
    others: float  # CPU-s of processes outside the benchmark's tree
    kernel: float  # CPU-s of kernel threads
    steal: float  # seconds stolen by the hypervisor, all cores
    top: str  # the busiest other process and its CPU-s, or ""

    def brief(self) -> str:
        top = f", most {self.top}" if self.top else ""
        return (f"others {self.others:.2f} CPU-s{top}; kernel threads {self.kernel:.2f}; "
                f"steal {self.steal:.2f} s")


def _steal() -> float:
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("cpu "):
            fields = line.split()
            return int(fields[8]) / TICK if len(fields) > 8 else 0.0
    return 0.0


def snapshot() -> Snapshot:
    snap = Snapshot(_steal())
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            text = Path(entry.path, "stat").read_text()
        except OSError:
            continue  # gone meanwhile
        comm = text[text.index("(") + 1:text.rindex(")")]
        f = text[text.rindex(")") + 2:].split()  # f[0] is field 3 (state)
        snap.procs[(int(entry.name), int(f[19]))] = _Proc(
            int(f[1]), comm, (int(f[11]) + int(f[12])) / TICK, bool(int(f[6]) & PF_KTHREAD))
    return snap


def _ours(snap: Snapshot, root: int) -> set[int]:
    """The pids of `root` and its descendants."""
    children: dict[int, list[int]] = {}
    for (pid, _), p in snap.procs.items():
        children.setdefault(p.ppid, []).append(pid)
    ours, todo = set(), [root]
    while todo:
        pid = todo.pop()
        if pid not in ours:
            ours.add(pid)
            todo.extend(children.get(pid, []))
    return ours


def noise(before: Snapshot, after: Snapshot, root: int | None = None) -> Noise:
    """What processes outside `root`'s tree (default: this process) did between the two."""
    root = os.getpid() if root is None else root
    ours = _ours(before, root) | _ours(after, root)
    others = kernel = 0.0
    busiest: dict[str, float] = {}
    for key, p in after.procs.items():
        if key[0] in ours:
            continue
        was = before.procs.get(key)
        used = p.cpu - (was.cpu if was is not None else 0.0)  # new: all of it is within
        if used <= 0:
            continue
        if p.kthread:
            kernel += used
        else:
            others += used
            busiest[p.comm] = busiest.get(p.comm, 0.0) + used
    name = max(busiest, key=lambda n: busiest[n], default="")
    top = f"{name} {busiest[name]:.2f}" if name and busiest[name] >= 0.05 else ""
    return Noise(others, kernel, max(0.0, after.steal - before.steal), top)
