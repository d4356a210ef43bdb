"""Speed of the task-batched engine against the serial reference, side by side in one process (issue 6).

    python scripts/benchmark.py --device cpu --repeats 5 [--quick] [--presets omniglot sine] [--variants plain inductor]

Per preset (synthetic data of the preset's shapes: nothing to download), every repeat times each contender in
turn, so a change in machine load hits all of them alike:
- meta-training: outer iterations per second after warm-up (sampling, inner loop and outer step, as train.py runs
  them), for the engine under each fast-path variant and for the serial reference (meta.reference.SerialReptile:
  one task after another, deepcopy + torch.optim per task, as the official code and learn2learn's examples);
- evaluation: seconds per 1,000 test tasks (the preset's protocol; Omniglot: 5-way 1-shot, 50 steps,
  non-transductive), the serial reference looping over tasks the same way. Fewer tasks may be timed
  (--eval-tasks, --serial-eval-tasks): the time is scaled to 1,000 and the table says how many were timed.
Reported: medians over repeats, the ratio engine/serial (median of the per-repeat ratios), achieved GFLOP/s (the
useful FLOPs of the serial reference's step, counted by torch.utils.flop_counter, times the rate) beside the
machine's measured matmul GFLOP/s, peak tensor memory (CUDA: max_memory_allocated; CPU: the profiler's allocation
events), the evaluation chunk against eval_memory_mb, where one training step's time goes (--profile 0 skips it)
and which operators take one evaluation of N tasks (--op-profile N) or N training steps (--train-op-profile N), of
--profile-variant (default plain). A human table first, then one JSON line, the last line of stdout
(and, with --json-out FILE, the same report in FILE).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from functools import partial
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from torch.profiler import ProfilerActivity, profile

from reptile_exp import fits, strict_json
from reptile_exp.atomic import atomic_write_text, unwritable_file
from reptile_exp.cli import at_least
from reptile_exp.config_checks import composition_error, validate
from reptile_exp.errors import ConfigError, ReptileExpError
from reptile_exp.experiment import build, set_deterministic
from reptile_exp.hardware import cpu_name, native_bf16
from reptile_exp.measure import flops, matmul_gflops, peak_memory_mb, rate, seconds, sync
from reptile_exp.meta.learner import Learner, check_fast_paths, set_precision
from reptile_exp.meta.reference import SerialReptile
from reptile_exp.report import eval_chunk, evaluate_split
from reptile_exp.train import outer_step

ROOT = Path(__file__).resolve().parents[1]
PRESETS = {  # preset name -> overrides; synthetic data of the preset's shapes
    "omniglot": ["experiment=omniglot_5w1s"],
    "sine": ["experiment=sine_reptile"],
    "miniimagenet": ["experiment=miniimagenet_5w5s"],
}
FAST_PATHS = {  # variant part -> overrides; a variant joins parts with "+": cudagraphs+tf32
    "plain": [],
    "unfused": ["fused_inner=false"],
    "vmap": ["grouped_tasks=false"],
    "bmm": ["task_conv=bmm"],
    "inductor": ["compile=inductor"],
    "cudagraphs": ["compile=cudagraphs"],
    "tf32": ["precision=tf32"],
    "bf16": ["precision=bf16"],
    "deterministic": ["deterministic=true"],
}
DEFAULT_VARIANTS = {
    "cpu": ["plain", "bf16", "inductor", "inductor+bf16"],
    "cuda": ["plain", "tf32", "bf16", "inductor", "cudagraphs", "cudagraphs+tf32", "cudagraphs+bf16"],
}


def contender(preset: str, device: str, overrides: list[str], variant: str = "plain") -> list[str]:
    """The overrides that make one contender's config: the preset on synthetic data, then --overrides, then the
    variant's fast paths."""
    fast = [o for part in variant.split("+") for o in FAST_PATHS[part]]
    quiet = ["logger.mode=disabled", "progress=false"]
    return [*PRESETS[preset], "synthetic_data=true", f"device={device}", *quiet, *overrides, *fast]


def config(overrides: list[str]):
    """The composed config, checked as a run checks it before any work (ConfigError: one line)."""
    try:
        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
            cfg = compose("train", overrides)
    except Exception as e:
        message = composition_error(e)
        if message is None:
            raise
        raise ConfigError(message) from None
    validate(cfg)
    check_fast_paths(torch.device(cfg.device.value), cfg.compile.value, cfg.precision.value)
    return cfg


class Serial:
    """The serial reference on the preset: its own phi (the same initialisation), sampler and eps schedule."""

    def __init__(self, cfg):
        self.exp = build(cfg)
        plain = self.exp.learner
        learner = Learner(plain.model, plain.inner_optimizer, plain.loss_name, plain.reduction)
        self.reference = SerialReptile(plain.model, learner, self.exp.outer)

    def outer_step(self) -> None:
        cfg, exp = self.exp.cfg, self.exp
        tasks = exp.dataset.sample_train(cfg.meta_batch, cfg.k, cfg.inner_batch, exp.task_generator, cfg.replacement)
        self.reference.outer_step(tasks.to(exp.device, exp.dtype))
        exp.scheduler.step()

    def evaluate(self, num_tasks: int, seed: int) -> None:
        cfg, exp = self.exp.cfg, self.exp
        generator = torch.Generator().manual_seed(seed)  # the engine's tasks: evaluate_split draws on the CPU too
        tasks = exp.dataset.sample_eval(num_tasks, cfg.k_eval, cfg.eval_batch, generator, "test", cfg.replacement)
        self.reference.evaluate(tasks.to(exp.device, exp.dtype), cfg.transductive)


def profile_split(exp, steps: int) -> dict:
    """Median seconds per outer step in sampling, the inner loop (adapt) and the outer step (meta-gradient, merge
    of the inner state, optimizer and schedule), with a device sync after each part (Reptile presets)."""
    cfg, device, parts = exp.cfg, exp.device, {"sampling": [], "inner loop": [], "outer step": []}
    clock = []

    def lap(part: str | None) -> None:
        sync(device)
        clock.append(time.perf_counter())
        if part is not None:
            parts[part].append(clock[-1] - clock[-2])

    for _ in range(steps):
        lap(None)
        tasks = exp.dataset.sample_train(cfg.meta_batch, cfg.k, cfg.inner_batch, exp.task_generator, cfg.replacement)
        tasks = tasks.to(device, exp.dtype)
        lap("sampling")
        weights, task_state, _ = exp.learner.adapt({n: p.detach() for n, p in exp.phi.items()}, tasks, exp.inner_state)
        lap("inner loop")
        for n, p in exp.phi.items():
            p.grad = p.detach() - weights[n].mean(0)
        exp.inner_state = exp.learner.inner_optimizer.merge(task_state)
        exp.outer.step()
        exp.scheduler.step()
        lap("outer step")
    return {part: statistics.median(times) for part, times in parts.items()}


def operator_split(run, device: torch.device, top: int = 8) -> dict:
    """Seconds of self time per operator while run() runs, after one untimed call (torch.profiler; CUDA: device
    time): the `top` largest, then the rest as "other"."""
    run()  # warm-up: allocator and kernels
    cuda = device.type == "cuda"
    with profile(activities=[ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if cuda else [])]) as prof:
        run()
        sync(device)
    self_us = {e.key: e.self_device_time_total if cuda else e.self_cpu_time_total for e in prof.key_averages()}
    ranked = sorted(self_us.items(), key=lambda kv: kv[1], reverse=True)
    split = {name: us / 1e6 for name, us in ranked[:top]}
    split["other"] = sum(us for _, us in ranked[top:]) / 1e6
    return split


def evaluation_ops(exp, num_tasks: int) -> dict:
    """operator_split of one evaluation of num_tasks test tasks."""
    return operator_split(lambda: evaluate_split(exp, "test", num_tasks, seed=0), exp.device)


def training_ops(exp, steps: int) -> dict:
    """operator_split of `steps` outer training steps."""
    return operator_split(lambda: [outer_step(exp) for _ in range(steps)], exp.device)


def bench_preset(preset: str, args, device: torch.device, cfgs: dict) -> dict:
    """One preset's report; cfgs: its contenders' configs by variant (the serial reference's: plain)."""
    variants = args.variants or DEFAULT_VARIANTS[device.type]
    plain_cfg = cfgs["plain"]
    engines = {v: build(cfgs[v]) for v in variants}
    for exp in engines.values():  # a step or an evaluation chunk that cannot fit: one line, before any timing
        fits.check(exp, training=True)
    serial = Serial(plain_cfg)
    eval_tasks, serial_eval_tasks = args.eval_tasks, args.serial_eval_tasks
    # name -> (outer step, evaluation of n tasks with a seed, settings); precision and deterministic kernels are
    # process-wide: use(settings) sets them per turn
    contenders = {"serial": (serial.outer_step, serial.evaluate, ("highest", False))}
    for v, exp in engines.items():
        contenders[v] = (
            lambda exp=exp: outer_step(exp),
            lambda n, seed, exp=exp: evaluate_split(exp, "test", n, seed),
            (exp.cfg.precision.value, exp.cfg.deterministic),
        )

    def use(settings: tuple[str, bool]) -> None:
        set_precision(device, settings[0])
        set_deterministic(settings[1])

    print(f"[{preset}] warm-up (torch.compile variants compile now)", file=sys.stderr, flush=True)
    for name, (step, evaluate, settings) in contenders.items():
        use(settings)
        for _ in range(args.warmup):
            step()
        evaluate(1 if name == "serial" else eval_tasks, 1)  # compiled variants compile the evaluation's shapes now
    train = {name: [] for name in contenders}
    evaluation = {name: [] for name in contenders}
    for r in range(args.repeats):
        print(f"[{preset}] repeat {r + 1}/{args.repeats}", file=sys.stderr, flush=True)
        for name, (step, evaluate, settings) in contenders.items():
            use(settings)
            train[name].append(rate(step, device, args.min_seconds))
            if r < args.eval_repeats:
                n = serial_eval_tasks if name == "serial" else eval_tasks
                evaluation[name].append(seconds(partial(evaluate, n, 2), device) * 1000 / n)

    use(("highest", False))
    step_flops = flops(serial.outer_step)
    task_flops = flops(lambda: serial.evaluate(1, 3))
    result = {
        "preset": PRESETS[preset] + args.overrides,
        "train_step_gflop": step_flops / 1e9,
        "eval_task_gflop": task_flops / 1e9,
        "eval_tasks_timed": eval_tasks,
        "serial_eval_tasks_timed": serial_eval_tasks,
        "eval_memory_mb": plain_cfg.eval_memory_mb,
        "contenders": {},
    }
    for name, (step, evaluate, settings) in contenders.items():
        use(settings)
        its, secs = train[name], evaluation[name]
        chunk = 1 if name == "serial" else eval_chunk(engines[name], eval_tasks)
        result["contenders"][name] = {
            "train_it_s": statistics.median(its),
            "train_it_s_range": [min(its), max(its)],
            "train_x_serial": statistics.median(a / b for a, b in zip(its, train["serial"])),
            "train_gflop_s": statistics.median(its) * step_flops / 1e9,
            "train_peak_mb": peak_memory_mb(step, device),
            "eval_s_per_1000": statistics.median(secs),
            "eval_s_per_1000_range": [min(secs), max(secs)],
            "eval_x_serial": statistics.median(b / a for a, b in zip(secs, evaluation["serial"])),
            "eval_gflop_s": 1000 * task_flops / statistics.median(secs) / 1e9,
            "eval_chunk": chunk,
            "eval_peak_mb": peak_memory_mb(partial(evaluate, chunk, 3), device),  # one chunk
        }
    if args.profile or args.op_profile or args.train_op_profile:
        profiled = cfgs[args.profile_variant]
        use((profiled.precision.value, profiled.deterministic))
        result["profiled_variant"] = args.profile_variant
    if args.profile:
        result["profile_s"] = profile_split(build(profiled), args.profile)
    if args.op_profile:
        result["eval_ops_tasks"] = args.op_profile
        result["eval_ops_s"] = evaluation_ops(build(profiled), args.op_profile)
    if args.train_op_profile:
        result["train_ops_steps"] = args.train_op_profile
        result["train_ops_s"] = training_ops(build(profiled), args.train_op_profile)
    use(("highest", False))
    return result


def table(report: dict) -> str:
    lines = [
        f"device {report['device']}, torch {report['torch']}, {report['threads']} threads, "
        f"load average {report['load_average'][0]:.1f} at start, {report['load_average'][1]:.1f} at end",
        "bfloat16 {} ({})".format("native" if report["native_bf16"][0] else "emulated", report["native_bf16"][1]),
        "matmul ceiling: " + ", ".join(f"{k} {v:,.0f} GFLOP/s" for k, v in report["matmul_gflop_s"].items()),
    ]
    for preset, res in report["presets"].items():
        lines += [
            "",
            f"{preset} ({' '.join(res['preset'])}, synthetic data): train step {res['train_step_gflop']:.3g} GFLOP, "
            f"eval {res['eval_task_gflop']:.3g} GFLOP/task; eval timed on {res['eval_tasks_timed']} tasks "
            f"(serial: {res['serial_eval_tasks_timed']}), scaled to 1,000",
            f"{'contender':<32}{'train it/s':>11}{'x serial':>9}{'GFLOP/s':>9}{'peak MB':>9}"
            f"{'eval s/1000':>13}{'x serial':>9}{'GFLOP/s':>9}{'chunk':>7}{'peak MB':>9}",
        ]
        for name, row in res["contenders"].items():
            label = "serial reference" if name == "serial" else f"engine {name}"
            lines.append(
                f"{label:<32}{row['train_it_s']:>11.3g}{row['train_x_serial']:>9.2f}{row['train_gflop_s']:>9.3g}"
                f"{row['train_peak_mb']:>9.1f}{row['eval_s_per_1000']:>13.4g}{row['eval_x_serial']:>9.2f}"
                f"{row['eval_gflop_s']:>9.3g}{row['eval_chunk']:>7}{row['eval_peak_mb']:>9.1f}"
            )
        lines.append(f"eval_memory_mb budget {res['eval_memory_mb']:g} MB per chunk")
        if "profile_s" in res:
            total = sum(res["profile_s"].values())
            split = ", ".join(f"{k} {1000 * v:.3g} ms ({100 * v / total:.0f}%)" for k, v in res["profile_s"].items())
            lines.append(f"one engine step ({res['profiled_variant']}): {split}")
        for ops, count, what in (
            ("eval_ops_s", "eval_ops_tasks", "one evaluation of {} tasks"),
            ("train_ops_s", "train_ops_steps", "{} training steps"),
        ):
            if ops in res:
                total = sum(res[ops].values())
                split = ", ".join(f"{k} {100 * v / total:.0f}%" for k, v in res[ops].items())
                lines.append(f"{what.format(res[count])} ({res['profiled_variant']}), self time by operator: {split}")
    return "\n".join(lines)


def variant(text: str) -> str:
    """A --variants value: fast-path parts joined by '+' (argparse reports any other as a usage error)."""
    if not set(text.split("+")) <= set(FAST_PATHS):
        raise argparse.ArgumentTypeError(f"{text}: each part must be one of {list(FAST_PATHS)}")
    return text


def arguments() -> argparse.ArgumentParser:
    """The command line (tests/test_docs.py parses every command of the docs with it)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--presets", nargs="+", choices=list(PRESETS), default=["omniglot", "sine"])
    parser.add_argument(
        "--variants", nargs="+", type=variant, help=f"fast-path variants, parts joined by '+': {list(FAST_PATHS)}"
    )
    parser.add_argument("--overrides", nargs="+", default=[], help="config overrides for every contender")
    parser.add_argument("--repeats", type=at_least(1), help="timed rounds, medians over them (default 5, --quick 2)")
    parser.add_argument(
        "--eval-repeats", type=at_least(1), help="rounds that also time evaluation (default: --repeats)"
    )
    parser.add_argument(
        "--warmup", type=at_least(0), help="untimed outer iterations per contender (default 2, --quick 1)"
    )
    parser.add_argument(
        "--min-seconds", type=at_least(0, float), help="shortest training timing per contender and round"
    )
    parser.add_argument("--eval-tasks", type=at_least(1), help="engine: test tasks timed (default cuda 1000, cpu 100)")
    parser.add_argument(
        "--serial-eval-tasks", type=at_least(1), help="serial: test tasks timed (default cuda 100, cpu 10)"
    )
    parser.add_argument("--profile", type=at_least(0), help="steps of the time split, 0: none (default 3, --quick 1)")
    parser.add_argument("--op-profile", type=at_least(0), default=0, help="tasks of a profiled evaluation (0: none)")
    parser.add_argument(
        "--train-op-profile", type=at_least(0), default=0, help="outer steps of a profiled training (0: none)"
    )
    parser.add_argument("--profile-variant", type=variant, default="plain", help="the variant the three profiles run")
    parser.add_argument(
        "--threads", type=at_least(1), help="CPU intra-op threads (torch.set_num_threads; default: torch's)"
    )
    parser.add_argument("--json-out", type=Path, help="also write the JSON report to this file")
    parser.add_argument("--quick", action="store_true", help="a rough figure in a minute or two: smaller defaults")
    return parser


def main(argv: list[str] | None = None) -> dict:
    parser = arguments()
    args = parser.parse_args(argv)
    why = args.json_out and unwritable_file(args.json_out)  # refused now, not after the timing
    if why:
        parser.error(f"--json-out {args.json_out}: {why}; pass a file path in a writable folder")
    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA GPU is visible here; --device cpu times this CPU")
    quick = args.quick  # smaller defaults; a flag given on the command line is taken as given
    defaults = {"repeats": 2 if quick else 5, "warmup": 1 if quick else 2, "profile": 1 if quick else 3}
    defaults["min_seconds"] = 0.5 if quick else 2.0
    defaults["eval_tasks"] = (200 if quick else 1000) if cuda else (10 if quick else 100)
    defaults["serial_eval_tasks"] = (20 if quick else 100) if cuda else (2 if quick else 10)
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.eval_repeats = args.repeats if args.eval_repeats is None else args.eval_repeats
    if args.eval_repeats > args.repeats:
        parser.error(f"--eval-repeats {args.eval_repeats}: at most --repeats ({args.repeats}), the rounds there are")
    variants = dict.fromkeys(["plain", *(args.variants or DEFAULT_VARIANTS[args.device]), args.profile_variant])
    cfgs = {preset: {} for preset in args.presets}  # every contender's, checked before the timing
    for preset in args.presets:
        for v in variants:
            try:
                cfgs[preset][v] = config(contender(preset, args.device, args.overrides, v))
            except ReptileExpError as e:
                given = f" --overrides {' '.join(args.overrides)}" if args.overrides else ""
                parser.error(f"--presets {preset} --variants {v}{given}: {e}")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch._dynamo.config.recompile_limit = 64  # compiled variants share the compiled code's cache (one per learner)
    device = torch.device(args.device)
    load_start = os.getloadavg()[0]
    n, repeats = (16384, 5) if cuda else (1024 if args.quick else 2048, 5)
    set_precision(device, "highest")
    ceilings = {"float32": matmul_gflops(device, torch.float32, n, repeats)}
    ceilings["bfloat16"] = matmul_gflops(device, torch.bfloat16, n, repeats)
    if cuda:
        set_precision(device, "tf32")
        ceilings["tf32"] = matmul_gflops(device, torch.float32, n, repeats)
        set_precision(device, "highest")
    try:
        presets = {p: bench_preset(p, args, device, cfgs[p]) for p in args.presets}
    except ReptileExpError as e:  # a contender this machine cannot run (--overrides device=cuda on a CPU, a size)
        parser.error(str(e))
    report = {
        "command": " ".join(["python", "scripts/benchmark.py", *(sys.argv[1:] if argv is None else argv)]),
        "device": torch.cuda.get_device_name(device) if cuda else f"cpu ({os.cpu_count()} cores): {cpu_name()}",
        "native_bf16": native_bf16(device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "settings": {k: getattr(args, k) for k in ("repeats", "eval_repeats", "warmup", "profile", "min_seconds")},
        "load_average": [load_start, os.getloadavg()[0]],
        "matmul_gflop_s": ceilings,
        "presets": presets,
    }
    print(table(report))
    print(strict_json.dumps(report), flush=True)
    if args.json_out:
        atomic_write_text(args.json_out, strict_json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
