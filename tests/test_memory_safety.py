"""No override can take the machine down (issue 22): a configuration whose outer step, evaluation chunk or data
cannot fit in the memory available is refused in one line before it is allocated; one that fits runs.

Each case runs the real command line under an address-space cap (RLIMIT_AS, set in the child), never by
exhausting the machine: without the checks the same commands end in a raw allocation traceback under the cap (and
grow until the OOM killer ends them without it). The memory available is read from fake cgroup trees in tmp_path
and, on CUDA, from the driver's answers (stood in: no driver here).
"""

import dataclasses
import re
import resource
import subprocess
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from conftest import ROOT, clean_env, train_cmd
from fake_cuda import CUDA
from hydra import compose, initialize_config_dir

from reptile_exp.experiment import build
from reptile_exp.fits import sampled_bytes
from reptile_exp.measure import peak_memory_mb
from reptile_exp.memory import available_bytes, cgroup_headroom

CAP = 8 * 2**30
MIB = 2**20
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
    # the sine task's own draws: 2 x 3e7 fresh test points (was an allocator traceback in the final evaluation),
    # and 10^4 inner steps of keys over 10^5 points with replacement (was one at the first step)
    "sine_uniform_shots": (
        ["dataset.x_sampling=uniform", "dataset.k_shot=30000000"],
        1,
        r"k_eval=3, eval_batch=10: one test task needs about [\d.]+ GiB but ",
    ),
    "sine_replacement_keys": (
        ["dataset.x_sampling=uniform", "dataset.k_shot=100000", "k=10000", "replacement=true"],
        1,
        r"one training task needs about [\d.]+ GiB but ",
    ),
}


def _capped() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (CAP, CAP))


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory) -> dict[str, subprocess.CompletedProcess]:
    tmp = tmp_path_factory.mktemp("capped")
    env = clean_env(tmp)

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


# id -> (/proc/self/cgroup, {file under the cgroup mount: its text}, the headroom under each limit, innermost first)
CGROUPS = {
    "slurm-v2": (  # the job's limit is on a cgroup above the step's, none at the root
        "0::/system.slice/job_7/step_0\n",
        {
            "system.slice/job_7/step_0/memory.max": "max",
            "system.slice/job_7/step_0/memory.current": f"{60 * MIB}",
            "system.slice/job_7/memory.max": f"{256 * MIB}",
            "system.slice/job_7/memory.current": f"{64 * MIB}",
            "system.slice/memory.max": "max",
            "system.slice/memory.current": f"{900 * MIB}",
        },
        [192 * MIB],
    ),
    "slurm-v1": (  # the limit on the job's cgroup; the root's "unlimited" is PAGE_COUNTER_MAX pages
        "9:name=systemd:/\n4:memory:/slurm/uid_1/job_7\n2:cpu,cpuacct:/\n0::/\n",
        {
            "memory/slurm/uid_1/job_7/memory.limit_in_bytes": f"{128 * MIB}",
            "memory/slurm/uid_1/job_7/memory.usage_in_bytes": f"{32 * MIB}",
            "memory/memory.limit_in_bytes": "9223372036854771712",
            "memory/memory.usage_in_bytes": f"{1024 * MIB}",
        },
        [96 * MIB, 9223372036854771712 - 1024 * MIB],
    ),
    "container-v2": ("0::/\n", {"memory.max": f"{512 * MIB}", "memory.current": f"{128 * MIB}"}, [384 * MIB]),
    "container-v1": (  # no cgroup namespace: the path is the host's, the mount's root is the container's cgroup
        "4:memory:/docker/abc\n",
        {"memory/memory.limit_in_bytes": f"{200 * MIB}", "memory/memory.usage_in_bytes": f"{50 * MIB}"},
        [150 * MIB],
    ),
    "unlimited-v2": ("0::/user.slice\n", {"user.slice/memory.max": "max", "user.slice/memory.current": "1"}, []),
}


@pytest.mark.parametrize("name", CGROUPS)
def test_the_memory_available_counts_the_limits_of_the_cgroups_the_process_is_in(tmp_path, name):
    proc_cgroup, files, headroom = CGROUPS[name]
    (tmp_path / "cgroup").write_text(proc_cgroup)
    for path, text in files.items():
        (tmp_path / "mount" / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "mount" / path).write_text(text + "\n")
    assert cgroup_headroom(tmp_path / "cgroup", tmp_path / "mount") == headroom
    if headroom:  # far below this machine's MemAvailable: the least of the limits
        assert available_bytes(torch.device("cpu"), tmp_path / "cgroup", tmp_path / "mount") == min(headroom)


def test_the_memory_available_on_cuda_is_the_free_memory_and_what_the_allocator_holds_unused(monkeypatch):
    """The driver's free memory (stood in: no driver here) plus PyTorch's cached blocks, reserved but not
    allocated: a second run's allocations can reuse those."""
    asked = []
    driver = {"mem_get_info": (10 * 2**30, 80 * 2**30), "memory_reserved": 3 * 2**30, "memory_allocated": 2**30}
    for query, answer in driver.items():
        monkeypatch.setattr(torch.cuda, query, lambda device, answer=answer: asked.append(device) or answer)
    assert available_bytes(CUDA) == 12 * 2**30 and asked == [CUDA] * 3


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


DRAWS = {  # a few thousand points or keys per task: the draw's own memory outweighs the profiler's
    "sine-grid": ["dataset.n_points=20000", "inner_batch=100", "k=50"],
    "sine-uniform": ["dataset.x_sampling=uniform", "dataset.k_shot=20000", "inner_batch=100", "k=50"],
    "sine-maml-query": ["dataset.x_sampling=uniform", "dataset.k_shot=20000", "algorithm=maml", "inner_batch=100"],
    "sine-replacement": ["dataset.n_points=20000", "inner_batch=100", "k=50", "replacement=true"],
    "omniglot-maml-replacement": ["experiment=omniglot_5w1s", "debug=smoke", "algorithm=maml", "replacement=true"],
}


@pytest.mark.parametrize("overrides", DRAWS.values(), ids=DRAWS)
def test_a_task_draw_peaks_within_its_estimate(overrides):
    """What drawing one training task (sampled_bytes and the dataset's draw_bytes) and one test task (draw_bytes)
    passes through, its random keys and temporaries included, bounds the peak the profiler measures."""
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
        cfg = compose("train", ["logger.mode=disabled", "device=cpu", *overrides])
    exp = build(cfg)
    data, query, g = exp.dataset, exp.algorithm.query_shots, torch.Generator().manual_seed(0)
    train = peak_memory_mb(lambda: data.sample_train(1, cfg.k, cfg.inner_batch, g, cfg.replacement, query), exp.device)
    estimate = sampled_bytes(data, cfg.k, cfg.inner_batch, query, exp.dtype)
    assert train * 2**20 <= estimate + data.draw_bytes(cfg.k, cfg.inner_batch, query, cfg.replacement)
    test = peak_memory_mb(lambda: data.sample_eval(1, cfg.k_eval, cfg.eval_batch, g), exp.device)
    assert test * 2**20 <= data.draw_bytes(cfg.k_eval, cfg.eval_batch, evaluation=True)
