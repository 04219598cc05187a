"""Kernel timing on a CUDA device, and where a timing stands against the device's roofline.

Timing: warm-up calls first (Triton autotuning and JIT happen there), then the call is captured in a
CUDA graph where the path allows it (else launched eagerly) and run for a fraction of a second so the
clocks settle, and each of N repeats is timed with CUDA events around one replay, after a write of
twice the L2 size has flushed the cache. The samples are
kept; the median and IQR summarise them."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from harness.results import metrics as M

# name fragment -> (memory GB/s, dense BF16 tensor TFLOP/s), from the vendors' datasheets
PEAKS: dict[str, tuple[float, float]] = {
    "RTX PRO 6000": (1792.0, 503.8),
    "H100 PCIe": (2000.0, 756.0),
    "H100": (3350.0, 989.4),  # SXM5 (H100 80GB HBM3)
    "H200": (4800.0, 989.4),
    "B200": (8000.0, 2250.0),
}


def peaks(gpu_name: str) -> tuple[float, float] | None:
    for fragment, peak in PEAKS.items():  # the more specific names come first
        if fragment.lower() in gpu_name.lower():
            return peak
    return None


@dataclass(frozen=True)
class Timing:
    samples_us: list[float]
    mode: str  # "cuda_graph", "eager", or "cpu"

    @property
    def median_us(self) -> float:
        return float(np.median(self.samples_us))

    @property
    def iqr_us(self) -> float:
        q1, q3 = np.percentile(self.samples_us, [25, 75])
        return float(q3 - q1)


def _spin(launch: Callable[[], object], seconds: float) -> None:
    """Keep the GPU busy with the kernel itself for a while: its clocks ramp up before anything is
    timed (a count of warm-up calls is not enough for a 20 us kernel)."""
    import torch

    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for _ in range(8):
            launch()
        torch.cuda.synchronize()


def time_cuda(
    fn: Callable[[], object], *, repeats: int, warmup: int, cuda_graph: bool = True, spin_s: float = 0.3
) -> Timing:
    import torch

    dev = torch.cuda.current_device()
    l2 = torch.cuda.get_device_properties(dev).L2_cache_size
    flush = torch.empty(max(2 * l2, 1 << 20), dtype=torch.int8, device="cuda")
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    launch, mode = fn, "eager"
    if cuda_graph:
        try:
            graph = torch.cuda.CUDAGraph()
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                fn()  # warm on the side stream, as torch.cuda.graph asks
            torch.cuda.current_stream().wait_stream(stream)
            with torch.cuda.graph(graph):
                fn()
            graph.replay()
            torch.cuda.synchronize()
            launch, mode = graph.replay, "cuda_graph"
        except Exception:  # a path that syncs, allocates on the host or reads .item() cannot be captured
            torch.cuda.synchronize()
    _spin(launch, spin_s)
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(repeats)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(repeats)]
    for i in range(repeats):
        flush.zero_()
        starts[i].record()
        launch()
        ends[i].record()
    torch.cuda.synchronize()
    return Timing([s.elapsed_time(e) * 1e3 for s, e in zip(starts, ends)], mode)


def time_cpu(fn: Callable[[], object], *, repeats: int, warmup: int) -> Timing:
    """The CPU time of each call (Triton's interpreter, PyTorch's CPU kernels): what the statistics of
    a comparison are tested on where there is no GPU, not a kernel's speed. On one thread, timed by
    that thread's own CPU clock, so neither the other processes of a shared machine nor a thread
    pool's spinning adds to it."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for _ in range(warmup):
            fn()
        samples = []
        for _ in range(repeats):
            t0 = time.thread_time_ns()
            fn()
            samples.append((time.thread_time_ns() - t0) / 1e3)
    finally:
        torch.set_num_threads(threads)
    return Timing(samples, "cpu")


def roofline(median_us: float, bytes_moved: float, flops: float, peak: tuple[float, float]) -> dict[str, float]:
    """Achieved GB/s and TFLOP/s, each as a fraction of the peak, and the fraction of the roofline
    time (the larger of bytes/bandwidth and flops/compute) the kernel reaches."""
    seconds = median_us * 1e-6
    gbps, tflops = bytes_moved / seconds / 1e9, flops / seconds / 1e12
    bound_s = max(bytes_moved / (peak[0] * 1e9), flops / (peak[1] * 1e12))
    return {
        M.GBPS: gbps,
        M.TFLOPS: tflops,
        "bw_frac": gbps / peak[0],
        "compute_frac": tflops / peak[1],
        M.ROOFLINE_FRAC: bound_s / seconds,
    }
