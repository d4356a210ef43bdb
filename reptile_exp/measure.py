"""The benchmark's instruments: calls per second, seconds, peak tensor memory and FLOPs of a function on a
device, and the machine's dense-matmul ceiling (scripts/benchmark.py, docs/benchmarks.md). Every timing is
taken between device syncs."""

from __future__ import annotations

import resource
import time

import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def rate(step, device: torch.device, min_seconds: float) -> float:
    """Calls of step per second: as many calls as fill min_seconds (at least one), timed after a device sync."""
    sync(device)
    start, calls = time.perf_counter(), 0
    while calls == 0 or time.perf_counter() - start < min_seconds:
        step()
        calls += 1
        sync(device)
    return calls / (time.perf_counter() - start)


def seconds(fn, device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def peak_memory_mb(fn, device: torch.device) -> float:
    """Peak tensor memory fn allocates above what was allocated when it started, in MiB.

    CUDA: the caching allocator's peak. CPU: the profiler's allocation and free events summed in order.
    """
    if device.type == "cuda":
        sync(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        sync(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted(
        (e.start_ns(), e.nbytes())
        for e in prof.profiler.kineto_results.events()
        if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU
    )
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return peak / 2**20


def flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def ceiling_size(product_seconds, n_max: int, budget_s: float = 0.5, n_min: int = 256) -> int:
    """The size n of the n x n product that measures the matmul ceiling: from n_min, double while the next size
    (8x the work) is predicted to fit budget_s, up to n_max. A GPU thus times products of tens of ms, not a
    launch-bound 256 x 256 one; a dtype the hardware lacks (bfloat16 on a CPU without AVX-512 BF16, about
    1 GFLOP/s) costs seconds, not minutes. product_seconds(n) times one product of size n."""
    n, seconds_n = n_min, product_seconds(n_min)
    while n < n_max and 8 * seconds_n <= budget_s:
        n *= 2
        seconds_n = product_seconds(n)
    return n


def run_peak_memory_mb(device: torch.device) -> float:
    """The run's peak memory so far, in MiB: on CUDA the caching allocator's peak of tensor memory on the device,
    on the CPU the process's peak resident set (tensors, the interpreter and the libraries)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def matmul_gflops(device: torch.device, dtype: torch.dtype, n_max: int, repeats: int) -> float:
    """The best of `repeats` timings of an n x n matrix product at the size ceiling_size picks: the hardware's
    ceiling for dense work. Every size is timed after an untimed product (allocation, kernel choice), with a device
    sync before and after."""

    def best(size: int, rounds: int) -> float:
        a, b = (torch.randn(size, size, device=device, dtype=dtype) for _ in range(2))
        product = lambda: a @ b  # noqa: E731
        product()
        return min(seconds(product, device) for _ in range(rounds))

    n = ceiling_size(lambda size: best(size, 1), n_max)
    return 2 * n**3 / best(n, repeats) / 1e9
