"""Check a machine's GPU path in one command and write one JSON summary (issue 11).

    python scripts/gpu_check.py [--out outputs/gpu_check.json] [--budget-s 480]

With a CUDA GPU: the cuda-marked tests, a short GPU benchmark (benchmark.py --device cuda --quick, Omniglot),
a 200-iteration Omniglot smoke run with each fast path (compile=cudagraphs, precision=tf32, precision=bf16,
deterministic=true) and, with two GPUs visible, one with two ranks (torchrun). Without one: a CPU smoke run, the
GPU steps skipped with the reason (the fake-CUDA tests, tests/test_fake_cuda.py, run in the normal suite). Every
step records its status (passed, failed, skipped), seconds, the reason for a skip or the tail of a failure, and
key figures; steps that would start after --budget-s seconds are skipped. Exits 1 if a step failed, else 0.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ["experiment=omniglot_5w1s", "debug=smoke"]
FAST_PATHS = ["compile=cudagraphs", "precision=tf32", "precision=bf16", "deterministic=true"]


def run(cmd: list[str], timeout: float, env: dict | None = None) -> tuple[bool, str]:
    """Whether cmd exited 0 within timeout, and the tail of its output."""
    try:
        proc = subprocess.run(
            cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
        )
    except subprocess.TimeoutExpired:
        return False, f"timed out after {timeout:.0f} s"
    return proc.returncode == 0, (proc.stdout + proc.stderr)[-2000:]


def smoke(name: str, overrides: list[str], outputs: Path, timeout: float, launcher: list[str] | None = None) -> dict:
    """One smoke run of train.py (python -m, or under `launcher`); its objective and seconds from summary.json."""
    run_dir = outputs / name
    cmd = [*(launcher or [sys.executable, "-m"]), "reptile_exp.train", *SMOKE, *overrides, f"hydra.run.dir={run_dir}"]
    ok, tail = run(cmd, timeout, env={**os.environ, "OMP_NUM_THREADS": "1"})
    result = {"command": " ".join(cmd[cmd.index("reptile_exp.train") :]), "ok": ok}
    summary = run_dir / "summary.json"
    if ok and summary.exists():
        s = json.loads(summary.read_text())
        result["figures"] = {"objective": s["objective"], "objective_name": s["objective_name"], "run_s": s["seconds"]}
    elif not ok:
        result["tail"] = tail
    return result


def benchmark_figures(output: str) -> dict:
    """The matmul ceilings and each contender's rates from benchmark.py's last line (its JSON report)."""
    report = json.loads(output.strip().splitlines()[-1])
    rates = {
        f"{preset}/{name}": {k: row[k] for k in ("train_it_s", "train_x_serial", "eval_s_per_1000")}
        for preset, res in report["presets"].items()
        for name, row in res["contenders"].items()
    }
    return {"device": report["device"], "matmul_gflop_s": report["matmul_gflop_s"], "contenders": rates}


def steps(gpus: int, outputs: Path) -> list[tuple[str, str | None, callable]]:
    """(name, reason to skip or None, fn(timeout) -> result dict with "ok") of every step, in order."""
    no_gpu = None if gpus else "no CUDA GPU visible (torch.cuda.is_available() is False)"
    python = [sys.executable]
    out = [
        ("CPU smoke run", None, lambda t: smoke("cpu", ["device=cpu"], outputs, t)),
        ("cuda-marked tests", no_gpu, lambda t: _tests(["-m", "cuda", "tests"], t)),
        ("GPU benchmark --quick", no_gpu, lambda t: _benchmark(python, t)),
    ]
    for fast in FAST_PATHS:
        name = fast.replace("=", "-")
        out.append(
            (
                f"smoke 200 it {fast}",
                no_gpu,
                lambda t, f=fast, n=name: smoke(n, ["device=cuda", "iterations=200", f], outputs, t),
            )
        )
    two = no_gpu or (None if gpus >= 2 else f"{gpus} CUDA GPU visible; two ranks need two")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m"]
    out.append(
        (
            "smoke 200 it two ranks",
            two,
            lambda t: smoke("two-ranks", ["device=cuda", "iterations=200"], outputs, t, torchrun),
        )
    )
    return out


def _tests(args: list[str], timeout: float) -> dict:
    cmd = [sys.executable, "-m", "pytest", "-n", "0", "-q", "-p", "no:cacheprovider", *args]
    ok, tail = run(cmd, timeout, env={**os.environ, "OMP_NUM_THREADS": "1"})
    return {"ok": ok, "figures": {"pytest": tail.strip().splitlines()[-1] if tail.strip() else ""}, "tail": tail}


def _benchmark(python: list[str], timeout: float) -> dict:
    cmd = [*python, "scripts/benchmark.py", "--device", "cuda", "--quick", "--presets", "omniglot"]
    ok, tail = run(cmd, timeout)
    if not ok:
        return {"ok": False, "tail": tail}
    return {"ok": True, "figures": benchmark_figures(tail)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="the JSON summary (default outputs/gpu_check-<time>.json)")
    parser.add_argument("--budget-s", type=float, default=480, help="no step starts after this many seconds")
    args = parser.parse_args(argv)
    stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
    out = args.out or ROOT / "outputs" / f"gpu_check-{stamp}.json"
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    start, results = time.monotonic(), []
    with tempfile.TemporaryDirectory(prefix="gpu_check-") as tmp:
        for name, skip, fn in steps(gpus, Path(tmp)):
            left = args.budget_s - (time.monotonic() - start)
            if skip is None and left < 20:
                skip = f"the {args.budget_s:.0f} s budget is spent"
            if skip is not None:
                results.append({"step": name, "status": "skipped", "reason": skip})
                print(f"skipped  {name}: {skip}", flush=True)
                continue
            t0 = time.monotonic()
            result = fn(left)
            status = "passed" if result.pop("ok") else "failed"
            if status == "passed":
                result.pop("tail", None)
            results.append({"step": name, "status": status, "seconds": round(time.monotonic() - t0, 1), **result})
            print(f"{status:<8} {name} ({results[-1]['seconds']} s)", flush=True)
    summary = {
        "machine": torch.cuda.get_device_name(0) if gpus else f"cpu ({os.cpu_count()} cores)",
        "gpus": gpus,
        "torch": torch.__version__,
        "started": stamp,
        "seconds": round(time.monotonic() - start, 1),
        "steps": results,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"summary: {out}")
    return 1 if any(r["status"] == "failed" for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
