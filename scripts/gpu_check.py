"""The GPU day in one command: every GPU step, each in its own time budget, and one JSON summary (issue 19).

    python scripts/gpu_check.py [--out FILE.json] [--budget-s 450] [--only STEP ...]
    python scripts/gpu_check.py --device cpu     # the rehearsal (the suite runs it); an existing --out is kept

Steps, in this order (run_check): the environment (GPU, memory, driver, torch and CUDA versions, bf16/TF32 support);
the `cuda`-marked tests; one Omniglot 5-way training run per fast path (plain, cudagraphs, tf32, bf16, inductor,
deterministic: outer it/s after warm-up, with periodic evaluation off and one checkpoint at the end, evaluation
seconds per 1,000 tasks, peak memory); two ranks (torchrun); the side-by-side benchmark (scripts/benchmark.py).

Each step has a planned budget (PLANS, written to the summary before the step starts): a step the remaining
budget cannot cover is skipped with the reason; a step that outruns its budget is killed with its whole process
group (torchrun's ranks too). The summary is rewritten after every step, so a killed check still leaves one. An
existing --out is refused, except with --only, whose steps then replace theirs in it (the others' are kept).
`--device cpu` rehearses the same code with sizes cut (SIZES): the CUDA-only fast paths are skipped with the
reason, everything else runs. Exits 1 if a step failed, else 0. The runbook: docs/benchmarks.md, "GPU day".
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import torch

from reptile_exp import strict_json
from reptile_exp.atomic import atomic_write_text, unwritable, unwritable_file
from reptile_exp.cli import at_least
from reptile_exp.hardware import cpu_name
from reptile_exp.run_results import read_json
from reptile_exp.tracking import MetricsFile

ROOT = Path(__file__).resolve().parents[1]
FAST_PATHS = {  # name -> overrides of the Omniglot 5-way run (benchmark.py's variant of the same name)
    "plain": [],
    "cudagraphs": ["compile=cudagraphs"],
    "tf32": ["precision=tf32"],
    "bf16": ["precision=bf16"],
    "inductor": ["compile=inductor"],
    "deterministic": ["deterministic=true"],
}
CUDA_ONLY = {"cudagraphs", "tf32"}
CUDA_MARK = "@pytest.mark.cuda"
EVAL_COLUMN = "eval s/1000 tasks"  # docs/benchmarks.md's CPU comparison table


@dataclass(frozen=True)
class Sizes:
    """How much each step does on one device: the GPU day's sizes, or the rehearsal's cut ones."""

    preset: list[str]  # the fast-path and two-rank runs
    iterations: int  # outer iterations per fast-path run, logged every `window` (the first window is warm-up)
    window: int
    eval_tasks: int
    tests: list[str]  # extra pytest arguments of the cuda-tests step
    benchmark: list[str]  # scripts/benchmark.py's arguments
    inductor_preset: list[str]  # compile=inductor's run (the rehearsal compiles the small sine model)


OMNIGLOT = ["experiment=omniglot_5w1s", "synthetic_data=true"]
SIZES = {
    "cuda": Sizes(
        OMNIGLOT,
        iterations=400,
        window=50,
        eval_tasks=1000,
        tests=[],
        benchmark=["--quick", "--presets", "omniglot", "--variants", *FAST_PATHS, "bmm", "bmm+bf16"],  # task_conv
        inductor_preset=OMNIGLOT,
    ),
    "cpu": Sizes(
        [*OMNIGLOT, "meta_batch=2", "k=2", "k_eval=5"],
        iterations=8,
        window=2,
        eval_tasks=10,
        tests=["-k", "not inductor"],  # compiling the conv net takes minutes on a CPU (the inductor run rehearses)
        benchmark=["--quick", "--presets", "omniglot", "--variants", "plain", "deterministic", "--repeats", "1"]
        + ["--min-seconds", "0.2", "--eval-tasks", "4", "--serial-eval-tasks", "1", "--profile", "0"]
        + ["--overrides", "meta_batch=2", "k=2", "k_eval=5"],
        inductor_preset=["experiment=sine_reptile", "meta_batch=2", "k=2", "k_eval=5"],
    ),
}
PLANS = {  # step -> planned seconds (its budget) on a modern GPU, and in the rehearsal on a 2-core CPU
    "environment": (15, 15),
    "cuda-tests": (150, 150),
    **{f"fast:{name}": (75 if name in ("cudagraphs", "inductor") else 35, 100) for name in FAST_PATHS},
    "two-ranks": (50, 60),
    "benchmark": (150, 120),
}


class Check:
    """One run of the check: the steps' results, written to `out` after every change."""

    def __init__(self, device: str, out: Path, work: Path, budget_s: float, plans: dict[str, float]):
        self.device, self.out, self.work, self.budget_s, self.plans = device, out, work, budget_s, plans
        self.sizes = SIZES[device]
        self.start = time.monotonic()
        self.summary = {
            "command": " ".join(["python", "scripts/gpu_check.py", *sys.argv[1:]]),
            "device": device,
            "rehearsal": device != "cuda",
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "budget_s": budget_s,
            "steps": {},
        }

    def left(self) -> float:
        return self.budget_s - (time.monotonic() - self.start)

    def write(self) -> None:
        self.summary["seconds"] = round(time.monotonic() - self.start, 1)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.out, strict_json.dumps(self.summary, indent=2) + "\n")

    def step(self, name: str, fn, skip: str | None = None) -> dict:
        """Run fn(budget) -> (ok, figures) within the step's planned budget, or skip it with the reason."""
        planned = self.plans[name]
        record = self.summary["steps"][name] = {"status": "running", "planned_s": planned}
        if skip is None and self.left() < planned:
            skip = f"needs its planned {planned:.0f} s, {max(self.left(), 0):.0f} s of the budget left"
        if skip is not None:
            record.update(status="skipped", reason=skip)
            print(f"skipped  {name}: {skip}", flush=True)
            self.write()
            return record
        self.write()
        t0 = time.monotonic()
        try:
            ok, figures = fn(planned)
        except Exception as e:  # one broken step must not cost the others
            ok, figures = False, {"error": f"{type(e).__name__}: {e}"}
        record.update(status="passed" if ok else "failed", seconds=round(time.monotonic() - t0, 1), **figures)
        print(f"{record['status']:<8} {name} ({record['seconds']} s)", flush=True)
        self.write()
        return record

    def command(self, name: str, cmd: list[str], budget: float, env: dict | None = None) -> tuple[int | None, str]:
        """cmd's exit status (None: killed at the budget, with its whole process group) and its output's tail.
        The output goes to work/logs/<name>.log."""
        log = self.work / "logs" / f"{name.replace(':', '-')}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "w") as f:
            out = {"stdin": subprocess.DEVNULL, "stdout": f, "stderr": subprocess.STDOUT}
            proc = subprocess.Popen(cmd, cwd=ROOT, env=env, start_new_session=True, **out)
            try:
                rc = proc.wait(timeout=budget)
            except subprocess.TimeoutExpired:
                kill_tree(proc.pid)
                proc.wait()
                rc = None
        return rc, log.read_text(errors="replace")[-2000:]


def kill_tree(pid: int) -> None:
    """SIGKILL pid, its process group and every descendant (Linux /proc): torchrun starts each rank in a session
    of its own, so a kill of the group alone leaves the ranks running. The tree is stopped first (SIGSTOP), so no
    process forks a new one while it is collected."""
    for sig in (signal.SIGSTOP, signal.SIGKILL):
        for p in descendants(pid):
            try:
                os.kill(p, sig)
            except ProcessLookupError:
                pass
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def descendants(pid: int) -> list[int]:
    """pid and all its descendants, from the parent pids in /proc/*/stat."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):  # ended meanwhile
            continue
        children.setdefault(ppid, []).append(int(stat.parent.name))
    tree, todo = [], [pid]
    while todo:
        tree.append(todo.pop())
        todo += children.get(tree[-1], [])
    return tree


def environment(device: str) -> dict:
    """The facts the GPU tables need: device, memory, driver, versions, bf16 and TF32 support."""
    facts = {"torch": torch.__version__, "python": platform.python_version(), "cpu": cpu_name()}
    facts["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        driver = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True, text=True
        )
        facts |= {
            "gpu": props.name,
            "gpus": torch.cuda.device_count(),
            "memory_gib": round(props.total_memory / 2**30, 1),
            "capability": f"{props.major}.{props.minor}",
            "driver": driver.stdout.strip() or "unknown (nvidia-smi failed)",
            "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(),
            "bf16": torch.cuda.is_bf16_supported(),
            "tf32": props.major >= 8,
        }
    else:
        facts |= {"gpus": 0, "cores": os.cpu_count(), "bf16": torch.ops.mkldnn._is_mkldnn_bf16_supported()}
    return facts


def test_counts(junit: Path) -> dict:
    """passed, failed, skipped (with the reasons) of a pytest run, from its JUnit XML."""
    counts, reasons = {"passed": 0, "failed": 0, "skipped": 0}, set()
    for case in ET.parse(junit).getroot().iter("testcase"):
        skipped = case.find("skipped")
        if skipped is not None:
            counts["skipped"] += 1
            reasons.add(skipped.get("message", ""))
        elif case.find("failure") is not None or case.find("error") is not None:
            counts["failed"] += 1
        else:
            counts["passed"] += 1
    return {**counts, "skip_reasons": sorted(reasons)}


def cuda_tests(check: Check, budget: float, selection: list[str]) -> tuple[bool, dict]:
    """The cuda-marked tests on check.device (the rehearsal runs them on the CPU); a run of no test fails. Only the
    files that hold such tests are collected: the GPU machine need not have what the others import (Optuna)."""
    junit = check.work / "cuda-tests.xml"
    cmd = [sys.executable, "-m", "pytest", "-n", "0", "-q", "-p", "no:cacheprovider", "-m", "cuda"]
    env = {**os.environ, "REPTILE_EXP_GPU_TESTS_DEVICE": check.device}
    files = [str(p.relative_to(ROOT)) for p in sorted((ROOT / "tests").glob("test_*.py")) if CUDA_MARK in p.read_text()]
    rc, tail = check.command("cuda-tests", [*cmd, f"--junit-xml={junit}", *selection, *files], budget, env)
    if rc is None:
        return False, {"error": f"killed at its {budget:.0f} s budget", "tail": tail}
    figures = test_counts(junit) if junit.exists() else {"passed": 0, "failed": 0, "skipped": 0}
    if figures["passed"] + figures["failed"] == 0:
        return False, {**figures, "error": "ran no test", "tail": tail}
    ok = rc == 0 and figures["failed"] == 0
    return ok, figures if ok else {**figures, "tail": tail}


def train_run(check: Check, name: str, overrides: list[str], budget: float, launcher: list[str] | None = None):
    """One training run of train.py with periodic evaluation off and one checkpoint at the end; its speed, memory
    and result."""
    sizes, run_dir = check.sizes, check.work / "runs" / name.replace(":", "-")
    cmd = [*(launcher or [sys.executable, "-m"]), "reptile_exp.train", *overrides]
    cmd += [f"device={check.device}", f"iterations={sizes.iterations}", f"log_every={sizes.window}", "eval_every=0"]
    cmd += [f"checkpoint_every={sizes.iterations}", f"eval_tasks={sizes.eval_tasks}", "eval_splits=[test]"]
    cmd += ["logger.mode=disabled", "progress=false", f"hydra.run.dir={run_dir}"]
    rc, tail = check.command(name, cmd, budget)
    if rc != 0:
        return False, {"error": "killed at its budget" if rc is None else f"exit status {rc}", "tail": tail}
    return True, {"command": " ".join(cmd[cmd.index("reptile_exp.train") :]), **run_figures(run_dir, sizes.eval_tasks)}


def run_figures(run_dir: Path, eval_tasks: int) -> dict:
    """Outer it/s (median over the logged windows after the first, which holds the warm-up and any compiling),
    evaluation s per 1,000 tasks (its first chunk's warm-up included), peak memory and the objective of a finished
    run dir."""
    summary = read_json(run_dir / "summary.json")
    records = MetricsFile(run_dir / "metrics.jsonl").read()
    rates = [r["train/iters_per_s"] for r in records if "train/iters_per_s" in r][1:]
    (protocol,) = summary["protocols"].values()
    return {
        "train_it_s": statistics.median(rates) if rates else None,
        "train_windows_timed": len(rates),
        "eval_s_per_1000": 1000 * protocol["seconds"] / (eval_tasks * len(summary["results"])),
        "peak_memory_mb": summary["peak_memory_mb"],
        "objective": summary["objective"],
        "objective_name": summary["objective_name"],
        "run_s": round(summary["seconds"], 1),
        "run_dir": str(run_dir),
    }


def two_ranks(check: Check, budget: float) -> tuple[bool, dict]:
    """The Omniglot run as two ranks (torchrun: NCCL on two GPUs; the rehearsal: gloo on the CPU)."""
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m"]
    return train_run(check, "two-ranks", check.sizes.preset, budget, torchrun)


def benchmark(check: Check, budget: float) -> tuple[bool, dict]:
    """scripts/benchmark.py side by side (the serial reference and each fast path); its report comes in a file."""
    report_path = check.work / "benchmark.json"
    cmd = [sys.executable, "scripts/benchmark.py", "--device", check.device, *check.sizes.benchmark]
    rc, tail = check.command("benchmark", [*cmd, "--json-out", str(report_path)], budget)
    if rc != 0:
        return False, {"error": "killed at its budget" if rc is None else f"exit status {rc}", "tail": tail}
    report = strict_json.loads(report_path.read_text())
    keys = ("train_it_s", "train_x_serial", "train_gflop_s", "train_peak_mb")
    keys += ("eval_s_per_1000", "eval_x_serial", "eval_peak_mb")
    contenders = {
        f"{preset}/{name}": {k: row[k] for k in keys}
        for preset, result in report["presets"].items()
        for name, row in result["contenders"].items()
    }
    return True, {"command": report["command"], "matmul_gflop_s": report["matmul_gflop_s"], "contenders": contenders}


def cpu_figures(doc: Path = ROOT / "docs" / "benchmarks.md") -> dict:
    """Each CPU machine's Omniglot 5-way plain-engine figures in docs/benchmarks.md: {machine: {train_it_s,
    eval_s_per_1000}}, from the two-thread rows of the CPU part's comparison table (its header starts `| machine |`;
    its `train it/s` and `eval s/1000 tasks` columns are the plain engine's)."""
    figures, header = {}, []
    cpu_part = doc.read_text().split("\n## CPU", 1)[-1].split("\n## ", 1)[0]
    for line in cpu_part.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not line.startswith("|"):
            header = []
        elif not header:
            header = cells
        elif header[0] == "machine" and "threads" in header and not set(cells) <= {"---"}:
            row = dict(zip(header, cells))
            if row["threads"] == "2":
                figures[row["machine"]] = {
                    "train_it_s": float(row["train it/s"]),
                    "eval_s_per_1000": float(row[EVAL_COLUMN]),
                }
    return figures


def comparison(steps: dict, rehearsal: bool) -> dict:
    """This device's plain Omniglot figures against each CPU of docs/benchmarks.md: x faster in training (it/s
    ratio) and in evaluation (s per 1,000 tasks, inverse ratio)."""
    plain = steps.get("fast:plain", {})
    if plain.get("status") != "passed" or not plain.get("train_it_s"):
        return {"skipped": "the plain fast-path run has no figures"}
    return {
        "note": "the rehearsal's cut sizes: not comparable" if rehearsal else "Omniglot 5-way, fast:plain vs the docs",
        **{
            machine: {
                "train_x": round(plain["train_it_s"] / cpu["train_it_s"], 2),
                "eval_x": round(cpu["eval_s_per_1000"] / plain["eval_s_per_1000"], 2),
            }
            for machine, cpu in cpu_figures().items()
        },
    }


def fill_x_serial(steps: dict) -> None:
    """Each fast-path step gets its benchmark ratios against the serial reference, where the benchmark ran it."""
    contenders = steps.get("benchmark", {}).get("contenders", {})
    for name in FAST_PATHS:
        row, step = contenders.get(f"omniglot/{name}"), steps.get(f"fast:{name}")
        if row and step:
            step["train_x_serial"], step["eval_x_serial"] = row["train_x_serial"], row["eval_x_serial"]


def run_check(check: Check, only: list[str] | None = None) -> dict:
    """Every step in order (or the `only` ones), then the ratios; returns the summary."""
    cuda, sizes = check.device == "cuda", check.sizes
    gpus = torch.cuda.device_count() if cuda else 0
    steps = [("environment", lambda budget: (True, environment(check.device)), None)]
    steps.append(("cuda-tests", lambda budget: cuda_tests(check, budget, sizes.tests), None))
    for name, overrides in FAST_PATHS.items():
        preset = sizes.inductor_preset if name == "inductor" else sizes.preset
        skip = None if cuda or name not in CUDA_ONLY else f"{overrides[0]} needs CUDA (a rehearsal on {check.device})"
        fn = lambda budget, n=name, o=[*preset, *overrides]: train_run(check, f"fast:{n}", o, budget)  # noqa: E731
        steps.append((f"fast:{name}", fn, skip))
    two = None if not cuda or gpus >= 2 else f"{gpus} CUDA GPU visible; two ranks need two"
    steps.append(("two-ranks", lambda budget: two_ranks(check, budget), two))
    steps.append(("benchmark", lambda budget: benchmark(check, budget), None))
    for name, fn, skip in steps:
        if only is None or name in only:
            check.step(name, fn, skip)
    fill_x_serial(check.summary["steps"])
    check.summary["compared_with_cpu"] = comparison(check.summary["steps"], check.device != "cuda")
    check.write()
    return check.summary


def plan(text: str) -> tuple[str, float]:
    """A --plan value, STEP=SECONDS, as (step, seconds)."""
    name, _, seconds = text.partition("=")
    if name not in PLANS or not seconds.replace(".", "", 1).isdigit():
        raise argparse.ArgumentTypeError(f"{text}: give STEP=SECONDS with STEP one of {list(PLANS)}")
    return name, float(seconds)


def arguments() -> argparse.ArgumentParser:
    """The command line (tests/test_docs.py parses every command of the docs with it)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda", help="cpu: the rehearsal")
    parser.add_argument("--out", type=Path, help="the JSON summary (default outputs/gpu_check/<time>/summary.json)")
    parser.add_argument("--work", type=Path, help="logs, run dirs, the benchmark's report (default: beside --out)")
    parser.add_argument(
        "--budget-s", type=at_least(1, float), default=450, help="no step starts that its plan cannot finish"
    )
    parser.add_argument("--only", nargs="+", choices=list(PLANS), help="run these steps only (e.g. the failed ones)")
    parser.add_argument(
        "--plan", nargs="+", default=[], type=plan, metavar="STEP=SECONDS", help="change a step's budget"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = arguments()
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA GPU is visible here; --device cpu rehearses the check")
    plans = {name: budgets[0 if args.device == "cuda" else 1] for name, budgets in PLANS.items()} | dict(args.plan)
    out = args.out or ROOT / "outputs" / "gpu_check" / time.strftime("%Y-%m-%d_%H-%M-%S") / "summary.json"
    work = args.work or out.parent / f"{out.stem}_steps"
    why = unwritable_file(out)  # refused now, not after the first step
    if why:
        parser.error(f"--out {out}: {why}; pass another path")
    if out.exists() and not args.only:
        parser.error(f"--out {out} exists; pass a new path, or --only STEP... to re-run steps into it")
    check = Check(args.device, out, work, args.budget_s, plans)
    if out.exists():  # --only: the re-run steps replace theirs, the others stay
        try:
            check.summary["steps"] = dict(strict_json.loads(out.read_text())["steps"])
        except (OSError, ValueError, LookupError, TypeError) as e:
            parser.error(f"--out {out} is no summary to re-run steps into ({type(e).__name__}: {e}); pass a new path")
    why = unwritable(work)  # last: a refused command leaves no folder behind
    if why:
        parser.error(f"--work {work} cannot be created or written ({why}); pass another folder")
    summary = run_check(check, args.only)
    print(f"summary: {out}")
    return 1 if any(step["status"] == "failed" for step in summary["steps"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
