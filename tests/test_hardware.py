"""Native bfloat16 is read from what the CPU says it has, and `auto` picks the fast paths from it (issue 21)."""

import logging

import pytest
import torch
from conftest import ROOT, run_train
from fake_cuda import CUDA
from hydra import compose, initialize_config_dir

from reptile_exp import hardware
from reptile_exp.experiment import build
from reptile_exp.hardware import AUTO_COMPILE_ITERATIONS, cpu_flags, cpu_name, native_bf16, resolve
from reptile_exp.models import MLP, MiniImageNetConvNet, OmniglotConvNet

CPU = torch.device("cpu")


def _cpuinfo(tmp_path, flags: str | None):
    path = tmp_path / "cpuinfo"
    path.write_text("processor\t: 0\nmodel name\t: a CPU\n" + (f"flags\t\t: fpu sse2 avx2 {flags}\n" if flags else ""))
    return path


@pytest.mark.parametrize(
    "flags,native",
    [("avx512f avx512_bf16", True), ("avx512f amx_tile amx_bf16", True), ("avx512f avx512_vnni", False)],
    ids=["avx512-bf16", "amx-bf16", "avx512-without-bf16"],
)
def test_native_bf16_follows_the_cpus_flags(tmp_path, flags, native):
    """The 2-core Xeon VM of 2026-12-06 lists avx512f without avx512_bf16, and oneDNN's own check said yes there,
    where bfloat16 matmuls ran 5x to 6x slower than float32 (docs/benchmarks.md): the flags decide."""
    found, why = native_bf16(CPU, _cpuinfo(tmp_path, flags))
    assert found is native
    assert ("bf16" in why) if native else ("without AVX512-BF16 or AMX-BF16" in why)


def test_without_cpuinfo_flags_onednns_check_decides(tmp_path):
    assert cpu_flags(_cpuinfo(tmp_path, None)) is None and cpu_flags(tmp_path / "nowhere") is None
    found, why = native_bf16(CPU, _cpuinfo(tmp_path, None))
    assert found is torch.ops.mkldnn._is_mkldnn_bf16_supported() and "oneDNN" in why


@pytest.mark.parametrize(
    "capability,native",
    [((6, 1), False), ((7, 5), False), ((8, 0), True), ((8, 6), True), ((9, 0), True)],
    ids=["6.1", "7.5", "8.0", "8.6", "9.0"],
)
def test_a_gpu_has_native_bf16_from_compute_capability_8(monkeypatch, capability, native):
    """Ampere (8.0) and later; a T4 (7.5) or a P100 (6.x) emulates it. The capability is the driver's answer (no
    driver here: a stand-in gives it), for the device asked about."""
    asked = []
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device: asked.append(device) or capability)
    assert native_bf16(CUDA) == (native, f"compute capability {capability[0]}.{capability[1]}") and asked == [CUDA]
    _, precision, chosen = resolve(CUDA, "none", "auto", model=OmniglotConvNet())
    assert precision == ("bf16" if native else "highest") and f"compute capability {capability[0]}." in chosen


def test_the_cpu_is_named_with_its_family_and_model(tmp_path):
    """Two Xeon VM types here share the name "Intel(R) Xeon(R) Processor"; only one has native bfloat16."""
    path = tmp_path / "cpuinfo"
    path.write_text("processor\t: 0\ncpu family\t: 6\nmodel\t\t: 207\nmodel name\t: Intel(R) Xeon(R) Processor\n")
    assert cpu_name(path) == "Intel(R) Xeon(R) Processor (family 6, model 207)"
    assert cpu_name(_cpuinfo(tmp_path, "avx2")) == "a CPU"  # no family and model listed
    assert cpu_name(tmp_path / "nowhere")  # not Linux: what the platform says


def test_auto_resolves_on_this_machine_and_explicit_values_pass_through():
    native = native_bf16(CPU)[0]
    compile, precision, chosen = resolve(CPU, "auto", "auto")
    assert (compile, precision) == ("none", "bf16" if native else "highest")
    assert chosen.startswith(f"precision=auto -> {precision} (") and "compile=auto -> none" in chosen
    assert resolve(CPU, "inductor", "bf16") == ("inductor", "bf16", None)
    assert resolve(CPU, "none", "highest", model=MLP(), iterations=10**6) == ("none", "highest", None)
    _, precision, chosen = resolve(CPU, "none", "auto", torch.float64)  # bf16 would do nothing to a float64 run
    assert precision == "highest" and "bfloat16 applies to float32 runs only" in chosen


LONG = AUTO_COMPILE_ITERATIONS


@pytest.mark.parametrize(
    "native,dtype,model,iterations,expected",
    [
        (True, torch.float32, OmniglotConvNet(), LONG, ("inductor", "bf16")),  # measured faster in both
        (True, torch.float32, OmniglotConvNet(), LONG - 1, ("none", "bf16")),  # too short to win the compile back
        (False, torch.float32, OmniglotConvNet(), LONG, ("none", "highest")),  # float32: evaluation slower compiled
        (True, torch.float32, MiniImageNetConvNet(), LONG, ("none", "bf16")),  # inductor slower for it
        (True, torch.float32, MLP(), LONG, ("inductor", "highest")),  # bfloat16 slower for the sine MLP
        (False, torch.float32, MLP(), 0, ("none", "highest")),  # evaluate_only and short runs stay eager
        (True, torch.float64, OmniglotConvNet(), LONG, ("none", "highest")),  # bfloat16 does nothing to float64
        (True, torch.float32, torch.nn.Linear(2, 2), LONG, ("none", "bf16")),  # a model nobody measured
    ],
    ids=["omniglot", "short", "omniglot-no-bf16", "miniimagenet", "sine", "sine-short", "float64", "unmeasured"],
)
def test_auto_picks_what_was_measured_faster_on_a_cpu(monkeypatch, native, dtype, model, iterations, expected):
    """The rule of hardware.resolve on both kinds of CPU: this machine has one, so the flags' verdict is stood in
    for (native_bf16 itself is tested on cpuinfo files above)."""
    monkeypatch.setattr(hardware, "native_bf16", lambda device: (native, "stand-in"))
    compile, precision, chosen = resolve(CPU, "auto", "auto", dtype, model, iterations)
    assert (compile, precision) == expected
    assert f"precision=auto -> {precision} (" in chosen and f"compile=auto -> {compile} (" in chosen
    assert resolve(torch.device("cuda"), "auto", "highest", dtype, model, 0)[0] == "cudagraphs"


@pytest.mark.parametrize(
    "overrides,convolutional", [([], False), (["experiment=omniglot_5w1s", "synthetic_data=true"], True)]
)
def test_a_run_with_auto_uses_and_logs_what_auto_chose(caplog, overrides, convolutional):
    """The sine default (30,000 iterations of the MLP) and Omniglot (100,000) built with both on auto: the learner
    runs what the logged line says."""
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
        cfg = compose("train", [*overrides, "logger.mode=disabled", "device=cpu", "precision=auto", "compile=auto"])
    with caplog.at_level(logging.INFO, logger="reptile_exp"):
        exp = build(cfg)
    native = native_bf16(CPU)[0]
    bf16 = native and convolutional  # sine's MLP stays float32
    assert exp.learner.autocast is bf16 and "precision=auto -> " + ("bf16" if bf16 else "highest") in caplog.text
    compiled = bf16 or not convolutional  # Omniglot compiled in bfloat16 only, sine in float32
    assert (exp.learner._fast_grad is not None) is compiled
    assert "compile=auto -> " + ("inductor" if compiled else "none") in caplog.text


@pytest.mark.parametrize("cxx", ["no-such-c++", "."], ids=["missing", "not-a-program"])
def test_without_a_cpp_compiler_inductor_is_refused_in_one_line(tmp_path, cxx):
    """A machine without g++ (here: CXX naming no compiler, which inductor reads): compile=inductor on a CPU would
    fail at the first step with inductor's traceback, so it is refused before any work."""
    fast = ["logger.mode=disabled", "progress=false", "device=cpu", "iterations=2", "eval_every=0", "eval_tasks=2"]
    run_dir = tmp_path / "refused"
    proc = run_train(
        tmp_path, *fast, "compile=inductor", f"hydra.run.dir={run_dir}", check=False, CXX=str(tmp_path / cxx)
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stdout + proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error: " in line]
    assert len(errors) == 1 and "error: compile=inductor on a CPU needs a C++ compiler and none was found" in errors[0]
    assert not (run_dir / "checkpoints").exists() and not (run_dir / "metrics.jsonl").exists()


@pytest.mark.parametrize("cxx", ["/nonexistent/c++", "/"], ids=["missing", "not-a-program"])
def test_without_a_cpp_compiler_auto_stays_eager(cxx):
    """inductor's own compiler search, pointed at no compiler: a long sine training, which auto would compile, runs
    eagerly and says why."""
    from torch._inductor import config, cpp_builder

    cpp_builder.cpp_compiler_search.cache_clear()
    try:
        with config.patch({"cpp.cxx": (None, cxx)}):
            compile, _, chosen = resolve(CPU, "auto", "highest", model=MLP(), iterations=LONG)
    finally:
        cpp_builder.cpp_compiler_search.cache_clear()
    assert compile == "none" and "inductor needs a C++ compiler, none found" in chosen
    assert resolve(CPU, "auto", "highest", model=MLP(), iterations=LONG)[0] == "inductor"  # with this machine's g++
