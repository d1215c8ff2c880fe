"""The training precision on a CPU: half precision only where the CPU computes it natively.

CPUs have no fp16 autocast (Lightning turns ``16-mixed`` into ``bf16-mixed`` there, with a
warning), and a CPU without bf16 instructions (x86 before AVX512-BF16 / AMX, Arm before
ARMv8.6) emulates bf16 arithmetic: about 10x slower than fp32 for a convolution's forward and
backward pass on AVX2. :func:`train_precision` decides once, before the Trainer exists, and says
what it decided in one line.
"""

from __future__ import annotations

from pathlib import Path

import torch

ALIASES = {"16": "16-mixed", "bf16": "bf16-mixed", "32": "32-true", "64": "64-true"}
HALF = ("16-mixed", "bf16-mixed", "16-true", "bf16-true")
BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})  # x86 flags, Arm "Features"


def bf16_in_cpuinfo(cpuinfo: str) -> bool:
    """Whether the text of ``/proc/cpuinfo`` lists a bf16 instruction set: x86's
    ``avx512_bf16`` or ``amx_bf16`` in a ``flags`` line, or Arm's ``bf16`` in ``Features``."""
    for line in cpuinfo.splitlines():
        key, _, values = line.partition(":")
        if key.strip() in ("flags", "Features") and BF16_FLAGS & set(values.split()):
            return True
    return False


def cpu_has_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether this CPU computes bf16 natively: ``/proc/cpuinfo`` where there is one (Linux),
    else oneDNN's own answer (``torch.ops.mkldnn._is_mkldnn_bf16_supported``), else False."""
    try:
        return bf16_in_cpuinfo(cpuinfo.read_text(errors="replace"))
    except OSError:
        pass
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def trains_on_cpu(accelerator: str) -> bool:
    """Whether ``trainer.accelerator`` puts training on the CPU: ``cpu``, or ``auto`` on a
    machine with neither CUDA nor MPS."""
    if accelerator != "auto":
        return accelerator == "cpu"
    mps = getattr(torch.backends, "mps", None)
    return not torch.cuda.is_available() and not (mps is not None and mps.is_available())


def train_precision(precision: str | int, on_cpu: bool, cpu_bf16: bool,
                    asked: bool = True) -> tuple[str, str | None]:
    """The ``precision`` to give Lightning (Lightning's aliases spelt out: 16 -> 16-mixed) and a
    one-line note on what changed, or None.

    Off the CPU, and for full precision, the value is kept. On a CPU without bf16 instructions
    every half precision trains in ``32-true``; on one with them, ``16-mixed`` becomes
    ``bf16-mixed`` (what Lightning would do, said here instead of in its warning), and
    ``16-true`` is kept with a note that fp16 is emulated. A half precision the command line
    did not ask for (``asked`` false: a trainer group's GPU default, as trainer=ddp's
    bf16-mixed) is ``32-true`` on any CPU.
    """
    given = str(precision)
    value = ALIASES.get(given, given)
    if not on_cpu or value not in HALF:
        return value, None
    where = f"trainer.precision={given}"
    if not asked:
        return "32-true", (f"{where} is the trainer group's default for GPUs: training in "
                           f"32-true on the CPU (give trainer.precision={given} to keep it)")
    if not cpu_bf16:
        why = "CPUs have no fp16 autocast (Lightning would train in bf16-mixed) and " \
            if value == "16-mixed" else ""
        return "32-true", (f"{where}: {why}this CPU has no bf16 instructions (half precision is "
                           "emulated there, many times slower than fp32): training in 32-true")
    if value == "16-mixed":
        return "bf16-mixed", (f"{where}: CPUs have no fp16 autocast: training in bf16-mixed "
                              "(Lightning's mapping; this CPU has bf16 instructions)")
    if value == "16-true":
        return value, (f"{where}: fp16 is emulated on most CPUs, often slower than fp32 "
                       "(bf16-true is this CPU's native half precision)")
    return value, None
