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

glibc's malloc thresholds were tried here as well and left alone: a fresh process maps and
unmaps each ~1 MiB chunk buffer (4.5 to 5.3 CPU-s per GiB over TLS in a cold process), but
once it has freed its first model-sized buffer glibc's dynamic threshold serves chunks from
its heap, and `bench/transport.py` then measures 3.0 to 3.4 CPU-s per GiB with the defaults
and with a fixed 32 MiB threshold alike, which also kept 40 MiB more in a selector.
"""

from __future__ import annotations

import gc


def freeze_startup_objects() -> None:
    """Move every object alive now out of the collector's generations (call with no payload alive)."""
    gc.collect()
    gc.freeze()


def install() -> None:
    """Prepare a service process; call once at start, before any payload is handled."""
    freeze_startup_objects()
