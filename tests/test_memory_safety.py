"""No override can take the machine down (issue 22): a configuration whose outer step, evaluation chunk or data
cannot fit in the memory available is refused in one line before it is allocated; one that fits runs.

Each case runs the real command line under an address-space cap (RLIMIT_AS, set in the child), never by
exhausting the machine: without the checks the same commands end in a raw allocation traceback under the cap (and
grow until the OOM killer ends them without it).
"""

import dataclasses
import re
import resource
import subprocess
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from conftest import ROOT, clean_env, train_cmd
from hydra import compose, initialize_config_dir

from reptile_exp.experiment import build
from reptile_exp.fits import sampled_bytes

CAP = 8 * 2**30
FAST = ["debug=smoke", "iterations=2", "eval_every=0"]
CASES = {  # id -> (overrides, exit status, the key phrase of the one error line; None: no error)
    "meta_batch": (["meta_batch=1000000"], 1, r"meta_batch=1000000: one outer step needs about [\d.]+ GiB but "),
    "omniglot_meta_batch": (
        ["experiment=omniglot_5w1s", "meta_batch=100000"],
        1,
        r"meta_batch=100000: one outer step needs about .* lower meta_batch \(about [\d,]+ fit\)",
    ),
    "n_way": (["experiment=omniglot_5w1s", "dataset.n_way=100000"], 1, r"exceeds the 4800 classes of the 'train'"),
    "eval_chunk": (
        ["experiment=omniglot_5w1s", "eval_tasks=100000", "eval_chunk=100000"],
        1,
        r"eval_chunk=100000: one evaluation chunk of 100000 tasks needs about .*; lower eval_chunk",
    ),
    "fits": (["meta_batch=2000"], 0, None),  # a large meta_batch that fits is valid
}


def _capped() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (CAP, CAP))


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory) -> dict[str, subprocess.CompletedProcess]:
    tmp = tmp_path_factory.mktemp("capped")
    env = clean_env(tmp, OMP_NUM_THREADS="1")

    def run(name: str) -> subprocess.CompletedProcess:
        cmd = train_cmd(*CASES[name][0], *FAST, f"hydra.run.dir={tmp / name}")
        return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, preexec_fn=_capped)

    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(zip(CASES, pool.map(run, CASES)))


@pytest.mark.parametrize("name", CASES)
def test_a_configuration_that_cannot_fit_is_refused_in_one_line_and_one_that_fits_runs(outcomes, name):
    proc, (_, status, phrase) = outcomes[name], CASES[name]
    output = f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert proc.returncode == status and "Traceback" not in proc.stderr, output
    errors = [line for line in proc.stderr.splitlines() if "error: " in line]
    if phrase is None:
        assert errors == [], output
    else:
        assert len(errors) == 1 and re.search(phrase, errors[0]), output


def test_the_memory_available_counts_the_address_space_cap(outcomes):
    """Under the 8 GiB cap the refusal names less than 8 GiB available (the machine itself has more)."""
    line = next(line for line in outcomes["meta_batch"].stderr.splitlines() if "error: " in line)
    available = re.search(r"but ([\d.]+) (GiB|MiB) is available on cpu", line)
    assert available and float(available[1]) * (2**30 if available[2] == "GiB" else 2**20) < CAP


def test_the_meta_batch_that_fits_is_the_available_memory_over_one_tasks_share(outcomes):
    """`about N fit` and `X available` come from one reading: N tasks of the step's per-task share fill X."""
    line = next(line for line in outcomes["omniglot_meta_batch"].stderr.splitlines() if "error: " in line)
    need, have, fit = re.search(
        r"needs about ([\d.]+) GiB but ([\d.]+) GiB is available.*about ([\d,]+) fit", line
    ).groups()
    per_task = float(need) / 100000
    assert int(fit.replace(",", "")) * per_task == pytest.approx(float(have), rel=0.06), line


@pytest.mark.parametrize(
    "overrides",
    [
        ["experiment=sine_reptile"],
        ["experiment=sine_maml"],
        ["experiment=sine_finn_fomaml"],
        ["experiment=omniglot_5w1s", "synthetic_data=true"],
        ["experiment=miniimagenet_5w1s", "synthetic_data=true", "algorithm=maml"],
        ["experiment=sine_reptile", "dtype=float64", "dataset.x_sampling=uniform"],
    ],
    ids=["sine-grid", "sine-maml-query", "sine-finn-fomaml", "omniglot", "mini-maml-query", "sine-uniform-float64"],
)
def test_the_step_estimate_counts_exactly_the_bytes_a_sampled_task_holds(overrides):
    """fits.sampled_bytes computes a task's size from the dataset's shapes (a check must not draw random numbers:
    it would take draws from the run's own); it must equal what the sampler returns."""
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
        cfg = compose("train", ["logger.mode=disabled", "device=cpu", *overrides])
    exp = build(cfg)
    query = exp.algorithm.query_shots
    task = exp.dataset.sample_train(1, cfg.k, cfg.inner_batch, torch.Generator().manual_seed(0), False, query)
    task = task.to("cpu", exp.dtype)
    tensors = [getattr(task, f.name) for f in dataclasses.fields(task)]
    real = sum(t.numel() * t.element_size() for t in tensors if t is not None)
    assert sampled_bytes(exp.dataset, cfg.k, cfg.inner_batch, query, exp.dtype) == real
