"""How long the docker backend takes to bring a problem up, and to take it down.

    python bench/spawn.py [--repeats 5] [--selectors 2] [--problems 1]

Images prebuilt (scripts/build-images.sh) and the engine running. Each repeat
publishes `--problems` problems at once the way the Celery publish task does
(`DockerSpawner.start`: network, volume, the app copied in, coordinator and
selector containers created and started) and times until every container
answers its gRPC health check; then times `stop` until no container, network
or volume of the problems is left. Prints each repeat and the median. Uses
its own prefix (`fdbench`), so it never touches a running installation.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fedota_common.fab import load_app  # noqa: E402
from webserver.spawner.base import RunSpec  # noqa: E402
from webserver.spawner.docker import DockerSpawner  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--selectors", type=int, default=2)
    parser.add_argument("--problems", type=int, default=1, help="problems published at the same time")
    parser.add_argument("--port-base", type=int, default=31000)
    args = parser.parse_args()

    app = load_app(REPO / "apps" / "tabular")
    fab = Path("/tmp/fedota-bench-spawn.fab")
    fab.write_bytes(app.content)
    spawner = DockerSpawner(prefix="fdbench")
    for problem_id in spawner.problems():
        spawner.stop(problem_id)

    def spec(problem_id: int, repeat: int) -> RunSpec:
        first = args.port_base + problem_id * 8
        return RunSpec(
            problem_id=problem_id,
            run_id=repeat,
            run_number=repeat,
            fab_path=fab,
            fab_sha256=app.sha256,
            run_config={},
            num_selectors=args.selectors,
            round_timeout=60.0,
            min_clients=1,
            report_url="http://127.0.0.1:9/internal/v1/runs/0/",
            service_token="bench",
            selector_token="bench",
            selector_ports=tuple(range(first, first + args.selectors)),
        )

    # This machine is shared: a figure means little without the load it was taken under.
    print("load average (1, 5, 15 min) at the start: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    ids = list(range(1, args.problems + 1))
    ups, downs = [], []
    with ThreadPoolExecutor(max_workers=len(ids)) as pool:
        for repeat in range(1, args.repeats + 1):
            t0 = time.monotonic()
            states = [s for batch in pool.map(lambda i, r=repeat: spawner.start(spec(i, r)), ids) for s in batch]
            up = time.monotonic() - t0
            assert all(s.health == "healthy" for s in states), states
            t0 = time.monotonic()
            list(pool.map(spawner.stop, ids))
            down = time.monotonic() - t0
            assert not spawner.problems(), "stop left something behind"
            ups.append(up)
            downs.append(down)
            print(f"repeat {repeat}: {len(states)} containers healthy in {up:.2f} s, removed in {down:.2f} s")
    print(
        f"median over {args.repeats}: publish → all healthy {statistics.median(ups):.2f} s "
        f"(max {max(ups):.2f}), stop {statistics.median(downs):.2f} s (max {max(downs):.2f}); "
        f"{args.problems} problem(s) × (1 coordinator + {args.selectors} selectors)"
    )
    print("load average (1, 5, 15 min) at the end: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))


if __name__ == "__main__":
    main()
