"""Summarize a multirun sweep dir: sweep_summary.{csv,md} and, for one or two swept knobs, sweep_summary.png.

    python scripts/summarize_sweep.py outputs/multiruns/<date>_<time> [more sweep dirs]

The Hydra callback does the same when a multirun ends; this script is for sweeps still running
(SLURM) or whose submitting process was gone before the end. Jobs without summary.json show as
failed (error.txt) or incomplete (with the iteration of their newest checkpoint); a job whose files do not read
shows as damaged, the file named in its error.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from reptile_exp.sweep import is_run_dir, job_dirs, summarize


def arguments() -> argparse.ArgumentParser:
    """The command line (tests/test_docs.py parses every command of the docs with it)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dirs", nargs="+", type=Path, help="multirun sweep dir(s) (hydra.sweep.dir)")
    return parser


def not_a_sweep(sweep_dir: Path) -> str | None:
    """Why sweep_dir is no sweep dir to summarize, or None."""
    if is_run_dir(sweep_dir):
        return "is a run dir, not a sweep dir"
    return None if job_dirs(sweep_dir) else "holds no jobs (no */.hydra/overrides.yaml)"


def main(argv: list[str] | None = None) -> int:
    parser = arguments()
    args = parser.parse_args(argv)
    for sweep_dir in args.sweep_dirs:
        why = not_a_sweep(sweep_dir)
        if why is not None:
            print(f"error: {sweep_dir} {why}; pass a multirun dir (outputs/multiruns/<date>_<time>)", file=sys.stderr)
            return 1
        for path in summarize(sweep_dir).values():
            print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
