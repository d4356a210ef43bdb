"""The benchmark's matmul ceiling (reptile_exp/measure.py) measures at a size that saturates the device (issue 11,
defect 8), the best of its repeats, and nothing is timed before scripts/benchmark.py's inputs are checked; a run's
peak memory is in MiB."""

import pytest
import torch
from conftest import script

from reptile_exp import measure
from reptile_exp.measure import ceiling_size, matmul_gflops, run_peak_memory_mb
from reptile_exp.memory import _proc_bytes

CPU = torch.device("cpu")


def _device(gflop_s: float, launch_s: float = 0.0):
    """One n x n product's seconds on a device of that rate and per-call launch overhead; the sizes timed."""
    timed = []

    def product_seconds(n: int) -> float:
        timed.append(n)
        return launch_s + 2 * n**3 / (gflop_s * 1e9)

    return product_seconds, timed


def test_a_gpu_is_timed_on_products_that_dwarf_the_launch():
    """A 50 TFLOP/s GPU with 10 us launches: a 256 x 256 product is mostly launch (the old probe); the chosen size
    spends under 0.1% of its time launching."""
    product_seconds, timed = _device(50_000, launch_s=1e-5)
    n = ceiling_size(product_seconds, n_max=16384)
    assert timed == [256, 512, 1024, 2048, 4096, 8192, 16384] and n == 16384
    assert 1e-5 / product_seconds(256) > 0.5 and 1e-5 / product_seconds(n) < 1e-3


def test_a_slow_dtype_stops_growing_within_the_budget_and_n_max_holds():
    """bfloat16 emulated at 1 GFLOP/s: no product over the 0.5 s budget is ever timed; a fast device stops at
    n_max."""
    product_seconds, timed = _device(1)
    assert ceiling_size(product_seconds, n_max=2048) == 512
    assert max(timed) == 512  # 2 x 512^3 at 1 GFLOP/s: 0.27 s; 1024 would take 2.1 s
    assert ceiling_size(_device(100_000)[0], n_max=1024) == 1024


def test_the_size_is_the_largest_whose_product_the_budget_allows():
    """Over devices from 0.1 GFLOP/s to 10 TFLOP/s, 1% apart: every product timed after the first fits the 0.5 s
    budget, and the size chosen is n_max or one whose next size (8x the work) would not fit."""
    budget, n_max = 0.5, 16384
    for step in range(1200):
        gflop_s = 0.1 * 1.01**step
        product_seconds, timed = _device(gflop_s)
        n = ceiling_size(product_seconds, n_max, budget)
        assert n == timed[-1] and all(product_seconds(size) <= budget for size in timed[1:]), (gflop_s, timed)
        assert n == n_max or product_seconds(2 * n) > budget, (gflop_s, timed)


def test_the_ceiling_is_the_best_of_the_repeats(monkeypatch):
    """A timing that something else slowed down (here the second of three repeats, made 1 s longer) does not lower
    the ceiling: it is 2 n^3 FLOPs over the fastest repeat. The products and their timings are real."""
    timings = []

    def seconds(fn, device):
        timings.append(real(fn, device) + (1.0 if len(timings) == 2 else 0.0))
        return timings[-1]

    real = measure.seconds
    monkeypatch.setattr(measure, "seconds", seconds)
    gflop_s = matmul_gflops(CPU, torch.float32, n_max=256, repeats=3)
    assert len(timings) == 1 + 3  # the size's probe (n_max: no larger size), then the repeats
    assert gflop_s == 2 * 256**3 / min(timings[1:]) / 1e9


def test_a_cpu_runs_peak_memory_is_the_peak_resident_set_in_mib():
    """ru_maxrss is in KiB on Linux: the peak matches the kernel's VmHWM (/proc/self/status), in MiB."""
    peak = _proc_bytes("/proc/self/status", "VmHWM")
    if peak is None:
        pytest.skip("no /proc/self/status VmHWM (not Linux)")
    assert run_peak_memory_mb(CPU) == pytest.approx(peak / 2**20, rel=0.01)  # KiB, not kB: 2.4% apart


def test_a_bad_contender_config_or_json_out_is_refused_before_anything_is_timed(tmp_path, monkeypatch, capsys):
    """A config train.py refuses (k=0), one Hydra cannot compose (k=abc, kk=3), a fast path the device lacks, an
    --json-out that cannot be written: a usage error naming it, before the matmul ceilings (the first timing)."""
    bench = script("benchmark")

    def timed(*args):
        raise AssertionError("timed before the inputs were checked")

    monkeypatch.setattr(bench, "matmul_gflops", timed)
    (tmp_path / "file").write_text("")
    for args, message in (
        (["--overrides", "k=0"], "--presets sine --variants plain --overrides k=0: k=0 is invalid: must be an integer"),
        (["--overrides", "k=abc"], "--overrides k=abc: k='abc' is invalid: "),
        (["--overrides", "kk=3"], "--overrides kk=3: kk is not a config key: did you mean 'k'?"),
        (["--variants", "cudagraphs"], "--variants cudagraphs: compile=cudagraphs is invalid on device=cpu"),
        (["--json-out", str(tmp_path / "file" / "r.json")], f": {tmp_path / 'file'} cannot be created or written ("),
        (["--json-out", str(tmp_path)], f"--json-out {tmp_path}: {tmp_path} is a folder; pass a file path in a"),
    ):
        with pytest.raises(SystemExit) as exit:
            bench.main(["--device", "cpu", "--quick", "--presets", "sine", *args])
        err = capsys.readouterr().err
        assert exit.value.code == 2 and message in err.splitlines()[-1], (args, err)


def test_a_contender_this_machine_cannot_run_is_one_usage_line(capsys):
    """Checked as its engine is built, before its timing: a CUDA device on a machine without one, a meta-batch
    that cannot fit (fits.check, as train.py checks it), a dataset _target_ that does not import (the line
    train.py prints: instantiate.target_error)."""
    bench = script("benchmark")
    located = "Error locating target 'nope.Nope'. full_key: dataset; check the _target_ and keys of that config group"
    for overrides, message in (
        (["device=cuda"], "device='cuda' is invalid: no CUDA GPU is visible here"),
        (["meta_batch=100000000"], "meta_batch=100000000: one outer step needs about"),
        (["dataset._target_=nope.Nope"], located),
    ):
        if overrides == ["device=cuda"] and torch.cuda.is_available():
            continue  # the GPU is there: nothing to refuse
        with pytest.raises(SystemExit) as exit:
            bench.main(
                ["--device", "cpu", "--quick", "--presets", "sine", "--variants", "plain", "--overrides", *overrides]
            )
        err = capsys.readouterr().err
        assert exit.value.code == 2 and message in err.splitlines()[-1], (overrides, err)
