"""What machine a figure came from: CPU model and features, thread count, GPU.

Every benchmark prints :func:`banner` with its figures, and manifests record :func:`describe`,
because speed (and the last digits of float results) move with the CPU: AMX makes bf16 fast on
recent Intel Xeons and is absent on AMD EPYC; MKL/oneDNN pick other kernels per ISA.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

_FEATURES = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "sve", "asimd")


def cpu_model() -> str:
    """The CPU's marketing name (``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Model", "Hardware") and value.strip():
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_features() -> list[str]:
    """The vector/matrix features that decide float speed here (a subset of the CPU flags)."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    flags = set()
    for line in text.splitlines():
        if line.split(":")[0].strip() in ("flags", "Features"):
            flags.update(line.split(":", 1)[1].split())
            break
    return [f for f in _FEATURES if f in flags]


def slow_bf16(features: list[str] | None = None, arch: str | None = None) -> bool:
    """Whether bfloat16 math on this CPU is emulated: an x86 CPU with neither AVX512-BF16 nor AMX
    (AMD EPYC with AVX2 only, older Xeons). Measured on such an AMD EPYC: LoRA fine-tuning under
    bfloat16 autocast 9x slower than in float32, DONOD's forward 4x (docs/results.md), where AMX
    makes bfloat16 about 2x faster than float32.
    ``features``/``arch``: :func:`cpu_features` and the machine's by default; False where this is
    not known: off x86, or none of :func:`cpu_features`' flags read (no ``/proc/cpuinfo``, or a
    CPU older than AVX2)."""
    features = cpu_features() if features is None else features
    arch = platform.machine() if arch is None else arch
    return bool(features) and arch in ("x86_64", "AMD64", "i686") and not {"avx512_bf16", "amx_bf16"} & set(features)


def describe() -> dict:
    """{cpu, arch, features, cores, torch_threads, gpu}: JSON-ready; torch is read only when loaded."""
    import sys

    info = {"cpu": cpu_model(), "arch": platform.machine(), "features": cpu_features(), "cores": os.cpu_count()}
    torch = sys.modules.get("torch")
    if torch is not None:
        info["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    return info


def banner() -> str:
    """One line for benchmark output: ``# machine: <cpu> (<arch>, <features>), N cores, T torch threads[, GPU]``."""
    d = describe()
    feats = ", ".join(d["features"]) or "no AVX-512/AMX"
    line = f"# machine: {d['cpu']} ({d['arch']}; {feats}), {d['cores']} cores"
    if "torch_threads" in d:
        line += f", {d['torch_threads']} torch threads"
    if d.get("gpu"):
        line += f", GPU {d['gpu']}"
    return line
