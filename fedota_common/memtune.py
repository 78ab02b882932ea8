"""How a service's process manages memory: glibc's malloc thresholds and the garbage collector.

Every hop moves models in 1 MiB chunks, and each chunk passes through a few short-lived
buffers of about that size (gRPC's received message, protobuf's field, the bytes handed to
the assembler). glibc serves an allocation that large with `mmap` and returns it to the
kernel with `munmap` when freed, so every chunk's buffers were fresh pages, each faulted in
and zeroed by the kernel 4 KiB at a time. That, not TLS or copying, was most of the cost of
receiving: a 200 MiB stream over TLS took 4.5 to 5.3 CPU-seconds per GiB at the two ends,
and 2.3 to 2.5 with these settings (`bench/transport.py`).

`install()` therefore serves allocations below `MMAP_THRESHOLD` from malloc's heap, whose
freed chunks are reused, and lets the heap keep up to `TRIM_THRESHOLD` free at its top
instead of giving it back at once. Model-sized buffers are still mapped and unmapped on
their own, so what a process holds between rounds grows by a few chunk buffers per thread
arena at most (measured peaks in bench/README.md). On a C library other than glibc
(musl, macOS) nothing changes.

It also freezes the objects that exist when the service starts (modules, classes,
settings) out of the garbage collector's reach: they live as long as the process, and
each full collection (services run one after every large payload, `release_cycles`)
then walks only what was made since, which took 20 ms a time in a client before.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging

log = logging.getLogger(__name__)

# mallopt's parameter numbers (glibc's malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
# glibc's own ceiling for the threshold (its dynamic threshold climbs there too, but only
# once a freed mapping that large shows it the way): far above a gRPC frame (a 1 MiB chunk
# and its header, `payload.MAX_FRAME`), and the size of a large layer's array, which an app
# makes anew every round. 4 MiB served the chunks as well, but every array above it was
# mapped and faulted in again: a Message-API client's own round trip of 100 MB in 8 arrays
# took 0.47 CPU-seconds against 0.39 with the defaults.
MMAP_THRESHOLD = 32 << 20
TRIM_THRESHOLD = 32 << 20


def tune_malloc() -> bool:
    """Set glibc's thresholds; False where the C library has no `mallopt` (or refuses)."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))


def freeze_startup_objects() -> None:
    """Move every object alive now out of the collector's generations (call with no payload alive)."""
    gc.collect()
    gc.freeze()


def install() -> None:
    """Tune this process for moving large payloads; call once, early, before the service's threads start."""
    if not tune_malloc():
        log.debug("mallopt unavailable: the C library's default thresholds stay")
    freeze_startup_objects()
