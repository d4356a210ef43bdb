"""Render the paper's Table 1 (Omniglot) and Table 2 (Mini-ImageNet) beside our runs, in Markdown and CSV.

    python scripts/paper_table.py <run, evaluation or sweep dirs ...> [--out DIR]

Reads training runs (summary.json; every protocol of a multi-protocol run, e.g. experiment=paper_omniglot_5w),
evaluate-only runs (evaluation.json; their training schedule comes from the evaluated checkpoint's run dir)
and sweep or parent dirs holding such runs. Each table row: ours on the test split (mean +- 95% CI over all
test tasks; with several runs, e.g. seeds, pooled over their tasks, plus the mean and spread over runs), the
paper's number (reptile_exp/paper.py), the difference, whether the paper's mean lies in our 95% interval,
the training schedule used, every other setting the runs differ from the paper's config of the cell in, the wall
time and device. Rows without a run say "not run".
Writes <out>/paper_tables.md and <out>/paper_tables.csv (out: the first dir given).
"""

from __future__ import annotations

import argparse
import csv
import functools
import io
import math
import re
import statistics
import sys
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from reptile_exp import paper
from reptile_exp.atomic import atomic_write_text, unwritable
from reptile_exp.errors import ReptileExpError
from reptile_exp.experiment import TRAINING_GROUPS, TRAINING_KEYS, TRAINING_TOP, fingerprint
from reptile_exp.run_results import Entry, entries, run_dirs

ROOT = Path(__file__).resolve().parents[1]
ABSENT = "unset"  # a key a config lacks (an older run's, another optimizer's)
# Not settings of a cell: what picks it (N-way, K-shot), the seed and the schedule (the Seeds and Training columns);
# synthetic data is named below, the evaluation's included
NOT_SETTINGS = ("dataset.n_way", "dataset.k_shot", "seed", "iterations", "synthetic_data")
# What an evaluation reads from its own run's config, the checkpoint giving phi and the inner state: the inner
# optimizer that fine-tunes each task, its loss and its arithmetic
EVALUATION_READS = ("inner_optimizer", "loss_reduction", "dtype")
INTERPOLATION = re.compile(r"\$\{([\w.]+)\}")


def pooled(found: list[Entry]) -> tuple[float, float, int]:
    """Mean and 95% CI half-width over the test tasks of all runs together (from each run's mean, CI, count)."""
    n = sum(e.tasks for e in found)
    mean = sum(e.tasks * e.accuracy for e in found) / n
    if n < 2:
        return mean, math.nan, n
    # a run's variance from its CI; a run of one task has none (its CI is nan) and adds its task through the means
    squares = sum((e.tasks - 1) * (e.ci95 * math.sqrt(e.tasks) / 1.96) ** 2 for e in found if e.tasks > 1)
    squares += sum(e.tasks * (e.accuracy - mean) ** 2 for e in found)
    return mean, 1.96 * math.sqrt(squares / (n - 1) / n), n


@functools.cache
def paper_config(column: paper.Column, algorithm: str) -> dict:
    """The paper's config of a table cell (unresolved): its column's preset (conf/experiment, the paper's settings)
    with the row's algorithm, this machine's conf/local settings left out."""
    local = ["~local@_global_"] if (ROOT / "conf" / "local" / "default.yaml").exists() else []
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
        cfg = compose("train", overrides=[f"experiment={column.preset}", f"algorithm={algorithm}", *local])
    return OmegaConf.to_container(cfg, enum_to_str=True)


def _leaves(tree: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in tree.items():
        out.update(_leaves(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
    return out


def settings(config: dict) -> dict[str, Any]:
    """What shapes training in a config (experiment.fingerprint's entries) by dotted config key, the cell's, the
    seed and the schedule aside; an entry the config lacks is ABSENT."""
    filled = {**dict.fromkeys((*TRAINING_KEYS, *TRAINING_TOP), ABSENT), **dict.fromkeys(TRAINING_GROUPS, {}), **config}
    found = _leaves(fingerprint(OmegaConf.create(filled)))
    return {k: v for key, v in found.items() if (k := key.removeprefix("training.")) not in NOT_SETTINGS}


def _named(key: str, paper_raw: dict, config: DictConfig, value: Any) -> str:
    """The knob a user sets for `key`: the one the paper's config interpolates it from (inner_optimizer.lr:
    inner_lr; outer_optimizer.lr: epsilon) while the run keeps that link, else `key`."""
    raw = paper_raw
    for part in key.split("."):
        raw = raw.get(part) if isinstance(raw, dict) else None
    link = INTERPOLATION.fullmatch(raw) if isinstance(raw, str) else None
    return link[1] if link and OmegaConf.select(config, link[1], default=ABSENT) == value else key


def differences(found: list[Entry], column: paper.Column, method: paper.Row) -> list[str]:
    """Every setting where these runs differ from the paper's config of the cell (paper_config): each that shapes
    training (iterations apart), those an evaluation reads from its own config where it is not the training's,
    the protocol (eval_batch, k_eval), the test tasks per evaluation and the arithmetic (float32)."""
    paper_raw = paper_config(column, method.algorithm)
    theirs, compared = settings(paper_raw), {}  # compared: the name shown -> (the paper's value, ours)
    for e in found:
        configs = {"": e.training, "evaluated with ": e.evaluation}
        ours = {label: settings(config) for label, config in configs.items()}
        configs = {label: OmegaConf.create(config) for label, config in configs.items()}
        for key in dict.fromkeys([*theirs, *ours[""], *ours["evaluated with "]]):
            trained, evaluated = ours[""].get(key, ABSENT), ours["evaluated with "].get(key, ABSENT)
            seen = [("", trained)]
            if key.split(".")[0] in EVALUATION_READS and evaluated != trained:
                seen.append(("evaluated with ", evaluated))
            for label, value in seen:
                name = _named(key, paper_raw, configs[label], value)
                if name not in NOT_SETTINGS:
                    compared.setdefault(label + name, (theirs.get(key, ABSENT), []))[1].append(value)
        for knob, value in (("eval_batch", e.eval_batch), ("k_eval", e.k_eval), ("eval_tasks", e.tasks)):
            compared.setdefault(knob, (paper_raw[knob], []))[1].append(value)
    out = [
        f"{name} {'/'.join(sorted(dict.fromkeys(map(str, ours))))} (paper {paper_value})"
        for name, (paper_value, ours) in compared.items()
        if any(value != paper_value for value in ours)
    ]
    train_precision = sorted({e.training.get("precision", "highest") for e in found})
    eval_precision = sorted({e.evaluation.get("precision", "highest") for e in found})
    if {*train_precision, *eval_precision} != {paper_raw["precision"]}:  # the paper's arithmetic is float32
        out.append(f"precision: training {'/'.join(train_precision)}, evaluation {'/'.join(eval_precision)}")
    if any(e.synthetic for e in found):
        out.append("synthetic data (random images)")
    return out


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    return (
        f"{seconds / 3600:.2f} h"
        if seconds >= 3600
        else f"{seconds / 60:.1f} min"
        if seconds >= 60
        else f"{seconds:.0f} s"
    )


def row(table: str, column: paper.Column, method: paper.Row, found: list[Entry]) -> dict:
    """One table row: ours against the paper's number, or "not run"."""
    mean_paper, pm_paper = paper.reported(table, method, column)
    out = {
        "table": table,
        "setting": column.label,
        "method": method.label,
        "paper": f"{mean_paper:.2f} +- {pm_paper:.2f}",
        "paper_mean": mean_paper,
        "paper_pm": pm_paper,
        "paper_iterations": column.iterations,
    }
    if not found:
        return {**out, "status": f"not run: none of the run dirs given holds this {column.dataset} row"}
    mean, ci, tasks = pooled(found)
    mean, ci = 100 * mean, 100 * ci
    runs = [100 * e.accuracy for e in found]
    iterations = sorted({e.iterations for e in found})
    shortened = max(iterations) < column.iterations
    schedule = (
        "/".join(f"{i:,}" for i in iterations)
        + " iterations "
        + (
            f"(shortened: the paper's is {column.iterations:,})"
            if shortened
            else "(the paper's schedule)"
            if iterations == [column.iterations]
            else f"(the paper's is {column.iterations:,})"
        )
    )
    first = found[0]
    out.update(
        status="run",
        ours=f"{mean:.2f} +- {ci:.2f}",
        ours_mean=round(mean, 4),
        ours_ci95=round(ci, 4),
        tasks=tasks,
        runs=len(found),
        seeds=" ".join(str(s) for s in sorted({e.seed for e in found})),
        over_runs=(
            f"{statistics.mean(runs):.2f} (sd {statistics.stdev(runs):.2f}, {len(runs)} runs)" if len(runs) > 1 else ""
        ),
        difference=round(mean - mean_paper, 4),
        paper_inside="yes" if abs(mean - mean_paper) <= ci else "no",
        iterations=" ".join(str(i) for i in iterations),
        schedule=schedule,
        differs="; ".join(differences(found, column, method)) or "none",
        wall_time=(
            f"train {_duration(first.train_seconds)}{first.train_seconds_note}, eval {_duration(first.eval_seconds)}"
            + (" (first run)" if len(found) > 1 else "")
        ),
        device=first.device,
        source=" ".join(str(e.run) for e in found),
    )
    return out


def build(found: list[Entry]) -> list[dict]:
    """Every row of Tables 1 and 2, in the paper's order (methods down, settings across, flattened)."""
    rows = []
    for table in paper.TITLES:
        for column in paper.columns(table):
            for method in paper.ROWS:
                cell = [
                    e
                    for e in found
                    if (e.dataset, e.n_way, e.k_shot) == (column.dataset, column.n_way, column.k_shot)
                    and (e.algorithm, e.transductive) == (method.algorithm, method.transductive)
                ]
                rows.append(row(table, column, method, cell))
    return rows


MD_COLUMNS = [
    ("setting", "Setting"),
    ("method", "Method"),
    ("ours", "Ours (95% CI, test tasks)"),
    ("over_runs", "Mean over runs"),
    ("paper", "Paper"),
    ("difference", "Ours - paper"),
    ("paper_inside", "Paper's mean in our CI"),
    ("schedule", "Training"),
    ("differs", "Other settings differing from the paper"),
    ("wall_time", "Wall time"),
    ("device", "Device"),
    ("tasks", "Test tasks"),
    ("seeds", "Seeds"),
]
CSV_COLUMNS = [
    "table",
    "setting",
    "method",
    "status",
    "ours_mean",
    "ours_ci95",
    "tasks",
    "runs",
    "seeds",
    "over_runs",
    "paper_mean",
    "paper_pm",
    "difference",
    "paper_inside",
    "iterations",
    "paper_iterations",
    "schedule",
    "differs",
    "wall_time",
    "device",
    "source",
]


def _cell(r: dict, key: str) -> str:
    if r["status"] != "run" and key == "ours":
        return r["status"]
    value = r.get(key, "")
    return f"{value:+.2f}" if isinstance(value, float) else str(value).replace("|", "\\|")


def markdown(rows: list[dict]) -> str:
    lines = ["# The paper's tables beside ours", "", "Accuracy (%) on the test split; paper: v3, reptile_exp/paper.py."]
    for table, title in paper.TITLES.items():
        lines += [
            "",
            f"## {title}",
            "",
            "| " + " | ".join(h for _, h in MD_COLUMNS) + " |",
            "|" + "---|" * len(MD_COLUMNS),
        ]
        lines += ["| " + " | ".join(_cell(r, k) for k, _ in MD_COLUMNS) + " |" for r in rows if r["table"] == table]
    return "\n".join(lines) + "\n"


def arguments() -> argparse.ArgumentParser:
    """The command line (tests/test_docs.py parses every command of the docs with it)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dirs", nargs="+", type=Path, help="run dirs, evaluate-only dirs, sweep or parent dirs")
    parser.add_argument("--out", type=Path, help="where to write paper_tables.{md,csv} (default: the first dir)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = arguments()
    args = parser.parse_args(argv)
    runs = {path: run_dirs(path) for path in args.dirs}
    for path in args.dirs:
        if not runs[path]:
            print(
                f"error: {path} holds no results (no summary.json or evaluation.json); pass run or sweep dirs",
                file=sys.stderr,
            )
            return 1
    out = args.out or args.dirs[0]
    why = unwritable(out)  # refused now, not after reading the runs
    if why:
        parser.error(f"--out {out}: cannot create or write it ({why}); pass another folder")
    try:
        found = [e for path in args.dirs for run in runs[path] for e in entries(run)]
    except ReptileExpError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    rows = build(found)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out / "paper_tables.csv", buffer.getvalue())
    atomic_write_text(out / "paper_tables.md", markdown(rows))
    print(out / "paper_tables.md")
    print(out / "paper_tables.csv")
    return 0


if __name__ == "__main__":
    sys.exit(main())
