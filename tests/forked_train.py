"""`python -m reptile_exp.train ARGS` for many ARGS, each in a process of its own forked from this one, which has
imported the entry point first: a fresh interpreter spends most of a run that fails on bad input importing torch.

    python tests/forked_train.py --jobs 3 --work DIR < argument_lists.json > outcomes.json

stdin: a JSON list of argument lists; stdout: a JSON list of {"returncode", "stdout", "stderr"} in the same order
(the children's output goes through files in DIR).
Each child runs reptile_exp.train.main() with sys.argv as `python -m` sets it, its stdout and stderr redirected to
files, and ends as the interpreter does: exit handlers run, then the status of SystemExit, or the traceback on
stderr and status 1 for any other exception. tests/test_bad_inputs.py runs its cases this way; its console-script
test runs a fresh interpreter.
"""

import argparse
import atexit
import json
import os
import sys
import traceback
from pathlib import Path

import torch._dynamo  # noqa: F401  (what the first torch.optim optimizer of every run imports)

from reptile_exp import train


def child(args: list[str], out: Path, err: Path) -> None:
    status = 0
    try:
        for fd, path in ((1, out), (2, err)):
            os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
        sys.argv = [train.__file__, *args]
        train.main()
    except SystemExit as e:
        if e.code is None or isinstance(e.code, int):
            status = e.code or 0
        else:
            print(e.code, file=sys.stderr)
            status = 1
    except BaseException:
        traceback.print_exc()
        status = 1
    finally:
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)


def run_all(cases: list[list[str]], jobs: int, work: Path) -> list[dict]:
    running, statuses, pending = {}, {}, list(enumerate(cases))
    while pending or running:
        while pending and len(running) < jobs:
            i, args = pending.pop(0)
            pid = os.fork()
            if pid == 0:
                child(args, work / f"{i}.out", work / f"{i}.err")
            running[pid] = i
        pid, wait_status = os.wait()
        statuses[running.pop(pid)] = os.waitstatus_to_exitcode(wait_status)
    return [
        {
            "returncode": statuses[i],
            "stdout": (work / f"{i}.out").read_text(),
            "stderr": (work / f"{i}.err").read_text(),
        }
        for i in range(len(cases))
    ]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2, help="children at once")
    parser.add_argument("--work", type=Path, required=True, help="a folder for the children's output files")
    options = parser.parse_args()
    options.work.mkdir(parents=True, exist_ok=True)
    print(json.dumps(run_all(json.load(sys.stdin), options.jobs, options.work)))
