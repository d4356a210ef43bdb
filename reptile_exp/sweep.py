"""Sweep summary: one row per job of a multirun (its overrides, status and final metrics).

Writes <sweep dir>/sweep_summary.csv (every override, every metric), sweep_summary.md (the knobs
that vary, the common overrides above the table) and, for a sweep over one or two knobs,
sweep_summary.png (the objective, with its 95% interval, against the knob with more values (the first on a tie),
one line per value of the other; a `seed` knob is always the lines).
The Hydra callback SweepSummary does it at the end of every multirun (conf/hydra/default.yaml);
`python scripts/summarize_sweep.py <sweep dir>` does it later, e.g. while SLURM jobs still run.
"""

from __future__ import annotations

import csv
import io
import logging
import math
from pathlib import Path
from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from .atomic import atomic_write_text
from .checkpoint import PATTERN
from .errors import first_line
from .run_results import RESULT_FILES, SUMMARY_KEYS, DamagedFile, read_json, read_text, read_yaml

log = logging.getLogger(__name__)
FIRST, LAST = ["job"], ["status", "objective_name", "objective"]
TRAILER = ["iteration", "seconds", "wandb_run_id", "error"]  # iteration: the last one reached


def job_dirs(sweep_dir: Path) -> list[Path]:
    """The jobs' output dirs (those holding .hydra/overrides.yaml), in job-number order."""
    dirs = [p.parent.parent for p in Path(sweep_dir).glob("**/.hydra/overrides.yaml")]
    return sorted(dirs, key=lambda d: (not d.name.isdigit(), int(d.name) if d.name.isdigit() else 0, str(d)))


def is_run_dir(path: Path) -> bool:
    """Whether `path` is one run's dir (its own .hydra/ record or results), not a sweep dir of job dirs."""
    return (path / ".hydra").is_dir() or any((path / f).exists() for f in RESULT_FILES)


def as_dict(items: list[str]) -> dict[str, str]:
    """Overrides `key=value` as a dict (Hydra's `+`, `++` and `~` prefixes dropped)."""
    return dict((item.lstrip("+~").split("=", 1) + [""])[:2] for item in items)


def overrides(job_dir: Path) -> dict[str, str]:
    """The job's command-line overrides (.hydra/overrides.yaml), or DamagedFile naming that file."""
    return as_dict(read_yaml(job_dir / ".hydra" / "overrides.yaml", list))


def choice(job_dir: Path, group: str) -> str:
    """The option of config group `group` the job ran (.hydra/hydra.yaml's hydra.runtime.choices), or DamagedFile
    naming that file."""
    path = job_dir / ".hydra" / "hydra.yaml"
    node = read_yaml(path)
    for key in ("hydra", "runtime", "choices", group):
        node = node.get(key) if isinstance(node, dict) else None
    if not isinstance(node, str):
        raise DamagedFile(f"{path} names no {group} (hydra.runtime.choices.{group}); restore it, or use a new run dir")
    return node


def readable_overrides(job_dir: Path) -> dict[str, str]:
    """The job's overrides, none where its overrides.yaml is damaged (its row says so: job_row)."""
    try:
        return overrides(job_dir)
    except DamagedFile:
        return {}


def job_row(job_dir: Path, sweep_dir: Path) -> dict[str, Any]:
    """Overrides, status (finished, pruned, failed, incomplete, damaged) and final metrics of one job; pruned:
    stopped by an Optuna sweeper's pruner (summary.json's `pruned_at`; reptile_exp/pruning.py), its objective the
    last periodic evaluation's; damaged: its summary or its overrides do not parse, or a job without results has a
    folder for its error.txt or wandb_run_id (the error says which file). error.txt and wandb_run_id are read
    whatever their bytes (read_text)."""
    row: dict[str, Any] = {"job": str(job_dir.relative_to(sweep_dir))}
    error = job_dir / "error.txt"
    # a training job's summary, or an evaluate_only job's
    summary = next((p for p in (job_dir / "summary.json", job_dir / "evaluation.json") if p.exists()), None)
    try:
        row.update(overrides(job_dir))
        s = None if summary is None else read_json(summary, SUMMARY_KEYS)
    except DamagedFile as e:
        s, row["status"], row["error"] = None, "damaged", str(e)
    if s is not None:
        row.update(
            status="pruned" if "pruned_at" in s else "finished",
            objective_name=s["objective_name"],
            objective=float(s["objective"]),  # nan: diverged
        )
        for split, result in s["results"].items():
            row.update({f"{split}/{k}": v for k, v in result.items() if not isinstance(v, (list, dict))})
        row.update(iteration=s["iterations"], seconds=round(s["seconds"], 1))
    else:
        row.setdefault("status", "failed" if error.exists() else "incomplete")
        done = [int(m.group(1)) for p in (job_dir / "checkpoints").glob("ckpt-*.pt") if (m := PATTERN.search(p.name))]
        row["iteration"] = max(done, default=0)
    for key, record in (("wandb_run_id", job_dir / "wandb_run_id"), ("error", error)):
        if record.exists():
            try:
                row.setdefault(key, read_text(record))
            except DamagedFile as e:
                row.setdefault("error", str(e))
                if s is None:  # a finished job keeps its results, the error names the file
                    row["status"] = "damaged"
    return row


def varying(rows: list[dict], keys: list[str]) -> list[str]:
    """The override keys whose value differs between jobs (the swept knobs)."""
    return [k for k in keys if len({str(r.get(k)) for r in rows}) > 1]


def summarize(sweep_dir: Path) -> dict[str, Path]:
    """Write the summary table (CSV and Markdown) and, for one or two swept knobs, the plot."""
    sweep_dir = Path(sweep_dir)
    dirs = job_dirs(sweep_dir)
    rows = [job_row(d, sweep_dir) for d in dirs]
    knobs = list(dict.fromkeys(k for d in dirs for k in readable_overrides(d)))
    metrics = sorted({k for r in rows for k in r if "/" in k and k not in knobs and k != "objective_name"})
    columns = FIRST + knobs + LAST + metrics + [c for c in TRAILER if any(c in r for r in rows)]
    written = {"csv": sweep_dir / "sweep_summary.csv", "md": sweep_dir / "sweep_summary.md"}

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(written["csv"], buffer.getvalue())

    swept = varying(rows, knobs)
    atomic_write_text(written["md"], markdown(sweep_dir, rows, swept, [k for k in knobs if k not in swept], columns))
    png = plot(rows, swept, sweep_dir / "sweep_summary.png")
    if png is not None:
        written["png"] = png
    return written


def _cell(value: Any) -> str:
    if isinstance(value, str) and "." in value and _number(value) is not None:
        value = float(value)  # an Optuna trial's 0.0012520653814999472
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value).replace("|", "\\|")


def best(rows: list[dict]) -> dict | None:
    """The finished job with the best objective (accuracy: highest; mse and losses: lowest)."""
    done = [r for r in rows if r["status"] == "finished" and math.isfinite(r["objective"])]
    if not done:
        return None
    sign = 1 if done[0]["objective_name"].endswith("accuracy") else -1
    return max(done, key=lambda r: sign * r["objective"])


def markdown(sweep_dir: Path, rows: list[dict], swept: list[str], common: list[str], columns: list[str]) -> str:
    states = ("finished", "pruned", "failed", "damaged", "incomplete")
    counts = {s: sum(r["status"] == s for r in rows) for s in states}
    tally = ", ".join(f"{n} {s}" for s, n in counts.items() if n or s not in ("pruned", "damaged"))  # pruned: Optuna
    lines = [f"# Sweep {sweep_dir.name}", "", f"{len(rows)} jobs: {tally}"]
    if common and rows:
        lines += ["", "Common overrides: " + " ".join(f"`{k}={rows[0].get(k)}`" for k in common)]
    top = best(rows)
    if top is not None:
        knobs = " ".join(f"`{k}={_cell(top.get(k))}`" for k in swept)
        lines += ["", f"Best {top['objective_name']}: {top['objective']:.4g} (job {top['job']} {knobs})".rstrip()]
    shown = [c for c in columns if c not in common and any(c in r for r in rows)]
    lines += ["", "| " + " | ".join(shown) + " |", "|" + "---|" * len(shown)]
    lines += ["| " + " | ".join(_cell(r.get(c)) for c in shown) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _number(value: str) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def plot(rows: list[dict], swept: list[str], path: Path) -> Path | None:
    """The objective (with its 95% CI) against one swept knob, one line per value of a second one."""
    done = [r for r in rows if r["status"] == "finished" and math.isfinite(r["objective"])]
    if not done or not 1 <= len(swept) <= 2:
        return None
    from .plots import pyplot  # imports torch: only when there is a figure to draw

    plt = pyplot()
    x_key, line_key = swept[0], (swept[1] if len(swept) == 2 else None)
    distinct = lambda key: len({r.get(key) for r in done})  # noqa: E731
    if line_key and (x_key == "seed" or (line_key != "seed" and distinct(line_key) > distinct(x_key))):
        x_key, line_key = line_key, x_key  # x: the knob with more values; seeds: one line each
    values = list(dict.fromkeys(r.get(x_key) for r in done))
    numeric = all(_number(v) is not None for v in values)
    order = sorted(values, key=_number) if numeric else values
    position = {v: (_number(v) if numeric else i) for i, v in enumerate(order)}
    name = done[0]["objective_name"]

    fig, ax = plt.subplots(figsize=(6, 4))
    for line in dict.fromkeys(r.get(line_key) for r in done):
        points = sorted(((position[r[x_key]], r) for r in done if r.get(line_key) == line), key=lambda p: p[0])
        ax.errorbar(
            [p for p, _ in points],
            [r["objective"] for _, r in points],
            yerr=[r.get(f"{name}_ci95", 0.0) if math.isfinite(r.get(f"{name}_ci95", 0.0)) else 0.0 for _, r in points],
            marker="o",
            capsize=3,
            label=f"{line_key}={line}" if line_key else None,
        )
    if numeric and min(position.values()) > 0 and max(position.values()) >= 100 * min(position.values()):
        ax.set_xscale("log")
    if not numeric:
        ax.set_xticks(range(len(order)), order)
    ax.set(xlabel=x_key, ylabel=name, title=f"sweep {path.parent.name}")
    if line_key:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def unfinished(sweep_dir: Path) -> str | None:
    """One line naming the jobs that failed or did not finish (their number and overrides), or None. A pruned job
    is neither: it stopped early because its sweeper asked it to."""
    dirs = job_dirs(sweep_dir)
    rows = [job_row(d, sweep_dir) for d in dirs]
    bad = [r for r in rows if r["status"] not in ("finished", "pruned")]
    if not bad:
        return None
    named = "; ".join(
        f"job {r['job']} ({' '.join(f'{k}={v}' for k, v in readable_overrides(sweep_dir / r['job']).items())})"
        for r in bad
    )
    return f"{len(bad)} of {len(rows)} jobs failed or did not finish: {named}; see {sweep_dir / 'sweep_summary.md'}"


def _changed(ran: dict[str, str], gets: dict[str, str]) -> str:
    keys = [k for k in dict.fromkeys([*ran, *gets]) if ran.get(k) != gets.get(k)]
    side = lambda o: " ".join(f"{k}={o[k]}" if k in o else f"no {k}" for k in keys)  # noqa: E731
    return f"ran {side(ran)}, this sweep gives it {side(gets)}"


def refusal(config: DictConfig) -> str | None:
    """Why a multirun must not start (a joblib launcher with n_jobs=0; a basic sweep of no jobs, or into a sweep
    dir whose job dirs ran other overrides), or None; checked before Hydra writes any job dir."""
    launcher = config.hydra.launcher
    if launcher._target_.endswith(".JoblibLauncher") and launcher.get("n_jobs") == 0:
        return "hydra.launcher.n_jobs=0 is invalid: give a number of parallel jobs >= 1 (or -1: one per CPU core)"
    if not config.hydra.sweeper._target_.endswith(".BasicSweeper"):
        return None  # Optuna's sweeper draws its jobs as it goes
    params = [f"{k}={v}" for k, v in (config.hydra.sweeper.get("params") or {}).items()]
    parsed = OverridesParser.create(GlobalHydra.instance().config_loader()).parse_overrides(
        [*params, *OmegaConf.to_container(config.hydra.overrides.task)]
    )
    jobs = [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]
    if not jobs:
        empty = next(o.input_line for o in parsed if o.is_sweep_override() and not list(o.sweep_string_iterator()))
        hint = "; range(start, stop) counts up and stops before stop: count down with step=-1"
        return f"the sweep has no jobs: {empty} has no values{hint if 'range(' in empty else ''}"
    sweep_dir = Path(config.hydra.sweep.dir)
    for num, job in enumerate(jobs):
        ran = sweep_dir / str(num)
        try:
            done = overrides(ran) if (ran / ".hydra" / "overrides.yaml").exists() else None
        except DamagedFile as e:
            return f"hydra.sweep.dir={sweep_dir} holds a damaged job {num}: {e}"
        if done is not None and done != as_dict(job):
            changed = _changed(done, as_dict(job))
            return (
                f"hydra.sweep.dir={sweep_dir} holds another sweep (job {num} {changed}); "
                "re-run that sweep's exact command to resume it, or set hydra.sweep.dir to a new folder"
            )
    return None


class SweepSummary(Callback):
    """Hydra callback: refuse a multirun that must not start (`refusal`); summarize the sweep dir when a multirun
    ends (any launcher or sweeper), then, if a job failed or did not finish, end the command with exit status 1 and
    a last line that names those jobs. It raises SystemExit: Hydra turns a callback's exception into a warning."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        problem = refusal(config)
        if problem is not None:
            raise SystemExit(f"error: {problem}")

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        try:
            written = summarize(sweep_dir)
            failed = unfinished(sweep_dir)
        except Exception as e:
            log.exception("the sweep summary failed")
            raise SystemExit(
                f"error: cannot summarize {sweep_dir} ({first_line(e)}); fix what the traceback above names, then "
                f"run python scripts/summarize_sweep.py {sweep_dir}"
            ) from e
        log.info("sweep summary: %s", ", ".join(str(p) for p in written.values()))
        if failed is not None:
            raise SystemExit(f"error: {failed}")  # after every job ran and the summary exists
