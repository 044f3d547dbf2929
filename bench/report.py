"""docs/benchmarks.md (a table: every workload, every system, s3mount's ratios) and the chart."""

from __future__ import annotations

import os
import platform
import statistics
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

from bench.machine import Noise
from bench.systems import System
from bench.workloads import Figure, Sizes

GiB = 1024**3


@dataclass
class Results:
    """Per system and figure: the value of every run, or why it failed."""

    values: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    errors: dict[str, dict[str, str]] = field(default_factory=dict)
    # what the rest of the machine did during each run that passed (bench/machine.py)
    noise: dict[str, dict[str, list[Noise]]] = field(default_factory=dict)

    def add(self, system: str, fig: str, value: float) -> None:
        self.values.setdefault(system, {}).setdefault(fig, []).append(value)

    def fail(self, system: str, fig: str, reason: str) -> None:
        self.errors.setdefault(system, {}).setdefault(fig, reason)  # the first reason stays

    def failed(self, system: str, fig: str) -> bool:
        return fig in self.errors.get(system, {})

    def runs(self, system: str, fig: str) -> list[float]:
        return self.values.get(system, {}).get(fig, [])

    def median(self, system: str, fig: str) -> float | None:
        if self.failed(system, fig) or not self.runs(system, fig):
            return None
        return statistics.median(self.runs(system, fig))


def machine() -> str:
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GiB
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = " (" + " ".join(line.split(":", 1)[1].split()) + ")"
                break
    except OSError:
        pass
    return (f"{os.cpu_count()} cores{cpu}, {mem:.0f} GiB RAM, {platform.system()} "
            f"{platform.release()}, Python {platform.python_version()}; SeaweedFS on the same "
            "host (127.0.0.1)")


def fmt(v: float) -> str:
    if v >= 99.95:
        return f"{v:.0f}"
    if v >= 9.995:
        return f"{v:.1f}"
    return f"{v:.2f}"


def _cell(res: Results, system: str, fig: Figure, runs: int) -> str:
    if res.failed(system, fig.key):
        reason = res.errors[system][fig.key].replace("|", "/")
        return "failed: " + textwrap.shorten(reason, 70, placeholder="...")
    med = res.median(system, fig.key)
    if med is None:
        return "-"
    n = len(res.runs(system, fig.key))
    return fmt(med) + (f" ({n} run{'s' if n > 1 else ''})" if n != runs else "")


def _ratio(res: Results, fig: Figure, other: str) -> str:
    ours, theirs = res.median("s3mount", fig.key), res.median(other, fig.key)
    if ours is None or not theirs:
        return "-"
    return f"{ours / theirs:.2f}"


@dataclass
class Meta:
    date: str
    runs: int
    quick: bool
    sizes: Sizes
    minutes: float
    versions: list[str]
    notes: list[str]


def markdown(res: Results, figs: list[Figure], systems: list[System], meta: Meta,
             chart: str | None) -> str:
    names = [s.name for s in systems]
    others = [s for s in systems if s.name != "s3mount"] if "s3mount" in names else []
    head = ["workload", "unit", "better", *[s.title for s in systems],
            *[f"s3mount / {s.title}" for s in others]]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for fig in figs:
        cells = [fig.label, fig.unit, "higher" if fig.higher_better else "lower",
                 *[_cell(res, s.name, fig, meta.runs) for s in systems],
                 *[_ratio(res, fig, s.name) for s in others]]
        rows.append("| " + " | ".join(cells) + " |")
    sz = meta.sizes
    how = "median of 1 run" if meta.runs == 1 else f"median of {meta.runs} runs"
    quick = ["**Quick run (`--quick`): small sizes; not representative.**", ""]
    failures = [f"- {s}, {k}: {reason}" for s, errs in res.errors.items()
                for k, reason in errs.items()]
    lines = [
        "# Benchmarks", "",
        *(quick if meta.quick else []),
        f"Measured {meta.date} by `make bench` ({how}; the whole run took "
        f"{meta.minutes:.0f} min). Machine: {machine()}.", "",
        "Versions: " + "; ".join(meta.versions) + ".", "",
        "Systems (each mounts buckets of the same SeaweedFS server, with its default options "
        "apart from what a local path-style endpoint needs):", "",
        *[f"- **{s.title}**: {s.how}" for s in systems], "",
        "Workloads, each on a fresh mount (a fresh process for the raw client), each after a "
        "`sync`, untimed: the server's writes before it (the seed's, or the last workload's) "
        "are on disk, not written back during it at the cost of whichever system comes "
        "next:", "",
        f"- writes (one mount, into an empty bucket per system and run, deleted afterwards): "
        f"`dd bs=1M` of a {sz.size(sz.big_mib)} random file in /dev/shm; the "
        f"{sz.size(sz.big_mib * sz.big_times)} write is that file {sz.big_times} times through "
        f"a pipe; then `cp -r` of a local directory of {sz.files:,} files of {sz.file_kib} KiB. "
        "Each is timed until the command has returned and the bytes are in the bucket.",
        f"- reads, on a bucket seeded once with boto3 and mounted by every system: a cold "
        f"sequential `dd bs=1M` of a {sz.size(sz.big_mib)} object; on another fresh mount, "
        f"{sz.rand_reads} `pread`s of {sz.rand_kib} KiB at random aligned offsets of it (the "
        "same offsets for every system; the figure is the mean time per read).",
        "- metadata, on a third fresh mount: open and read 1 byte of an object made just "
        f"before the mount (time to first byte); `ls -l` of a directory of "
        f"{sz.list_objects:,} objects; `find` over a tree of {sz.tree[0]} directories of "
        f"{sz.tree[1]} objects each (directories implied by the keys, no marker objects).",
        "- CPU of the process (CPU-s/GiB), next to each throughput: the user + system CPU time "
        "the mount process used during the workload (/proc/PID/stat before and after; its own "
        "threads, not the kernel's work in `dd`), per GiB moved; for the raw client, its "
        "process's (os.times) over the transfer. On this machine the server shares the cores: "
        "CPU a client takes is taken from the server, and this figure varies far less than "
        "MiB/s when others use the machine.",
        "- peak RSS: VmHWM of the mount process (/proc/PID/status), the largest over the write "
        "mount, and over the three read mounts; for the raw client, ru_maxrss of its process.",
        "",
        "Ratios are s3mount's figure divided by the other system's: above 1 is better for "
        "s3mount where higher is better (MiB/s), worse where lower is better (s, ms, MiB).", "",
        *rows, "",
        *([f"![One chart per workload, a bar per system]({chart})", ""] if chart else []),
        *(["Notes:", "", *[f"- {n}" for n in meta.notes], ""] if meta.notes else []),
        *(["Failures:", "", *failures, ""] if failures else []),
        "Figures of every run:", "", "```",
        *[f"{s.name} {fig.key}: " + ", ".join(fmt(v) for v in res.runs(s.name, fig.key))
          for s in systems for fig in figs if res.runs(s.name, fig.key)],
        "```", "",
        "The rest of the machine during each run of each workload, in the order of the "
        "figures above (`bench/machine.py`): CPU-s of processes outside the benchmark's tree "
        "(not the server, the mounts or the workloads' commands), of kernel threads, and the "
        "hypervisor's steal. A run is quiet where the first and last are near 0.", "", "```",
        *[f"{s.name} {key}: " + " | ".join(n.brief() for n in noises)
          for s in systems for key, noises in res.noise.get(s.name, {}).items()],
        "```", ""]
    return "\n".join(lines)


def chart(res: Results, figs: list[Figure], systems: list[System], meta: Meta,
          path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = 5
    rows = (len(figs) + cols - 1) // cols
    fig_, axes = plt.subplots(rows, cols, figsize=(3.3 * cols, 3.6 * rows), squeeze=False)
    colors = {s.name: plt.get_cmap("tab10")(i) for i, s in enumerate(systems)}
    xs = range(len(systems))
    for ax, fig in zip(axes.flat, figs, strict=False):
        vals = [res.median(s.name, fig.key) for s in systems]
        top = max((v for v in vals if v is not None), default=1.0) or 1.0
        for x, s, v in zip(xs, systems, vals, strict=True):
            if v is None:
                ax.text(x, top * 0.02, "failed" if res.failed(s.name, fig.key) else "n/a",
                        rotation=90, ha="center", va="bottom", fontsize=8, color="#b00")
                continue
            ax.bar(x, v, color=colors[s.name], edgecolor="black" if s.name == "s3mount"
                   else "none", linewidth=1.2)
            ax.text(x, v, fmt(v), ha="center", va="bottom", fontsize=8)
        ax.set_ylim(0, top * 1.18)
        better = "higher" if fig.higher_better else "lower"
        title = textwrap.fill(fig.label, 30, break_on_hyphens=False)
        ax.set_title(f"{title}\n{fig.unit}, {better} is better", fontsize=9)
        ax.set_ylabel(fig.unit, fontsize=8)
        ax.set_xticks(list(xs))
        ax.set_xticklabels([textwrap.fill(s.title, 12) for s in systems], fontsize=7,
                           rotation=30, ha="right")
        ax.tick_params(axis="y", labelsize=7)
        ax.spines[["top", "right"]].set_visible(False)
    for ax in list(axes.flat)[len(figs):]:
        ax.set_visible(False)
    how = "1 run" if meta.runs == 1 else f"median of {meta.runs} runs"
    title = (f"s3mount and others on a local SeaweedFS, {meta.date} ({how}"
             f"{', QUICK: small sizes' if meta.quick else ''}); {machine().split(';')[0]}")
    fig_.suptitle(textwrap.fill(title, 150), fontsize=10)
    fig_.tight_layout()
    fig_.savefig(path, dpi=100)
    plt.close(fig_)
