"""A service's start-up objects kept out of the garbage collector's reach.

Services run a full collection after handling each large payload (`payload.release_cycles`:
Flower's RecordDict is a reference cycle only the collector frees). A full collection walks
every object the process holds, and flwr's, numpy's and gRPC's modules and classes are
about 60,000 of them: 20 ms a time in a client, for objects that live as long as the process.
`freeze_startup_objects()` moves everything alive at that moment into the collector's
permanent generation, so later collections walk only what was made since.

Call it only when no payload is alive: an object frozen while it is still in use is never
collected even once it becomes garbage. Services call it at start (`install`, from
`service_main`), and a client again once its app is loaded (the app's own imports: torch,
its model code).

`tune_malloc()` sets glibc's malloc thresholds and arena count. With its defaults a
process maps and unmaps every buffer above 128 KiB until it frees a larger one (its
dynamic threshold then rises to that size, at most 32 MiB), every thread's arena gives
memory back to the kernel as soon as twice that threshold is free at its top, and up to
8 arenas per core are made, each keeping its own free memory. A round moves every payload
as ~1 MiB chunk buffers, built and freed on gRPC's threads, so with a small model the
services faulted their buffers' pages in again and again: about a quarter of a selector's
CPU time at 1 MB was page faults and zeroing pages (`perf`, bench/README.md). Buffers up
to 4 MiB now come from the heap, up to 8 MiB of free heap stays with each arena, and there
are at most 2 arenas (the interpreter's lock serialises most allocations anyway). Larger
buffers (the arrays of a big model) are still mapped and unmapped on their own. Measured
(bench/README.md): 1 MB rounds take about a fifth less CPU in every role, and the peaks
are lower than with the defaults at 1 MB and 100 MB alike; 8 MiB kept per arena with
glibc's 16 arenas had cost a selector 85 MiB more at 1 MB. An operator who sets glibc's
malloc tunables (`GLIBC_TUNABLES=glibc.malloc...`) keeps them.
"""

from __future__ import annotations

import ctypes
import gc
import os

# mallopt(3) parameters.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
MMAP_THRESHOLD = 4 << 20
TRIM_THRESHOLD = 8 << 20
ARENA_MAX = 2


def tune_malloc() -> bool:
    """Set glibc's malloc thresholds and arenas (see above); False where that is not glibc or the operator set them."""
    if "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", ""):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library the interpreter runs on
    except (OSError, AttributeError):  # no mallopt there: nothing to tune
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    settings = ((_M_ARENA_MAX, ARENA_MAX), (_M_MMAP_THRESHOLD, MMAP_THRESHOLD), (_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return all([mallopt(param, value) for param, value in settings])


def freeze_startup_objects() -> None:
    """Move every object alive now out of the collector's generations (call with no payload alive)."""
    gc.collect()
    gc.freeze()


def install() -> None:
    """Prepare a service process; call once at start, before any payload is handled."""
    tune_malloc()
    freeze_startup_objects()
