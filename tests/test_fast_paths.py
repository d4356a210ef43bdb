"""The fast paths of issue 6 change no result, the loops never wait for the device, evaluation chunks stay within
eval_memory_mb, and scripts/benchmark.py runs. Each fast path is compared with the plain path on the same tasks
from the same phi after a few outer iterations of the real training step (train.outer_step)."""

import json
import subprocess
import sys

import pytest
import torch
import torch._dynamo
from conftest import CUDA_ONLY, GPU, ROOT, script
from hydra import compose, initialize_config_dir
from torch.profiler import ProfilerActivity, profile
from torch.utils._python_dispatch import TorchDispatchMode

import reptile_exp.meta.learner as learner_module
from reptile_exp.errors import ConfigError
from reptile_exp.evaluate import task_bytes
from reptile_exp.experiment import build
from reptile_exp.hardware import cpu_name, native_bf16
from reptile_exp.measure import peak_memory_mb
from reptile_exp.meta.learner import Learner
from reptile_exp.models import task_batchable
from reptile_exp.report import eval_chunk, evaluate_split
from reptile_exp.train import outer_step

# Omniglot 5-way preset on synthetic images, fewer inner steps and tasks so a test takes seconds. The phi
# comparisons use inner SGD: inner Adam's first steps move every weight by about +-lr whatever the gradient's size,
# so rounding that flips the sign of a tiny gradient moves a weight as far as training does; SGD's steps scale with
# the gradient, and a fast path's rounding shows as what it is. (fused_inner, which does touch the inner optimizer,
# is compared in float64 with inner Adam as well.)
OMNIGLOT = ["experiment=omniglot_5w1s", "synthetic_data=true", "meta_batch=2", "k=2", "k_eval=3"]
SINE = ["experiment=sine_reptile", "meta_batch=4"]


def _experiment(*overrides: str):
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
        cfg = compose("train", overrides=["logger.mode=disabled", "progress=false", *overrides])
    return build(cfg)


def _phi_after(overrides: list[str], steps: int = 2) -> tuple[dict, dict]:
    """phi before and after `steps` outer iterations."""
    exp = _experiment(*overrides)
    phi0 = {n: p.detach().clone() for n, p in exp.phi.items()}
    for _ in range(steps):
        outer_step(exp)
    return phi0, {n: p.detach().clone() for n, p in exp.phi.items()}


def _agreement(base: list[str], fast: list[str]) -> tuple[float, float]:
    """How the outer steps' movement of phi with the fast path, u_fast = phi_fast - phi_0, agrees with the plain
    one, u = phi_plain - phi_0: max |phi_fast - phi_plain| / max |u| over all parameters, and cos(u_fast, u)."""
    base = [*base, "inner_optimizer=sgd"]
    phi0, plain = _phi_after(base)
    _, fast_phi = _phi_after(base + fast)
    moved = max((plain[n] - phi0[n]).abs().max().item() for n in plain)
    assert moved > 0
    difference = max((fast_phi[n] - plain[n]).abs().max().item() for n in plain) / moved
    u, u_fast = (torch.cat([(p[n] - phi0[n]).flatten() for n in plain]) for p in (plain, fast_phi))
    return difference, torch.nn.functional.cosine_similarity(u, u_fast, dim=0).item()


def _assert_agrees(base: list[str], fast: list[str]) -> None:
    """Float32 paths agree to float32 rounding. Reduced precision (tf32: 10 bits of mantissa, bf16: 8) changes the
    result at its own rounding: on these random images the movement still points the same way (cosine > 0.95;
    bf16 on CPU measured 0.98, with max differences of about 25% of the movement, so bf16 must also differ by more
    than float32's rounding: a bf16 that silently ran in float32 fails)."""
    difference, cosine = _agreement(base, fast)
    if any(f.startswith("precision=") for f in fast):
        assert cosine > 0.95
    else:
        assert difference < 1e-4
    if "precision=bf16" in fast:  # and bf16 was in effect: float32 rounding differs by < 1e-4 of the movement
        assert difference > 1e-3


@pytest.mark.parametrize(
    "base,fast",
    [
        (OMNIGLOT, ["precision=bf16"]),
        (SINE, ["compile=inductor"]),  # compiling the conv net takes minutes on 2 shared cores; the CUDA test does it
        ([*OMNIGLOT, "grouped_tasks=false"], ["grouped_tasks=true"]),
        ([*SINE, "grouped_tasks=false"], ["grouped_tasks=true"]),
        (OMNIGLOT, ["task_conv=bmm"]),
        (OMNIGLOT, ["task_conv=bmm", "precision=bf16"]),
    ],
    ids=["bf16", "inductor", "grouped-omniglot", "grouped-sine", "bmm", "bmm-bf16"],
)
def test_fast_path_gives_the_plain_phi_on_cpu(base, fast):
    _assert_agrees([*base, "device=cpu"], fast)


@pytest.mark.parametrize("inner", ["sgd", "adam"])
def test_in_place_inner_updates_give_the_functional_phi_and_state(inner):
    """fused_inner (on by default) steps the inner loop in place with torch's multi-tensor kernels (fused Adam,
    foreach SGD); fused_inner=false runs the functional updates. Same phi and carried Adam state after a few
    outer steps, in float64 to its rounding: within 1e-8 where phi moves by > 1e-3. The conv biases feed BatchNorm,
    so their gradient is zero up to rounding, and inner Adam's normalisation (g / (sqrt(v) + 1e-8)) turns that
    rounding into steps of its own: they differ by up to 1.2e-8 (measured on the synthetic images of 2026-12-06)
    and are compared within 1e-7, still far below the 1e-3 phi moves."""
    base = [*OMNIGLOT, "device=cpu", "dtype=float64", f"inner_optimizer={inner}"]
    fused, functional = _experiment(*base), _experiment(*base, "fused_inner=false")
    assert fused.learner.fused and not functional.learner.fused
    phi0 = {n: p.detach().clone() for n, p in fused.phi.items()}
    for _ in range(2):
        outer_step(fused), outer_step(functional)
    assert max((fused.phi[n] - phi0[n]).abs().max().item() for n in phi0) > 1e-3
    layers = list(fused.learner.model)
    noise = {f"{i}.bias" for i, (a, b) in enumerate(zip(layers, layers[1:])) if "Norm" in type(b).__name__}
    assert noise and noise < set(phi0)
    for n in phi0:
        torch.testing.assert_close(fused.phi[n], functional.phi[n], rtol=0, atol=1e-7 if n in noise else 1e-8)
    flat = lambda state: [v for k, d in sorted(state.items()) if isinstance(d, dict) for v in d.values()]  # noqa: E731
    assert len(flat(fused.inner_state)) == (2 * len(phi0) if inner == "adam" else 0)
    for a, b in zip(flat(fused.inner_state), flat(functional.inner_state)):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)  # the biases: moments of rounding noise


# Each fast path switches on when asked (issue 13): a fast path that fell back to the plain path would give the
# plain phi and pass the tests above, so these watch the switch itself during one real outer step.

ATEN = torch.ops.aten
MATMULS = {ATEN.mm, ATEN.addmm, ATEN.bmm, ATEN.baddbmm, ATEN.convolution}


class _MatmulDtypes(TorchDispatchMode):
    """The dtypes of the outputs of the matmuls and convolutions that run (forward and backward)."""

    def __init__(self):
        super().__init__()
        self.dtypes = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func.overloadpacket in MATMULS:
            self.dtypes.add(out.dtype)
        return out


def _calls(monkeypatch, owner, name: str) -> list:
    """Wraps owner.name (a class's function or an object's method) so that each call appends its arguments."""
    calls, original = [], getattr(owner, name)

    def spy(*args, **kwargs):
        calls.append(args)
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, spy)
    return calls


@pytest.mark.parametrize(
    "preset,grouped",
    [(SINE, "true"), (SINE, "false"), (OMNIGLOT, "true"), ([*OMNIGLOT, "task_conv=bmm"], "true")],
    ids=["grouped-sine", "vmap-sine", "grouped-omniglot", "bmm-omniglot"],  # the conv net under vmap: nothing new
)
def test_bf16_runs_the_inner_steps_matmuls_in_bfloat16_under_autocast(preset, grouped):
    """precision=bf16: the inner steps' linear layers and convolutions compute in bfloat16 (autocast), in the
    grouped path (task_conv=bmm: its batched matmuls, forward and backward) and under vmap; precision=highest: in
    float32. (On a CPU without bfloat16 instructions oneDNN emulates them: slower, same dtypes.)"""
    dtypes = _matmul_dtypes([*preset, "device=cpu", f"grouped_tasks={grouped}"])
    assert dtypes == {"highest": {torch.float32}, "bf16": {torch.bfloat16}}


def _matmul_dtypes(overrides: list[str]) -> dict[str, set]:
    """precision -> the dtypes the matmuls and convolutions of one outer step computed in."""
    dtypes = {}
    for precision in ("highest", "bf16"):
        exp = _experiment(*overrides, f"precision={precision}")
        with _MatmulDtypes() as seen:
            outer_step(exp)
        dtypes[precision] = seen.dtypes
    return dtypes


@pytest.mark.parametrize("compile", ["none", "inductor"])
def test_compile_inductor_runs_every_inner_step_as_the_compiled_graph(compile):
    """compile=inductor: after the first outer step (which compiles the inner step's gradient) each of the k inner
    steps runs the compiled region, as the profiler records it; compile=none compiles and runs nothing compiled.
    (The sine model: compiling it took 54 s on 2 shared cores with an empty inductor cache, 4 s from the cache;
    the conv net takes minutes.)"""
    counters = torch._dynamo.utils.counters
    counters.clear()
    exp = _experiment(*SINE, "device=cpu", f"compile={compile}")
    outer_step(exp)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        outer_step(exp)
    regions = [e.name for e in prof.events() if e.name.startswith("Torch-Compiled Region")]
    if compile == "none":
        assert not counters["frames"] and not counters["stats"] and regions == []
    else:  # (a process that compiled this step before, e.g. for the inductor test above, reuses that graph)
        k = exp.cfg.k
        assert len(regions) == k, regions


@pytest.mark.parametrize(
    "overrides,grouped_steps,vmapped_calls",
    [
        ([*SINE, "grouped_tasks=true"], 5, 0),
        ([*SINE, "grouped_tasks=false"], 0, 5),
        ([*OMNIGLOT, "grouped_tasks=true"], 2, 0),
        ([*OMNIGLOT, "grouped_tasks=false"], 0, 2),
        (["experiment=sine_maml", "meta_batch=4", "grouped_tasks=true"], 0, 5 + 1),  # + the query loss
        (["experiment=sine_maml", "meta_batch=4", "algorithm.first_order=true"], 5, 1),
    ],
    ids=["grouped-sine", "vmap-sine", "grouped-omniglot", "vmap-omniglot", "maml-second-order", "maml-first-order"],
)
def test_grouped_tasks_takes_the_grouped_path_except_where_maml_differentiates_twice(
    monkeypatch, overrides, grouped_steps, vmapped_calls
):
    """Calls of models.forward_tasks (all tasks as one model) and of the one-task Learner.forward (run under vmap)
    in one outer step of k inner steps: grouped_tasks=true runs every inner step grouped, grouped_tasks=false
    under vmap, and second-order MAML, which differentiates through the inner loop, under vmap whatever the knob
    (first-order MAML does not: grouped inner steps, vmap for the query loss only)."""
    grouped = _calls(monkeypatch, learner_module, "forward_tasks")
    vmapped = _calls(monkeypatch, Learner, "forward")
    exp = _experiment(*overrides, "device=cpu")
    outer_step(exp)
    assert (len(grouped), len(vmapped)) == (grouped_steps, vmapped_calls)


def test_a_model_forward_tasks_does_not_know_falls_back_to_vmap(monkeypatch):
    """A layer outside models.forward_tasks' list (here nn.Identity after the sine MLP): grouped_tasks=true, as
    experiment.build passes it, runs the inner steps under vmap."""
    exp = _experiment(*SINE, "device=cpu")
    model = torch.nn.Sequential(*exp.learner.model, torch.nn.Identity())  # the same parameters, the same names
    assert not task_batchable(model) and exp.cfg.grouped_tasks
    exp.learner = Learner(model, exp.learner.inner_optimizer, "mse", exp.cfg.loss_reduction.value, grouped=True)
    grouped = _calls(monkeypatch, learner_module, "forward_tasks")
    vmapped = _calls(monkeypatch, Learner, "forward")
    outer_step(exp)
    assert (len(grouped), len(vmapped)) == (0, exp.cfg.k)


@pytest.mark.parametrize(
    "overrides,in_place",
    [
        ([*SINE, "fused_inner=true"], True),
        ([*SINE, "fused_inner=true", "inner_optimizer=adam"], True),
        ([*SINE, "fused_inner=false"], False),
        (["experiment=sine_maml", "meta_batch=4", "fused_inner=true"], False),
    ],
    ids=["fused-sgd", "fused-adam", "functional", "maml-second-order"],
)
def test_fused_inner_steps_the_inner_optimizer_in_place(monkeypatch, overrides, in_place):
    """fused_inner=true: each of the k inner steps is the optimizer's in-place step_, on the same weight tensors
    every time; fused_inner=false, or second-order MAML (which differentiates through the steps), the functional
    step."""
    exp = _experiment(*overrides, "device=cpu")
    in_place_steps = _calls(monkeypatch, exp.learner.inner_optimizer, "step_")
    functional_steps = _calls(monkeypatch, exp.learner.inner_optimizer, "step")
    outer_step(exp)
    k = exp.cfg.k
    assert (len(in_place_steps), len(functional_steps)) == ((k, 0) if in_place else (0, k))
    weights = {tuple(w.data_ptr() for w in params.values()) for params, _, _ in in_place_steps}
    assert len(weights) == (1 if in_place else 0)


@pytest.mark.cuda
@pytest.mark.parametrize(
    "fast",
    [
        ["compile=inductor"],
        pytest.param(["compile=cudagraphs"], marks=CUDA_ONLY),
        pytest.param(["precision=tf32"], marks=CUDA_ONLY),
        ["precision=bf16"],
        pytest.param(["compile=cudagraphs", "precision=tf32"], marks=CUDA_ONLY),
        ["grouped_tasks=false"],
    ],
    ids=["inductor", "cudagraphs", "tf32", "bf16", "cudagraphs+tf32", "vmap"],
)
def test_fast_path_gives_the_plain_phi_on_cuda(fast):
    _assert_agrees([*OMNIGLOT, f"device={GPU}"], fast)


@pytest.mark.cuda
def test_bf16_runs_the_matmuls_in_bfloat16_on_cuda():
    """precision=bf16 on the GPU: every matmul and convolution of an outer step computes in bfloat16 (autocast's
    device type follows the data); precision=highest: float32."""
    assert _matmul_dtypes([*OMNIGLOT, f"device={GPU}"]) == {"highest": {torch.float32}, "bf16": {torch.bfloat16}}


@pytest.mark.cuda
@CUDA_ONLY
@pytest.mark.parametrize("precision", ["highest", "tf32", "bf16"])
def test_tf32_switches_the_tensor_cores_on_only_when_asked(precision):
    _experiment(*OMNIGLOT, "device=cuda", f"precision={precision}")
    expected = precision == "tf32"
    assert torch.backends.cuda.matmul.allow_tf32 is expected and torch.backends.cudnn.allow_tf32 is expected


class _HostReads(TorchDispatchMode):
    """Counts the operations that make the host wait for a tensor's value (.item(), bool(t), copies to the CPU)."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        to_host = func is torch.ops.aten._to_copy.default and kwargs.get("device") == torch.device("cpu")
        if func is torch.ops.aten._local_scalar_dense.default or (to_host and args[0].device.type != "cpu"):
            self.count += 1
        return out


@pytest.mark.parametrize("preset", [OMNIGLOT, SINE], ids=["omniglot", "sine"])
def test_training_steps_never_read_a_value_back_from_the_device(preset):
    exp = _experiment(*preset, "device=cpu")
    outer_step(exp)
    with _HostReads() as reads:
        for _ in range(2):
            outer_step(exp)
    assert reads.count == 0


def test_evaluation_reads_values_back_once_per_evaluation_not_per_step_or_chunk():
    exp = _experiment(*OMNIGLOT, "device=cpu", "eval_chunk=2")
    counts = []
    for num_tasks in (2, 4):  # one chunk, two chunks
        with _HostReads() as reads:
            evaluate_split(exp, "test", num_tasks, seed=0)
        counts.append(reads.count)
    assert counts[0] == counts[1] <= 4  # the mean and the confidence interval at the end


@pytest.mark.cuda
@CUDA_ONLY
def test_training_and_evaluation_chunks_never_synchronise_on_cuda():
    exp = _experiment(*OMNIGLOT, "device=cuda")
    outer_step(exp)
    tasks = exp.dataset.sample_eval(4, 3, 5, torch.Generator().manual_seed(0))
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(2):
            outer_step(exp)
        exp.learner.adapt({n: p.detach() for n, p in exp.phi.items()}, tasks, exp.inner_state)
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize("budget_mb", [80, 256])
@pytest.mark.parametrize("task_conv", ["grouped", "bmm"])
def test_an_evaluation_chunk_stays_within_eval_memory_mb(budget_mb, task_conv):
    """Within the budget, and not far below it: measured 42% of it (the estimate counts activations three times, about
    3.7 MiB per task here), so a chunk that ignored the budget (always 2 tasks: 7 MiB) fails the lower bound.
    task_conv=bmm also keeps each convolution's im2col columns for its backward pass: counted twice more."""
    exp = _experiment(*OMNIGLOT, "device=cpu", f"eval_memory_mb={budget_mb}", f"task_conv={task_conv}")
    chunk = eval_chunk(exp, 1000)
    assert chunk > 1
    peak = peak_memory_mb(lambda: evaluate_split(exp, "test", chunk, seed=0), exp.device)
    assert budget_mb / 4 < peak <= budget_mb


def test_the_evaluation_estimate_grows_with_what_task_conv_bmm_keeps():
    """task_conv=bmm keeps each convolution's im2col columns for its backward pass: evaluating 16 tasks peaked at
    68.3 against the grouped path's 59.4 MiB (1.15x); its per-task estimate (evaluate.task_bytes) grows at least as
    much (1.31x), so the same eval_memory_mb gives it a smaller chunk. Without the columns both estimates are equal."""
    peak, estimate = {}, {}
    for conv in ("grouped", "bmm"):
        exp = _experiment(*OMNIGLOT, "device=cpu", f"task_conv={conv}")
        data = exp.dataset
        peak[conv] = peak_memory_mb(lambda exp=exp: evaluate_split(exp, "test", 16, seed=0), exp.device)
        estimate[conv] = task_bytes(exp.learner, exp.phi, data.input_shape, data.n_way * (data.k_shot + 1))
    assert estimate["bmm"] / estimate["grouped"] >= peak["bmm"] / peak["grouped"] > 1.05, (estimate, peak)


@pytest.mark.cuda
@pytest.mark.parametrize("budget_mb", [256, 1024])
def test_an_evaluation_chunk_stays_within_eval_memory_mb_on_cuda(budget_mb):
    exp = _experiment(*OMNIGLOT, f"device={GPU}", f"eval_memory_mb={budget_mb}")
    chunk = eval_chunk(exp, 100_000)
    assert chunk > 1
    assert peak_memory_mb(lambda: evaluate_split(exp, "test", chunk, seed=0), exp.device) <= budget_mb


@pytest.mark.parametrize("override", ["compile=cudagraphs", "precision=tf32"])
def test_cuda_only_fast_paths_fail_on_cpu_naming_the_knob(override):
    with pytest.raises(ConfigError, match=f"{override} is invalid on device=cpu"):
        _experiment(*SINE, "device=cpu", override)


@pytest.mark.parametrize("precision", ["highest", "bf16"])
def test_bf16_warns_only_on_a_cpu_without_bfloat16_instructions(precision, caplog):
    """Emulated bfloat16 is many times slower than float32 (docs/benchmarks.md); the run says so but goes on."""
    _experiment(*SINE, "device=cpu", f"precision={precision}")
    emulated = precision == "bf16" and not native_bf16(torch.device("cpu"))[0]
    assert ("precision=bf16 on this CPU" in caplog.text) == emulated


def test_benchmark_prints_a_table_then_one_json_line():
    args = ["--device", "cpu", "--quick", "--presets", "sine", "--variants", "plain", "--repeats", "1"]
    args += ["--eval-tasks", "8", "--serial-eval-tasks", "2", "--min-seconds", "0.05", "--profile", "2"]
    args += ["--op-profile", "4", "--train-op-profile", "2"]
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "benchmark.py"), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert any("serial reference" in line for line in lines[:-1])
    report = json.loads(lines[-1])
    sine = report["presets"]["sine"]
    assert set(sine["contenders"]) == {"serial", "plain"}
    plain = sine["contenders"]["plain"]
    assert plain["train_it_s"] > 0 and plain["eval_s_per_1000"] > 0 and plain["train_x_serial"] > 0
    assert sine["train_step_gflop"] > 0 and report["matmul_gflop_s"]["float32"] > 0
    assert set(sine["profile_s"]) == {"sampling", "inner loop", "outer step"}
    # --quick lowers the defaults only: the flags given are taken as given
    assert report["settings"] == {"repeats": 1, "eval_repeats": 1, "warmup": 1, "profile": 2, "min_seconds": 0.05}
    for ops in ("eval_ops_s", "train_ops_s"):  # operators by self time, named as torch.profiler names them
        assert "other" in sine[ops] and any(k.startswith("aten::") for k in sine[ops]) and sum(sine[ops].values()) > 0
    assert "2 training steps (plain), self time by operator: aten::" in proc.stdout
    # the machine is named beside its figures: the CPU type, and whether its bfloat16 is native (hardware.py)
    native, why = native_bf16(torch.device("cpu"))
    assert report["device"].endswith(cpu_name()) and report["native_bf16"] == [native, why]
    assert f"bfloat16 {'native' if native else 'emulated'} ({why})" in lines[:-1]


def test_the_profiles_run_the_variant_asked(monkeypatch):
    """--profile-variant: the time split and the operator profile build that variant's config, not plain's."""
    bench, seen = script("benchmark"), []
    monkeypatch.setattr(bench, "profile_split", lambda exp, steps: seen.append(exp.cfg) or {"inner loop": 1.0})
    monkeypatch.setattr(bench, "evaluation_ops", lambda exp, tasks: seen.append(exp.cfg) or {"other": 1.0})
    monkeypatch.setattr(bench, "training_ops", lambda exp, steps: seen.append(exp.cfg) or {"other": 1.0})
    args = ["--device", "cpu", "--quick", "--presets", "sine", "--variants", "plain", "--repeats", "1"]
    args += ["--eval-tasks", "2", "--serial-eval-tasks", "1", "--min-seconds", "0.01", "--profile", "1"]
    report = bench.main([*args, "--op-profile", "2", "--train-op-profile", "1", "--profile-variant", "vmap+unfused"])
    assert [(c.grouped_tasks, c.fused_inner) for c in seen] == [(False, False)] * 3
    assert report["presets"]["sine"]["profiled_variant"] == "vmap+unfused"


REFAULTS = """
import resource, sys, torch
from reptile_exp.host_memory import keep_host_memory
if sys.argv[1] == "keep":
    assert keep_host_memory()
torch.set_num_threads(1)
w, x = torch.randn(32, 3, 3, 3, requires_grad=True), torch.randn(50, 3, 84, 84)
faults = []
for _ in range(8):  # a Mini-ImageNet-sized layer: 45 MiB outputs, above glibc's largest mmap threshold (32 MiB)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    y = torch.nn.functional.conv2d(x, w, padding=1)
    ((y - y.mean()) ** 2).sum().backward()
    del y
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(sum(faults[-5:]))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc (Linux) only")
def test_keep_host_memory_reuses_freed_pages_instead_of_faulting_in_new_ones():
    """Without it every step faults its large blocks in afresh (4 KiB pages); with it, after a few steps, rarely.

    Kept pages still fault now and then (a block lands past the heap's high-water mark when the heap fragments),
    so the test compares the last five steps' totals: measured 0-44k faults kept against 551k with glibc's default.
    """
    refaults = {
        arg: int(subprocess.run([sys.executable, "-c", REFAULTS, arg], capture_output=True, text=True).stdout)
        for arg in ("keep", "glibc")
    }
    assert refaults["glibc"] > 100_000 and refaults["keep"] * 5 < refaults["glibc"], refaults
