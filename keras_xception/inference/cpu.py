"""Whether this CPU computes bfloat16 natively, from its flags.

Native bf16 means instructions that multiply bf16 values and accumulate in
float32 in one step: AVX512_BF16 (`vdpbf16ps`; AMD Zen 4 and later, Intel
Cooper Lake and Sapphire Rapids) or AMX_BF16 (Intel Sapphire Rapids and
later). Without them (e.g. x86 CPUs with AVX2 and FMA only) a bf16 model is
emulated: values are widened to float32 for every operation, which is slower
than computing in float32 directly, so `precision="auto"` never picks it.

The flags are read from `/proc/cpuinfo` (Linux). Elsewhere the set is empty
and bf16 is never chosen automatically.
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
