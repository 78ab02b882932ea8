"""How long a spawner backend takes to bring problems up, and to take them down.

    python bench/spawn.py [--repeats 5] [--selectors 2] [--problems 1]
    python bench/spawn.py --backend swarm --problems 20 [--workers 2] [--selectors 1] [--repeats 1]

Images prebuilt (scripts/build-images.sh) and the engine running. Each repeat
publishes `--problems` problems at once the way the Celery publish task does
(one thread per problem calling the backend's `start`) and times until every
service answers its gRPC health check; then times `stop` until nothing of the
problems is left. Uses a prefix of its own (`fdbench`, `fdbenchsw` for the
swarm), so it never touches a running installation.

`--backend docker` (the default): `DockerSpawner.start` (network, volume, the
app copied in, coordinator and selector containers created and started).
Prints each repeat and the median.

`--backend swarm`: `SwarmSpawner.start`, with TLS and a selector token as the
website gives them, on a swarm of this engine (the manager, where coordinators
run) and `--workers` engines in containers (tests/docker/swarm_nodes.py), made
for the run and removed after; `--no-cluster` uses the engine's swarm as it is
and loses no node. Prints, per repeat and over all, the median and p95 over
problems of start call → all of the problem's services healthy, how the
services spread over the nodes and the CPU the idle services take; after the
last repeat it removes the engine of the worker running most services and
times until each service that ran there runs healthy on another node.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fedota_common.fab import load_app  # noqa: E402
from webserver.spawner.base import RunSpec, SpawnError  # noqa: E402
from webserver.spawner.docker import DockerSpawner  # noqa: E402

SWARM_PREFIX = "fdbenchsw"
# How long the lost node's services may take to run elsewhere before the bench gives up on them.
RESCHEDULE_TIMEOUT = 300.0


def percentile(values: Sequence[float], q: float) -> float:
    """The nearest-rank q-th percentile (0 < q <= 100): the smallest value with q % of them at or below it."""
    if not values:
        raise ValueError("no values")
    if not 0 < q <= 100:
        raise ValueError(f"percentile {q} is not in (0, 100]")
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q / 100 * len(ordered))) - 1]


def summary(values: Sequence[float]) -> str:
    """'median 1.23 s, p95 2.34 s, max 3.45 s (n=20)', or 'none' for no values."""
    if not values:
        return "none"
    return (
        f"median {statistics.median(values):.2f} s, p95 {percentile(values, 95):.2f} s, "
        f"min {min(values):.2f} s, max {max(values):.2f} s (n={len(values)})"
    )


def spread(placed: dict[str, str], manager: str) -> dict[str, Counter[str]]:
    """{node: Counter of roles} from {service name: node}; the manager's node is shown as '<name> (manager)'."""
    out: dict[str, Counter[str]] = {}
    for service, node in sorted(placed.items()):
        role = "coordinator" if service.endswith("-coordinator") else "selector"
        out.setdefault(f"{node} (manager)" if node == manager else node, Counter())[role] += 1
    return out


def load() -> str:
    return "{:.2f} {:.2f} {:.2f}".format(*os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=("docker", "swarm"), default="docker")
    parser.add_argument("--repeats", type=int, default=None, help="5 for docker, 1 for swarm")
    parser.add_argument("--selectors", type=int, default=None, help="per problem: 2 for docker, 1 for swarm")
    parser.add_argument("--problems", type=int, default=1, help="problems published at the same time")
    parser.add_argument("--port-base", type=int, default=None, help="31000 for docker, 22000 for swarm")
    swarm = parser.add_argument_group("swarm")
    swarm.add_argument("--workers", type=int, default=2, help="worker engines in containers")
    swarm.add_argument("--no-cluster", action="store_true", help="the engine's swarm as it is; no node is lost")
    swarm.add_argument("--coordinator-memory", default="512m")
    swarm.add_argument("--selector-memory", default="256m")
    swarm.add_argument("--start-timeout", type=float, default=None, help="the spawner's own by default (120 s)")
    swarm.add_argument("--idle", type=float, default=15.0, help="seconds to sample the idle services' CPU")
    args = parser.parse_args()
    if args.backend == "docker":
        bench_docker(args)
    else:
        bench_swarm(args)


# ---- docker ------------------------------------------------------------------------------------


def _spec(problem_id: int, repeat: int, fab: Path, sha256: str, selectors: int, port_base: int) -> RunSpec:
    """What the publish task would start for a problem of the bench (each backend adds its own)."""
    first = port_base + problem_id * 8
    return RunSpec(
        problem_id=problem_id,
        run_id=repeat,
        run_number=repeat,
        fab_path=fab,
        fab_sha256=sha256,
        run_config={},
        num_selectors=selectors,
        round_timeout=60.0,
        min_clients=1,
        report_url="http://127.0.0.1:9/internal/v1/runs/0/",
        service_token="bench",
        selector_token="bench",
        selector_ports=tuple(range(first, first + selectors)),
    )


def bench_docker(args: argparse.Namespace) -> None:
    repeats = args.repeats or 5
    selectors = args.selectors or 2
    port_base = args.port_base or 31000
    app = load_app(REPO / "apps" / "tabular")
    fab = Path("/tmp/fedota-bench-spawn.fab")
    fab.write_bytes(app.content)
    spawner = DockerSpawner(prefix="fdbench")
    for problem_id in spawner.problems():
        spawner.stop(problem_id)

    def spec(problem_id: int, repeat: int) -> RunSpec:
        return _spec(problem_id, repeat, fab, app.sha256, selectors, port_base)

    # This machine is shared: a figure means little without the load it was taken under.
    print(f"load average (1, 5, 15 min) at the start: {load()}")
    ids = list(range(1, args.problems + 1))
    ups, downs = [], []
    with ThreadPoolExecutor(max_workers=len(ids)) as pool:
        for repeat in range(1, repeats + 1):
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
        f"median over {repeats}: publish → all healthy {statistics.median(ups):.2f} s "
        f"(max {max(ups):.2f}), stop {statistics.median(downs):.2f} s (max {max(downs):.2f}); "
        f"{args.problems} problem(s) × (1 coordinator + {selectors} selectors)"
    )
    print(f"load average (1, 5, 15 min) at the end: {load()}")


# ---- swarm -------------------------------------------------------------------------------------


@dataclass
class Started:
    problem_id: int
    seconds: float
    error: str = ""


def bench_swarm(args: argparse.Namespace) -> None:
    import docker  # type: ignore[import-untyped]

    # One connection per thread that may poll at once: every problem's start polls its services.
    client = docker.from_env(timeout=120, max_pool_size=args.problems * 2 + 8)
    print(f"load average (1, 5, 15 min) at the start: {load()}")
    started = time.monotonic()
    if args.no_cluster:
        swarm_run(args, client, None)
    else:
        from tests.docker.swarm_nodes import ClusterUnavailable, swarm_cluster

        try:
            with swarm_cluster(client, SWARM_PREFIX, args.workers, images=("fedota/selector:latest",)) as cluster:
                print(f"cluster: {args.workers} worker engines up in {time.monotonic() - started:.1f} s")
                swarm_run(args, client, cluster)
        except ClusterUnavailable as exc:
            sys.exit(f"cannot make the swarm here: {exc} (--no-cluster uses the engine's own swarm)")
    print(f"load average (1, 5, 15 min) at the end: {load()} ({time.monotonic() - started:.0f} s in all)")


def swarm_run(args: argparse.Namespace, client: Any, cluster: dict[str, Any] | None) -> None:
    from fedota_common.pki import issue_server_cert, make_ca
    from webserver.spawner.swarm import START_TIMEOUT, SwarmSpawner

    repeats = args.repeats or 1
    selectors = args.selectors or 1
    port_base = args.port_base or 22000
    spawner = SwarmSpawner(
        client=client,
        prefix=SWARM_PREFIX,
        coordinator_memory=args.coordinator_memory,
        selector_memory=args.selector_memory,
        # This kernel drops encrypted overlay traffic between nodes (docs/swarm.md).
        encrypted=False,
        start_timeout=args.start_timeout or START_TIMEOUT,
    )
    manager = str(client.info()["Name"])
    hosts = [cluster["gateway"], *cluster["addresses"].values()] if cluster else ["127.0.0.1"]
    app = load_app(REPO / "apps" / "tabular")
    fab = Path("/tmp/fedota-bench-spawn-swarm.fab")
    fab.write_bytes(app.content)
    ids = list(range(1, args.problems + 1))

    # The website issues the problem's CA and certificates before the start: not timed.
    def spec(problem_id: int, repeat: int) -> RunSpec:
        ca_cert, ca_key = make_ca(f"Fedota bench problem {problem_id}")
        selector_cert, selector_key = issue_server_cert(ca_cert, ca_key, hosts)
        coordinator_cert, coordinator_key = issue_server_cert(ca_cert, ca_key, spawner.coordinator_hosts(problem_id))
        return replace(
            _spec(problem_id, repeat, fab, app.sha256, selectors, port_base),
            run_id=problem_id * 100 + repeat,
            report_url="",
            service_token="",
            selector_token=f"fdbench-selector-token-{problem_id}",
            tls_cert_pem=selector_cert,
            tls_key_pem=selector_key,
            coordinator_tls_cert_pem=coordinator_cert,
            coordinator_tls_key_pem=coordinator_key,
            ca_cert_pem=ca_cert,
        )

    def start(one: RunSpec) -> Started:
        t0 = time.monotonic()
        try:
            states = spawner.start(one)
        except SpawnError as exc:
            return Started(one.problem_id, time.monotonic() - t0, str(exc))
        unhealthy = [s for s in states if s.health != "healthy"]
        return Started(one.problem_id, time.monotonic() - t0, f"not healthy: {unhealthy}" if unhealthy else "")

    for problem_id in spawner.problems():
        spawner.stop(problem_id)
    everyone: list[float] = []
    try:
        with ThreadPoolExecutor(max_workers=len(ids)) as pool:
            for repeat in range(1, repeats + 1):
                specs = [spec(i, repeat) for i in ids]
                print(f"repeat {repeat}: publishing {len(ids)} problems at once, load {load()}")
                t0 = time.monotonic()
                results = list(pool.map(start, specs))
                wall = time.monotonic() - t0
                healthy = [r.seconds for r in results if not r.error]
                everyone += healthy
                print(
                    f"repeat {repeat}: {len(healthy)} of {len(ids)} problems healthy, last after {wall:.2f} s; "
                    f"start → healthy: {summary(healthy)}; load {load()}"
                )
                for failed in [r for r in results if r.error]:
                    print(f"  problem {failed.problem_id} failed after {failed.seconds:.1f} s: {failed.error[:600]}")
                placed = {name: node for i in ids for name, node in spawner.nodes(i).items()}
                for node, roles in spread(placed, manager).items():
                    print(f"  on {node}: {sum(roles.values())} services ({dict(roles)})")
                if args.idle > 0:
                    busy = idle_cpu(client, ids, args.idle)
                    print(
                        f"  idle, 10 s after the last start, the services took {busy} over {args.idle:.0f} s; load {load()}"
                    )
                if repeat == repeats and cluster:
                    lose_node(spawner, client, ids, placed, cluster)
                t0 = time.monotonic()
                list(pool.map(spawner.stop, ids))
                print(f"repeat {repeat}: stop {time.monotonic() - t0:.2f} s")
                left = leftovers(spawner, client, cluster)
                assert not left, f"stop left something behind: {left}"
        if repeats > 1:
            print(f"over {repeats} repeats: start → healthy {summary(everyone)}")
        print(
            f"{args.problems} problem(s) × (1 coordinator + {selectors} selectors), "
            f"limits {args.coordinator_memory}/{args.selector_memory}, TLS, unencrypted overlay"
        )
    finally:
        for problem_id in spawner.problems():
            try:
                spawner.stop(problem_id)
            except SpawnError as exc:
                print(f"cleaning up problem {problem_id}: {exc}", file=sys.stderr)


def lose_node(spawner: Any, client: Any, ids: list[int], placed: dict[str, str], cluster: dict[str, Any]) -> None:
    """Remove the engine of the worker running most services; time until each runs healthy elsewhere."""
    counts = Counter(node for node in placed.values() if node in cluster["nodes"])
    if not counts:
        print("no service runs on a worker: no node to lose")
        return
    lost, _ = counts.most_common(1)[0]
    moved = {name for name, node in placed.items() if node == lost}
    owners = {name: i for i in ids for name in spawner.nodes(i) if name in moved}
    node_id = next(n.id for n in client.nodes.list() if n.attrs["Description"]["Hostname"] == lost)
    print(f"losing {lost}: its engine's container removed, {len(moved)} services ran there; load {load()}")
    t0 = time.monotonic()
    subprocess.run(["docker", "rm", "-f", "-v", lost], capture_output=True, timeout=120, check=True)
    removed = time.monotonic() - t0
    down: float | None = None
    back: dict[str, float] = {}
    deadline = t0 + RESCHEDULE_TIMEOUT
    while len(back) < len(moved) and time.monotonic() < deadline:
        if down is None and client.nodes.get(node_id).attrs["Status"]["State"] == "down":
            down = time.monotonic() - t0
        for problem_id in sorted({owners[name] for name in moved - back.keys()}):
            now = spawner.nodes(problem_id)
            states = {spawner.service_name(problem_id, s.role, s.index): s for s in spawner.status(problem_id)}
            for name in moved - back.keys():
                if owners[name] != problem_id:
                    continue
                if now.get(name) not in (None, lost) and name in states and states[name].health == "healthy":
                    back[name] = time.monotonic() - t0
        time.sleep(0.5)
    where = Counter(node for i in ids for name, node in spawner.nodes(i).items() if name in back)
    print(
        f"  engine container removed in {removed:.1f} s; Swarm marked the node down after "
        + (f"{down:.1f} s" if down is not None else "(not seen)")
    )
    print(f"  moved services healthy elsewhere: {summary(list(back.values()))}; now on {dict(where)}")
    if len(back) < len(moved):
        print(f"  NOT back within {RESCHEDULE_TIMEOUT:.0f} s: {sorted(moved - back.keys())}")
    else:
        print(f"  all {len(moved)} back after {max(back.values()):.1f} s; load {load()}")


def idle_cpu(client: Any, ids: list[int], seconds: float) -> str:
    """CPU the problems' task containers use while idle (their health checks included), per role, from
    cgroup v1; after a pause, as a coordinator loads its app's machinery once it has answered."""
    time.sleep(10)
    files: dict[str, list[Path]] = {}
    for problem_id in ids:
        wanted = {"label": [f"fedota.install={SWARM_PREFIX}", f"fedota.problem={problem_id}"]}
        for service in client.services.list(filters=wanted):
            role = (service.attrs["Spec"].get("Labels") or {}).get("fedota.role", "?")
            for task in service.tasks(filters={"desired-state": "running"}):
                container = ((task.get("Status") or {}).get("ContainerStatus") or {}).get("ContainerID")
                if container:
                    files.setdefault(role, []).extend(_cgroup_cpu(container))
    if not any(files.values()):
        return "an unknown amount of CPU (no cgroup v1 cpuacct file found)"

    def used() -> dict[str, int]:
        total = dict.fromkeys(files, 0)
        for role, paths in files.items():
            for path in paths:
                try:
                    total[role] += int(path.read_text())
                except OSError:
                    pass
        return total

    before = used()
    time.sleep(seconds)
    after = used()
    cores = {role: (after[role] - before[role]) / 1e9 / seconds for role in files}
    each = ", ".join(f"{role}s {cores[role]:.2f} ({len(files[role])})" for role in sorted(files))
    return f"{sum(cores.values()):.2f} cores: {each}"


def _cgroup_cpu(container: str) -> list[Path]:
    """The cpuacct.usage of a container, on this engine or one of the engines in containers."""
    root = Path("/sys/fs/cgroup/cpuacct")
    for pattern in (f"docker/{container}", f"*/{container}", f"*/*/{container}", f"*/*/*/{container}"):
        found = [p / "cpuacct.usage" for p in root.glob(pattern) if (p / "cpuacct.usage").exists()]
        if found:
            return found[:1]
    return []


def leftovers(spawner: Any, client: Any, cluster: dict[str, Any] | None) -> list[str]:
    """What the bench's prefix still has on the manager and on the workers' engines (nodes themselves aside)."""
    label = f"fedota.install={SWARM_PREFIX}"
    left = [f"problem {i}" for i in spawner.problems()]
    left += [c.name for c in client.containers.list(all=True, filters={"label": [label, "fedota.problem"]})]
    for node in cluster["nodes"] if cluster else []:
        done = subprocess.run(
            ["docker", "exec", node, "docker", "ps", "-aq", "--filter", f"label={label}"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if done.returncode == 0:  # the lost node's engine is gone with it
            left += [f"{node}: {c}" for c in done.stdout.split()]
    return left


if __name__ == "__main__":
    main()
