"""A stand-in for the SLURM controller (sbatch, srun, scontrol, sacct, scancel) on one machine, for tests.

SLURM cannot exist here, so this is the one mocked piece: sbatch keeps a copy of the batch script and
runs it in the background with the SLURM_* variables a node would set; srun starts SLURM_NTASKS copies
of the command (SLURM_PROCID = 0..n-1) with submitit's log paths; `scontrol requeue <job>` marks the
job, and the runner runs its batch script again once it exits (as SLURM requeues a pre-empted job);
sacct knows no job, so submitit waits for the result file. Everything else (the sbatch script
submitit writes from conf/launcher/slurm.yaml, submitit's job runner and signal handlers, Hydra, the
training run) is real. install(tmp_path) puts the commands first on a PATH.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

COMMANDS = ("sbatch", "srun", "scontrol", "sacct", "scancel")
JOB_ID = 4242


def install(tmp_path: Path) -> dict[str, str]:
    """Write the fake commands into tmp_path/fake_slurm/bin; return the environment variables to use them."""
    bin_dir, state = tmp_path / "fake_slurm" / "bin", tmp_path / "fake_slurm" / "state"
    bin_dir.mkdir(parents=True)
    state.mkdir()
    for name in COMMANDS:
        path = bin_dir / name
        path.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{__file__}" {name} "$@"\n')
        path.chmod(0o755)
    return {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "FAKE_SLURM_STATE": str(state)}


def state() -> Path:
    return Path(os.environ["FAKE_SLURM_STATE"])


def sbatch(script: str) -> None:
    text = Path(script).read_text()
    options = dict(re.findall(r"^#SBATCH --([\w-]+)=?(.*)$", text, re.M))
    copy = state() / f"{JOB_ID}.sh"
    copy.write_text(text)
    array = options.get("array")  # 0-N%P: N + 1 jobs of a sweep (run one after another here)
    first, last = map(int, array.split("%")[0].split("-")) if array else (-1, -1)
    tasks = int(options.get("ntasks-per-node", 1)) * int(options.get("nodes", 1))
    runner = [sys.executable, __file__, "_run", str(copy), str(first), str(last), str(tasks)]
    log = open(state() / "runner.log", "a")  # the detached runner keeps it
    subprocess.Popen(runner, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    print(f"Submitted batch job {JOB_ID}")


def _run(script: str, first: str, last: str, tasks: str) -> None:
    """Run the batch script once per array task (one after another), again after each requeue."""
    for index in range(int(first), int(last) + 1):
        array = {"SLURM_ARRAY_JOB_ID": str(JOB_ID), "SLURM_ARRAY_TASK_ID": str(index)} if index >= 0 else {}
        job = f"{JOB_ID}_{index}" if index >= 0 else str(JOB_ID)
        env = {
            **os.environ,
            **array,
            "SLURM_JOB_ID": str(JOB_ID + 1 + index) if index >= 0 else str(JOB_ID),  # array tasks: own ids
            "SLURM_NTASKS": tasks,
            "SLURM_JOB_NUM_NODES": "1",
            "SLURM_NODEID": "0",
            "SLURM_JOB_NODELIST": "localhost",
        }
        marker = state() / f"requeue-{job}"
        while True:
            subprocess.run(["bash", script], env=env, check=False)
            if not marker.exists():
                break
            marker.unlink()


def srun(args: list[str]) -> int:
    """srun --unbuffered --output OUT [--error ERR] [other options] command...: SLURM_NTASKS tasks."""
    paths = {}
    while args and args[0].startswith("--"):
        option = args.pop(0)
        if option in ("--output", "--error"):
            paths[option] = args.pop(0)
    env = os.environ
    fill = {
        "%A": env.get("SLURM_ARRAY_JOB_ID", ""),
        "%a": env.get("SLURM_ARRAY_TASK_ID", ""),
        "%j": env["SLURM_JOB_ID"],
    }
    procs = []
    for rank in range(int(env["SLURM_NTASKS"])):
        out = {}
        for option, stream in (("--output", "stdout"), ("--error", "stderr")):
            if option in paths:
                path = paths[option]
                for key, value in {**fill, "%t": str(rank)}.items():
                    path = path.replace(key, value)
                out[stream] = open(path, "a")
        task_env = {**env, "SLURM_PROCID": str(rank), "SLURM_LOCALID": str(rank)}
        procs.append(subprocess.Popen(args, env=task_env, **out))
    return max(p.wait() for p in procs)


def main(argv: list[str]) -> int:
    command, args = argv[0], argv[1:]
    if command == "sbatch":
        sbatch(args[-1])
    elif command == "_run":
        _run(*args)
    elif command == "srun":
        return srun(args)
    elif command == "scontrol" and args[0] == "requeue":
        (state() / f"requeue-{args[1]}").touch()
        with open(state() / "requeued.log", "a") as f:
            f.write(args[1] + "\n")
    elif command == "sacct":
        print("JobID|State|NodeList")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
