"""Turn Hydra multiruns into a table (CSV + Markdown) and one figure (the studies of issue 4, docs/results.md).

    python scripts/study.py DIR [DIR ...] --plot {learning,k,steps} [--out FIGURE.png]

Each DIR is a multirun directory (outputs/multiruns/...) whose job dirs hold summary.json, metrics.jsonl and
.hydra/overrides.yaml. A failed job (error.txt) or one an Optuna pruner stopped is a row of the table with its
status, and is left out of the `k` and `steps` panels (a pruned job's curve shows in `learning`); jobs with
neither file (still running) are reported and skipped. A job file that does not read (summary.json, .hydra/'s
config.yaml, hydra.yaml or overrides.yaml; error.txt a folder) ends the script in one line naming it; an error.txt
that is not UTF-8 is read with its odd bytes as U+FFFD. Complements
the sweep summary every multirun writes (reptile_exp/sweep.py: one row per job, objective against the swept
knobs) with the studies' own views, one panel per DIR:
  learning  the periodic evaluation metric against the outer iteration, one curve per job (gradient combinations)
  k         the final metric against the inner steps k, one line per algorithm (the same-k comparison)
  steps     sine: the MSE after 0..k_eval test-time steps, one curve per job (REFERENCE.md section 8)
Writes FIGURE.png, FIGURE.csv and FIGURE.md (default FIGURE: DIR/study.png) and prints the Markdown table.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.backend_bases import FigureCanvasBase  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from reptile_exp.atomic import unwritable_file  # noqa: E402
from reptile_exp.errors import ReptileExpError  # noqa: E402
from reptile_exp.run_results import read_json, read_text, read_yaml  # noqa: E402
from reptile_exp.sweep import choice, is_run_dir, job_dirs, overrides  # noqa: E402
from reptile_exp.tracking import MetricsFile  # noqa: E402

IGNORED = ("hydra", "logger", "progress", "debug")  # overrides that do not distinguish jobs
CURVE_STEPS = (0, 1, 5, 10)  # sine: table columns "MSE after j steps" (and after k; the final metric is after k_eval)


def load_jobs(sweep: Path) -> tuple[list[dict], list[str]]:
    """The finished and the failed jobs of one multirun (summary.json, error.txt), in job order, and the names of
    the job dirs with neither (still running, or killed)."""
    jobs, missing = [], []
    for job in job_dirs(sweep):
        summary, error = job / "summary.json", job / "error.txt"
        if not (summary.exists() or error.exists()):
            missing.append(job.name)
            continue
        cfg = OmegaConf.create(read_yaml(job / ".hydra" / "config.yaml"))
        jobs.append(
            {
                "sweep": sweep.name,
                "job": job.name,
                "overrides": [f"{k}={v}" for k, v in overrides(job).items() if not k.startswith(IGNORED)],
                "name": cfg.name,
                "algorithm": _algorithm(choice(job, "algorithm"), cfg),
                "k": cfg.k,
                "summary": read_json(summary) if summary.exists() else None,
                "error": None if summary.exists() else read_text(error),
                "records": MetricsFile(job / "metrics.jsonl").read(),
            }
        )
    _label(jobs)
    return jobs, missing


def _algorithm(choice: str, cfg) -> str:
    return f"{choice} (first-order)" if cfg.algorithm.get("first_order") else choice


def _label(jobs: list[dict]) -> None:
    """A job's label: its run name when those tell the jobs apart, else the overrides that differ between jobs."""
    names = [j["name"] for j in jobs]
    shared = set.intersection(*(set(j["overrides"]) for j in jobs)) if jobs else set()
    for job in jobs:
        varying = ",".join(o for o in job["overrides"] if o not in shared)
        job["label"] = job["name"] if len(set(names)) == len(names) and all(names) else varying or job["name"]


def rows(jobs: list[dict]) -> list[dict]:
    """One table row per job: the final metric of the objective split with its 95% interval, and for sine the
    MSE after 0, 1, 5, 10 and k test-time steps (the final metric is the MSE after k_eval steps)."""
    out = []
    for job in jobs:
        row = {k: job[k] for k in ("sweep", "job", "label", "algorithm", "k")}
        summary = job["summary"]
        if summary is None or "pruned_at" in summary:
            status = f"failed: {job['error']}" if summary is None else f"pruned at iteration {summary['pruned_at']}"
            out.append({**row, "status": status, "overrides": " ".join(job["overrides"])})
            continue
        split, metric = summary["objective_name"].split("/")
        result = summary["results"][split]
        row.update(
            status="finished",
            split=split,
            metric=metric,
            value=result[metric],
            ci95=result[f"{metric}_ci95"],
            iterations=summary["iterations"],
            seconds=round(summary["seconds"], 1),
        )
        curve = result.get("mse_curve")
        if curve:
            row.update({f"mse_after_{s}": curve[s] for s in CURVE_STEPS if s < len(curve)})
            row["mse_after_k"] = curve[job["k"]] if job["k"] < len(curve) else None
        row["overrides"] = " ".join(job["overrides"])
        out.append(row)
    return out


def write_tables(table: list[dict], stem: Path) -> str:
    """CSV (every field) and Markdown (run, algorithm, k, final metric +- 95% CI, sine MSE after j steps,
    iterations, seconds) next to the figure; returns the Markdown."""
    columns = list(dict.fromkeys(c for row in table for c in row))
    with open(stem.with_suffix(".csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(table)
    metrics = {(r["split"], r["metric"]) for r in table if "metric" in r}
    steps = sorted({int(c.rsplit("_", 1)[1]) for c in columns if c.startswith("mse_after_") and c[-1].isdigit()})
    steps = [str(j) for j in steps] + (["k"] if "mse_after_k" in columns else [])
    sweeps = len({r["sweep"] for r in table}) > 1
    header = [
        *(["sweep"] if sweeps else []),
        "run",
        "algorithm",
        "k",
        " ".join(next(iter(metrics))) if len(metrics) == 1 else "final metric",
        *(f"MSE after {j}" for j in steps),
        "iterations",
        "seconds",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in table:
        if "metric" in row:
            scale = 100 if row["metric"] == "accuracy" else 1
            value = f"{scale * row['value']:.4g} +- {scale * row['ci95']:.2g}"
            value = value if len(metrics) == 1 else f"{row['split']} {row['metric']} {value}"
        else:
            value = row["status"]
        cells = [
            *([row["sweep"]] if sweeps else []),
            row["label"],
            row["algorithm"],
            str(row["k"]),
            value,
            *(_fmt(row.get(f"mse_after_{j}")) for j in steps),
            _fmt(row.get("iterations")),
            _fmt(row.get("seconds")),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    markdown = "\n".join(lines) + "\n"
    stem.with_suffix(".md").write_text(markdown)
    return markdown


def _fmt(value) -> str:
    if value is None:
        return ""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _eval_key(records: list[dict]) -> str | None:
    keys = sorted({k for r in records for k in r if k.startswith("eval/") and k.endswith(("accuracy", "mse"))})
    return keys[0] if keys else None


def plot(sweeps: list[list[dict]], kind: str, path: Path) -> None:
    """One panel per multirun; see the module docstring for the three kinds."""
    fig, axes = plt.subplots(1, len(sweeps), figsize=(6 * len(sweeps), 4.2), squeeze=False)
    for ax, reported in zip(axes[0], ([j for j in jobs if j["summary"]] for jobs in sweeps)):
        finished = [j for j in reported if "pruned_at" not in j["summary"]]
        metric = finished[0]["summary"]["objective_name"] if finished else ""
        jobs = reported if kind == "learning" else finished
        if kind == "learning":
            key = next((k for k in map(lambda j: _eval_key(j["records"]), jobs) if k), None)
            for job in sorted(jobs, key=lambda j: (j["k"], j["label"])):
                points = [(r["iteration"], r[key]) for r in job["records"] if key in r]
                if points:
                    ax.plot(*zip(*points), label=job["label"])
            ax.set(xlabel="outer iteration", ylabel=key or "periodic evaluation")
        elif kind == "k":
            for algorithm in dict.fromkeys(j["algorithm"] for j in jobs):
                table = sorted((r for r in rows(jobs) if r["algorithm"] == algorithm), key=lambda r: r["k"])
                ax.errorbar(
                    [r["k"] for r in table],
                    [r["value"] for r in table],
                    yerr=[r["ci95"] for r in table],
                    marker="o",
                    capsize=3,
                    label=algorithm,
                )
            ax.set_xscale("log", base=2)
            ax.minorticks_off()
            ax.set(xlabel="inner steps k (training)", ylabel=f"final {metric}")
            ax.set_xticks(sorted({j["k"] for j in jobs}), [str(k) for k in sorted({j["k"] for j in jobs})])
        else:
            for job in jobs:
                curve = job["summary"]["results"][metric.split("/")[0]].get("mse_curve", [])
                ax.plot(range(len(curve)), curve, label=job["label"])
            ax.set(xlabel="inner steps at test time", ylabel=f"{metric} (mean over test tasks)", yscale="log")
        ax.set_title(jobs[0]["sweep"] if jobs else "")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def arguments() -> argparse.ArgumentParser:
    """The command line (tests/test_docs.py parses every command of the docs with it)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dirs", nargs="+", type=Path, help="multirun directories")
    parser.add_argument("--plot", choices=("learning", "k", "steps"), required=True)
    parser.add_argument("--out", type=Path, help="figure path (.png, .pdf, .svg, ...); the tables go next to it")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = arguments()
    args = parser.parse_args(argv)
    for sweep in args.dirs:
        if not sweep.is_dir():
            parser.error(f"{sweep} is not a directory: pass a multirun dir (outputs/multiruns/<date>_<time>)")
        if is_run_dir(sweep):
            multirun = "the multirun dir that holds its jobs (outputs/multiruns/<date>_<time>)"
            parser.error(f"{sweep} is a single run dir; pass {multirun}")
    out = args.out or args.dirs[0] / "study.png"
    formats = FigureCanvasBase.get_supported_filetypes()
    if out.suffix[1:] not in formats:
        parser.error(f"--out {out}: the figure path must end in {', '.join(f'.{f}' for f in sorted(formats))}")
    why = next(filter(None, map(unwritable_file, (out, out.with_suffix(".csv"), out.with_suffix(".md")))), None)
    if why:  # refused now, not after the tables
        parser.error(f"--out {out}: {why}; pass another path")
    sweeps = []
    for sweep in args.dirs:
        try:
            jobs, missing = load_jobs(sweep)
        except ReptileExpError as e:
            parser.exit(1, f"{parser.prog}: error: {e}\n")
        if missing:
            print(f"{sweep}: neither summary.json nor error.txt in job dirs {', '.join(missing)} (unfinished); skipped")
        if not any(j["summary"] for j in jobs):
            parser.error(f"{sweep} holds no finished job (no <job>/summary.json)")
        sweeps.append(jobs)
    print(write_tables([row for jobs in sweeps for row in rows(jobs)], out.with_suffix("")), end="")
    plot(sweeps, args.plot, out)
    print(f"wrote {out}, {out.with_suffix('.csv')}, {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
