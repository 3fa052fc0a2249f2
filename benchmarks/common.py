"""Timing and reporting helpers shared by the benchmark scripts."""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import time
from typing import Callable, Dict, List

import torch


def median_seconds(fn: Callable[[], object], *, warmup: int = 3, repeats: int = 10, device: str = "cpu") -> float:
    """Median wall time of fn() after warm-up; CUDA events on a GPU."""
    for _ in range(warmup):
        fn()
    times = []
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
    else:
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def gemm_flops_per_second(device: str = "cpu", dtype=torch.float32, n: int = 2048) -> float:
    """The machine's own large-GEMM rate, measured now: the ceiling for matrix work."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    return 2 * n**3 / median_seconds(lambda: torch.mm(a, b), device=device)


def machine_info(device: str = "cpu") -> Dict[str, object]:
    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "processor": _cpu_name(),
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name()
        info["cuda"] = torch.version.cuda
    return info


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def markdown_table(rows: List[Dict[str, object]], columns: List[str]) -> str:
    def fmt(x):
        if isinstance(x, float):
            return f"{x:.0f}" if abs(x) >= 1000 else f"{x:.3g}"
        return str(x)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def write_json(path: str, payload: Dict[str, object]) -> None:
    with open(path, "w") as f:
        json.dump(payload, f, indent=2)
        f.write("\n")


def progress(iterable, **kwargs):
    """tqdm progress bar (on stderr) when tqdm is installed, else the plain iterable."""
    try:
        from tqdm import tqdm
    except ImportError:
        return iterable
    return tqdm(iterable, **kwargs)


def pyplot():
    """matplotlib.pyplot with the file backend, or None (and a note) when matplotlib is missing."""
    try:
        import matplotlib
    except ImportError:
        print("matplotlib is not installed: no plot written")
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def bar_pair_plot(path: str, title: str, names: List[str], left: List[float], left_label: str,
                  right: List[float], right_label: str) -> None:
    """Two bar charts side by side, one bar per name (writes nothing without matplotlib)."""
    plt = pyplot()
    if plt is None:
        return
    colors = [f"C{i}" for i in range(len(names))]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(7.5, 3.6))
    a1.bar(names, left, color=colors)
    a1.set_ylabel(left_label)
    a2.bar(names, right, color=colors)
    a2.set_ylabel(right_label)
    fig.suptitle(title, fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _busy_cpus_now(seconds: float = 0.5):
    """CPUs kept busy by other processes right now (from /proc/stat), or None."""
    def sample():
        with open("/proc/stat") as f:
            vals = [int(x) for x in f.readline().split()[1:]]
        return vals[3] + vals[4], sum(vals)  # idle + iowait, total

    try:
        idle0, total0 = sample()
        time.sleep(seconds)
        idle1, total1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    total = total1 - total0
    return (1 - (idle1 - idle0) / total) * (os.cpu_count() or 1) if total > 0 else None


def busy_warning(during_run: bool = False) -> str:
    """A warning when other processes keep the CPUs busy (timings then mean little), else ''.
    Before a run: what the CPUs do right now (we are idle). during_run: the 1-minute load
    average, which then includes this benchmark's own threads (up to one per CPU)."""
    cpus = os.cpu_count() or 1
    if during_run:
        if not hasattr(os, "getloadavg"):
            return ""
        load = os.getloadavg()[0]
        if load > 1.4 * cpus:
            return (f"warning: the machine was busy (1-minute load average {load:.1f} on {cpus} CPUs, this run "
                    "included); CPU timings are noisy and slower than on an idle machine")
        return ""
    busy = _busy_cpus_now()
    if busy is not None and busy > 0.5 * cpus:
        return (f"warning: the machine is busy (other processes use {busy:.1f} of {cpus} CPUs); "
                "CPU timings will be noisy and slower than on an idle machine")
    return ""
