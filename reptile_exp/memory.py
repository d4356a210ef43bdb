"""The memory a device has available, and the one-line refusal of a configuration that cannot fit in it (issue 22).

On the CPU the least of: the kernel's MemAvailable, the headroom under the process's address-space limit
(RLIMIT_AS, as `ulimit -v` and some schedulers set it) and under the memory limits of its cgroup and the cgroups
above it (cgroup v2 or v1; a SLURM job's limit is on a cgroup below the mount's root). On CUDA the driver's
free memory plus what PyTorch's caching allocator holds unused. A configuration refused here would otherwise grow
until the kernel's OOM killer ends it, or a neighbour's job on a shared node.
"""

from __future__ import annotations

import resource
from pathlib import Path

import torch

from .errors import ConfigError

PROC_CGROUP, CGROUP_MOUNT = Path("/proc/self/cgroup"), Path("/sys/fs/cgroup")
# a /proc/self/cgroup line's controller -> (its folder under the mount, the limit file, the usage file)
CGROUP_MEMORY = {
    "": ("", "memory.max", "memory.current"),
    "memory": ("memory", "memory.limit_in_bytes", "memory.usage_in_bytes"),
}


def available_bytes(device: torch.device, proc_cgroup: Path = PROC_CGROUP, mount: Path = CGROUP_MOUNT) -> int:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    limits = [_proc_bytes("/proc/meminfo", "MemAvailable")]
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY:
        limits.append(soft - (_proc_bytes("/proc/self/status", "VmSize") or 0))
    limits += cgroup_headroom(proc_cgroup, mount)
    return max(0, min(x for x in limits if x is not None))


def cgroup_headroom(proc_cgroup: Path = PROC_CGROUP, mount: Path = CGROUP_MOUNT) -> list[int]:
    """The headroom (limit less usage) under each memory limit set on this process's cgroup (`proc_cgroup`) and the
    cgroups above it, those visible under `mount` (a container sees its own cgroup as the mount's root)."""
    headroom = []
    for line in proc_cgroup.read_text().splitlines() if proc_cgroup.exists() else []:
        _, controllers, path = line.split(":", 2)
        for controller in set(controllers.split(",")) & CGROUP_MEMORY.keys():
            folder, limit, usage = CGROUP_MEMORY[controller]
            parts = Path(path).parts[1:]
            for cgroup in (mount / folder / Path(*parts[:n]) for n in range(len(parts), -1, -1)):
                if (cgroup / limit).exists() and (value := (cgroup / limit).read_text().strip()) != "max":
                    headroom.append(int(value) - int((cgroup / usage).read_text()))
    return headroom


def require(need: int, what: str, fix: str, device: torch.device, have: int | None = None) -> None:
    """ConfigError in one line when `need` bytes (what they are for) exceed what `device` has available (`have`,
    read here unless given: a fix that quotes it must quote the same reading)."""
    have = available_bytes(device) if have is None else have
    if need > have:
        raise ConfigError(f"{what} needs about {gib(need)} but {gib(have)} is available on {device.type}; {fix}")


def gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def _proc_bytes(path: str, key: str) -> int | None:
    """A `key: N kB` entry of a /proc file in bytes (None off Linux, or where the file lacks it)."""
    proc = Path(path)
    for line in proc.read_text().splitlines() if proc.exists() else []:
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    return None
