"""A run dir's test results read back, one entry per evaluation protocol, with how its phi was trained.

Reads training runs (summary.json), evaluate-only runs (evaluation.json: the training schedule then comes from
the evaluated checkpoint's run dir) and legacy runs written before `protocols` existed (one protocol, from
config.yaml's knobs). scripts/paper_table.py sets these beside the paper's Tables 1 and 2.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import yaml

from . import strict_json
from .atomic import atomic_write_text
from .errors import ReptileExpError, first_line

RESULT_FILES = ("summary.json", "evaluation.json")
REDO = "restore it, or delete it and run the same command again to redo the final evaluation from the newest checkpoint"


class DamagedFile(ReptileExpError):
    """A run dir's file (summary.json, evaluation.json, config.yaml, metrics.jsonl) that does not parse."""


SUMMARY_KEYS = ("objective_name", "objective", "results", "iterations", "seconds")  # what every reader takes


def read_json(path: Path, keys: tuple[str, ...] = ()) -> dict:
    """A run dir's JSON file (summary.json, evaluation.json) holding `keys` (strict_json: "nan" read as the float),
    or DamagedFile naming it and the way out."""
    try:
        loaded = strict_json.loads(Path(path).read_text())
    except (ValueError, UnicodeDecodeError, IsADirectoryError) as e:
        raise DamagedFile(f"{path} is not valid JSON ({first_line(e)}); {REDO}") from None
    if not isinstance(loaded, dict):
        raise DamagedFile(f"{path} is not a run's results (a JSON object); {REDO}")
    missing = [key for key in keys if key not in loaded]
    if missing:
        raise DamagedFile(f"{path} lacks {', '.join(missing)}; {REDO}")
    return loaded


def objective_of(results: dict, path: Path) -> float:
    """The objective a run's results (read_json of `path`) hold, or DamagedFile naming the file."""
    objective = results.get("objective")
    if isinstance(objective, bool) or not isinstance(objective, (int, float)):
        raise DamagedFile(f"{path} holds no objective (a number); {REDO}")
    return objective


def read_yaml(path: Path, kind: type = dict) -> dict | list:
    """A run dir's config.yaml (a mapping), or with kind=list its .hydra/overrides.yaml (the job's command-line
    overrides, `key=value` strings); DamagedFile naming it otherwise."""
    try:
        loaded = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:  # a job dir's .hydra/hydra.yaml or config.yaml that a copy or a hand left out
        raise DamagedFile(f"{path} is missing; restore it, or use a new run dir") from None
    except (yaml.YAMLError, UnicodeDecodeError, IsADirectoryError) as e:
        raise DamagedFile(f"{path} cannot be read ({first_line(e)}); restore it, or use a new run dir") from None
    if kind is list:
        loaded = [] if loaded is None else loaded
        valid = isinstance(loaded, list) and all(isinstance(o, str) for o in loaded)
        what = "a job's overrides (a YAML list of key=value)"
    else:
        valid, what = isinstance(loaded, dict), "a config (a YAML mapping)"
    if not valid:
        raise DamagedFile(f"{path} is not {what}; restore it, or use a new run dir")
    return loaded


def read_text(path: Path) -> str:
    """A job dir's one-line record (error.txt, wandb_run_id), stripped; bytes that are not UTF-8 read as U+FFFD (the
    rest of the line stays legible). DamagedFile naming it when it is a folder."""
    try:
        return Path(path).read_text(errors="replace").strip()
    except IsADirectoryError:
        raise DamagedFile(f"{path} is a folder where the job keeps a file; move it away") from None


@dataclass
class Entry:
    """One protocol's test result from one run dir, with how that run was trained."""

    run: Path
    dataset: str
    algorithm: str
    n_way: int
    k_shot: int
    transductive: bool
    eval_batch: int
    k_eval: int
    seed: int
    accuracy: float  # fraction
    ci95: float
    tasks: int
    iterations: int  # outer iterations the evaluated phi was trained for
    training: dict  # the training run's config (or this run's when the checkpoint's run is not found)
    train_seconds: float | None
    train_seconds_note: str
    eval_seconds: float | None
    device: str
    synthetic: bool  # trained or evaluated on random images (synthetic_data=true, debug=smoke)
    evaluation: dict  # the evaluating run's config (a training run's: `training`)


def run_dirs(path: Path) -> list[Path]:
    """`path` itself when it holds results, else the run dirs below it (a sweep or parent dir)."""
    if any((path / f).exists() for f in RESULT_FILES):
        return [path]
    return sorted({p.parent for f in RESULT_FILES for p in path.glob(f"**/{f}")})


def _option_name(target: str) -> str:
    """reptile_exp.data.omniglot.Omniglot -> omniglot; reptile_exp.meta.algorithms.FOMAML -> fomaml."""
    return target.split(".")[-2 if ".data." in target else -1].lower()


def _checkpoint_run(run: Path, checkpoint: str | None) -> Path | None:
    """The run dir of the evaluated checkpoint (<run>/checkpoints/ckpt-*.pt): absolute, or relative to the
    directory the evaluation was launched from (a parent of `run`)."""
    if not checkpoint:
        return None
    path = Path(checkpoint)
    candidates = [path] if path.is_absolute() else [Path.cwd() / path, *(p / path for p in run.resolve().parents)]
    for c in candidates:
        if c.exists():
            c = c.parent if c.is_file() else c
            return c.parent if c.name == "checkpoints" else c
    return None


def _training_time(run: Path) -> tuple[float | None, str]:
    """A training run's wall time: summed from metrics.jsonl's speeds (periodic evaluations included, the final
    evaluation not), else its summary.json's seconds (with the final evaluation). metrics.jsonl is read as a run
    reads it (MetricsFile: a line that is not JSON skipped, one not text or not a record DamagedFile)."""
    total, previous = 0.0, 0
    for r in MetricsFile(run / "metrics.jsonl").read():
        if "train/iters_per_s" in r:
            total += (r["iteration"] - previous) / r["train/iters_per_s"]
            previous = r["iteration"]
    if previous:
        return total, ""
    summary = run / "summary.json"
    if summary.exists():
        return read_json(summary, ("seconds",))["seconds"], " (with its final evaluation)"
    return None, ""


def entries(run: Path) -> list[Entry]:
    """Every protocol's test result of a run dir (legacy runs: one, from config.yaml's knobs)."""
    result_file = next(run / f for f in RESULT_FILES if (run / f).exists())
    result = read_json(result_file, ("results",))
    cfg = read_yaml(run / "config.yaml")
    training, train_seconds, note = cfg, None, ""
    if result_file.name == "evaluation.json":
        source = _checkpoint_run(run, result.get("checkpoint"))
        if source is not None and (source / "config.yaml").exists():
            training = read_yaml(source / "config.yaml")
            train_seconds, note = _training_time(source)
        else:
            note = " (the checkpoint's run dir was not found)"
    else:
        train_seconds, note = _training_time(run)
    if training["algorithm"]["_target_"].endswith("MAML") and training["algorithm"].get("first_order"):
        algorithm = "fomaml"
    else:
        algorithm = _option_name(training["algorithm"]["_target_"])
    protocols = result.get("protocols") or {
        "default": {
            **result["results"],
            "k_shot": cfg["dataset"]["k_shot"],
            "transductive": cfg["transductive"],
            "eval_batch": cfg["eval_batch"],
            "k_eval": cfg["k_eval"],
        }
    }
    compiled = "" if cfg.get("compile", "none") == "none" else f", compile={cfg['compile']}"
    found = []
    for protocol in protocols.values():
        test = protocol.get("test")
        if test is None or "accuracy" not in test:
            continue
        found.append(
            Entry(
                run=run,
                dataset=_option_name(cfg["dataset"]["_target_"]),
                algorithm=algorithm,
                n_way=cfg["dataset"]["n_way"],
                k_shot=protocol["k_shot"],
                transductive=protocol["transductive"],
                eval_batch=protocol["eval_batch"],
                k_eval=protocol["k_eval"],
                seed=cfg["seed"],
                accuracy=test["accuracy"],
                ci95=test["accuracy_ci95"],
                tasks=cfg["eval_tasks"],
                iterations=result["iterations"],
                training=training,
                train_seconds=train_seconds,
                train_seconds_note=note,
                eval_seconds=protocol.get(
                    "seconds", result["seconds"] if result_file.name == "evaluation.json" else None
                ),
                synthetic=bool(cfg.get("synthetic_data") or training.get("synthetic_data")),
                device=f"{result['device']} (threads={cfg.get('threads', 0) or 'default'}{compiled})",
                evaluation=cfg,
            )
        )
    return found


class MetricsFile:
    """metrics.jsonl: one JSON record per logged step, each with its `iteration`."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def truncate_after(self, iteration: int) -> None:
        """Drop what was logged after the checkpoint a resume starts from: records past `iteration`
        and the final evaluation's (`final/*` keys, logged after the last checkpoint)."""
        if not self.path.exists():
            return
        kept = [r for r in self.read() if r["iteration"] <= iteration and not any(k.startswith("final/") for k in r)]
        atomic_write_text(self.path, "".join(strict_json.dumps(r) + "\n" for r in kept))

    def read(self) -> list[dict]:
        """The records; a line cut short by a kill mid-write is skipped, anything else not a record is DamagedFile."""
        if not self.path.exists():
            return []
        fix = "restore it, or move it away to start the metrics afresh"
        try:
            lines = self.path.read_text().splitlines()
        except (UnicodeDecodeError, IsADirectoryError) as e:
            raise DamagedFile(f"{self.path} cannot be read ({first_line(e)}); {fix}") from None
        records = []
        for number, line in enumerate(lines, 1):
            try:
                record = strict_json.loads(line)
            except json.JSONDecodeError:
                continue
            if not isinstance(record, dict) or not isinstance(record.get("iteration"), int):
                raise DamagedFile(f"{self.path} line {number} is not a metrics record (no iteration): {fix}")
            records.append(record)
        return records

    def append(self, record: dict) -> None:
        with open(self.path, "a") as f:
            f.write(strict_json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())
