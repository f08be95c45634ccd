"""Whether this CPU computes bfloat16 natively, from its flags.

Native bf16 means instructions that multiply bf16 values and accumulate in
float32 in one step: AVX512_BF16 (`vdpbf16ps`; AMD Zen 4 and later, Intel
Cooper Lake and Sapphire Rapids) or AMX_BF16 (Intel Sapphire Rapids and
later). Without them (e.g. x86 CPUs with AVX2 and FMA only) a bf16 model is
emulated: values are widened to float32 for every operation, which is slower
than computing in float32 directly, so `precision="auto"` never picks it.

The flags are read from `/proc/cpuinfo` (Linux). Elsewhere the set is empty
and bf16 is never chosen automatically.

oneDNN's ISA cap. `ONEDNN_MAX_CPU_ISA` (or its older name
`DNNL_MAX_CPU_ISA`) limits the instructions oneDNN's kernels use, in
TensorFlow and OpenVINO alike, whatever the CPU lists. Below
`AVX512_CORE_BF16` (`AVX2`, `AVX512_CORE_VNNI`, ...) they have no bf16 dot
product, so `usable_flags`, what the runtimes choose by, leaves the bf16
flags out under such a cap; under the AVX2 ones OpenVINO cannot compile a
bf16 model at all, and says so in one line (`ConfigError`).
"""

from __future__ import annotations

import functools
import os

# CPU flags (as /proc/cpuinfo names them) that give native bf16 dot products.
BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


@functools.lru_cache(maxsize=None)
def cpu_flags(path="/proc/cpuinfo"):
    """The CPU's feature flags, as a frozenset of lower-case names.

    Args:
        path: The file to read (Linux's `/proc/cpuinfo` format).

    Returns:
        The flags of the first CPU listed; an empty set where the file does
        not exist or lists none (e.g. macOS, Windows).
    """
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("flags") and ":" in line:
                    return frozenset(line.split(":", 1)[1].lower().split())
    except OSError:
        pass
    return frozenset()


# oneDNN ISA names (`ONEDNN_MAX_CPU_ISA`) whose kernels have no bf16 dot product.
NO_BF16_ISAS = frozenset({
    "SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI",
})
# Those of them under which OpenVINO 2026.4 cannot compile a bf16 model at
# all (its CPU plugin finds no kernel); under AVX512_CORE and
# AVX512_CORE_VNNI it compiles one and emulates bf16.
AVX2_ISAS = frozenset({"SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2"})
ISA_VARIABLES = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")


def isa_cap():
    """`(variable, ISA)` where the environment caps oneDNN below bf16, else `None`."""
    for variable in ISA_VARIABLES:
        value = os.environ.get(variable, "").strip().upper()
        if value:
            return (variable, value) if value in NO_BF16_ISAS else None
    return None


def avx2_cap():
    """`isa_cap()` where it is one of `AVX2_ISAS` (no bf16 kernel at all), else `None`."""
    cap = isa_cap()
    return cap if cap and cap[1] in AVX2_ISAS else None


def usable_flags():
    """The CPU's flags as oneDNN's kernels may use them (see the module docstring)."""
    flags = cpu_flags()
    return flags - BF16_FLAGS if isa_cap() else flags


def no_bf16_reason():
    """Why bf16 is not native here, in one sentence."""
    cap = isa_cap()
    if cap:
        return f"{cap[0]}={cap[1]} caps oneDNN's kernels below bf16"
    return "the CPU has no native bf16 (avx512_bf16 or amx_bf16)"


def bf16_flags(flags=None):
    """The native-bf16 flags among `flags` (the CPU's own when `None`), sorted."""
    flags = cpu_flags() if flags is None else flags
    return sorted(BF16_FLAGS & set(flags))


def available_cores():
    """The number of CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1
