"""What the machine computes natively, and the fast paths `auto` picks from it (issue 21).

bfloat16 is native on a CPU with AVX512-BF16 or AMX-BF16 instructions (the kernel's cpuinfo flags) and on a GPU of
compute capability 8.0 or more. Elsewhere oneDNN emulates it: on a 2-core Xeon VM without those flags, bfloat16
matmuls ran 5x to 6x slower than float32 (docs/benchmarks.md, "CPU"), though oneDNN's own check
(torch.ops.mkldnn._is_mkldnn_bf16_supported) said yes.
"""

from __future__ import annotations

import platform
from pathlib import Path

import torch

BF16_FLAGS = {"avx512_bf16", "amx_bf16"}
CPUINFO = Path("/proc/cpuinfo")


def cpuinfo_fields(cpuinfo: Path = CPUINFO) -> dict[str, str]:
    """The kernel's CPU description (Linux) as {name: value}, the first processor's; empty where there is none."""
    fields: dict[str, str] = {}
    for line in cpuinfo.read_text().splitlines() if cpuinfo.exists() else []:
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip(), value.strip())
    return fields


def cpu_flags(cpuinfo: Path = CPUINFO) -> set[str] | None:
    """The CPU's feature flags (Linux), or None where the kernel does not list them."""
    flags = cpuinfo_fields(cpuinfo).get("flags")
    return None if flags is None else set(flags.split())


def cpu_name(cpuinfo: Path = CPUINFO) -> str:
    """The CPU's model name with its family and model numbers (VMs of different x86 types share a name: "Intel(R)
    Xeon(R) Processor"), else what the platform says."""
    fields = cpuinfo_fields(cpuinfo)
    name = fields.get("model name") or platform.processor() or platform.machine()
    family, model = fields.get("cpu family"), fields.get("model")
    return f"{name} (family {family}, model {model})" if family and model else name


def native_bf16(device: torch.device, cpuinfo: Path = CPUINFO) -> tuple[bool, str]:
    """Whether device computes bfloat16 natively, and why (what was found)."""
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        return major >= 8, f"compute capability {major}.{minor}"
    flags = cpu_flags(cpuinfo)
    if flags is None:
        return torch.ops.mkldnn._is_mkldnn_bf16_supported(), "oneDNN's check (no cpuinfo flags)"
    found = sorted(BF16_FLAGS & flags)
    if found:
        return True, " and ".join(found)
    return False, f"{torch.backends.cpu.get_cpu_capability()} without AVX512-BF16 or AMX-BF16"


def cpp_compiler() -> str | None:
    """The C++ compiler inductor builds CPU kernels with (the CXX environment variable, else g++), or None."""
    from torch._inductor import cpp_builder, exc  # imported here: heavy, and only compile needs it

    try:
        return cpp_builder.get_cpp_compiler()
    except (exc.InvalidCxxCompiler, OSError):  # OSError: CXX names something that cannot be run
        return None


# compile=auto compiles a CPU run from this many outer iterations: inductor's compile takes a minute or more on two
# cores, which a shorter run would not win back
AUTO_COMPILE_ITERATIONS = 10_000


def resolve(
    device: torch.device,
    compile: str,
    precision: str,
    dtype: torch.dtype = torch.float32,
    model: torch.nn.Module | None = None,
    iterations: int = 0,
) -> tuple[str, str, str | None]:
    """compile and precision with `auto` made concrete, and a line saying what auto chose (None without auto).

    precision=auto: bf16 for a float32 run where bfloat16 is native, unless the model says bfloat16 ran slower
    (`auto_bf16 = False`: the sine MLP), else highest (autocast leaves float64 as it is). compile=auto: cudagraphs on
    CUDA (the paper's models launch many tiny kernels per step); on a CPU inductor for a training of
    AUTO_COMPILE_ITERATIONS or more under a precision the model lists in `auto_inductor_on_cpu` (where it was
    measured faster, docs/benchmarks.md) when a C++ compiler is there, none otherwise."""
    chosen = []
    if precision == "auto":
        if dtype != torch.float32:
            precision, reason = "highest", f"dtype {dtype}: bfloat16 applies to float32 runs only"
        elif not getattr(model, "auto_bf16", True):
            precision, reason = "highest", f"{type(model).__name__} ran slower in bfloat16"
        else:
            native, why = native_bf16(device)
            precision = "bf16" if native else "highest"
            reason = f"{'native' if native else 'no native'} bfloat16: {why}"
        chosen.append(f"precision=auto -> {precision} ({reason})")
    if compile == "auto":
        if device.type == "cuda":
            compile, reason = "cudagraphs", "on cuda"
        elif iterations < AUTO_COMPILE_ITERATIONS:
            compile, reason = "none", f"on cpu, {iterations:,} iterations: fewer than {AUTO_COMPILE_ITERATIONS:,}"
        elif precision not in getattr(model, "auto_inductor_on_cpu", ()):
            compile, reason = "none", f"on cpu: inductor not measured faster for {type(model).__name__} at {precision}"
        elif cpp_compiler() is None:
            compile, reason = "none", "on cpu: inductor needs a C++ compiler, none found (CXX, g++)"
        else:
            compile, reason = "inductor", f"on cpu, {iterations:,} iterations of {type(model).__name__} at {precision}"
        chosen.append(f"compile=auto -> {compile} ({reason})")
    return compile, precision, "; ".join(chosen) or None
