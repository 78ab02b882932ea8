"""Chaos on the real compose platform: one long run survives a kill of each part in turn.

The platform runs from docker-compose.yml (tests/docker/compose.py). A problem setter
uploads tests/apps/counting, a Flower app whose every round adds exactly 1 to the model
(clients reply with what they received plus 1), so the model of round N holds the number
of rounds that reached it: a resume from the wrong checkpoint, a round counted twice or a
fresh model shows in the numbers. Three hospitals join with the `docker run` line their
bundle gives, and the run (two selectors, at least two clients per round) is hit by, in
turn:

- `docker kill` of the selector with the most clients: its clients fail over, rounds go
  on, and the reconciler restarts that selector alone (nothing else restarts, the
  attempt stays 1);
- `docker kill` of the coordinator: it is restarted alone and resumes as attempt 2 after
  its last checkpoint, losing at most the round in flight;
- `docker kill` of a client: rounds go on with the other two; its holder runs the same
  line again and it trains again;
- `docker kill` of the Celery worker, then of the web container: rounds go on meanwhile,
  the watchdog starts each again, and no round done while the website was down is
  missing once it is back (the coordinator's reports wait and retry).

After each, training must go on. At the end the run finishes by itself, no round number
is recorded twice within an attempt, the rounds of the attempts follow on, the final
model equals the last round's checkpoint and holds the count of rounds that had results,
every client exits 0, and the platform's clean-up leaves nothing of the problem. The measured
recovery times are printed (`-s`) and recorded in docs/containers.md.

The same faults, where they apply, hit a problem of the `process` backend (the demo's:
coordinator and selectors as processes of the worker's machine, SIGKILLed; the web,
worker and beat as host processes that nothing supervises, so they are not killed).

Run alone: `.venv/bin/pytest -q tests/docker/test_chaos.py -s` (about eight minutes).
"""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pytest

from tests.docker.compose import SETTER, Site, Stack, compose_stack, wait
from tests.docker.conftest import leftovers

REPO = Path(__file__).resolve().parents[2]
APP = REPO / "tests" / "apps" / "counting"
HOLDERS = ("chaos-hospital-0", "chaos-hospital-1", "chaos-hospital-2")
# Paced by the clients while the faults are made (CLIENT_DELAY s a round each), so that
# the run outlasts them on a fast machine; then `.no-delay` in the data folders lifts the
# pace and the rest of the rounds run as fast as they go.
ROUNDS = 250
# The process backend's run has no worker or web kill to live through.
PROCESS_ROUNDS = 180
CLIENT_DELAY = 0.5
# A fault is made only with this many rounds still to go, so its recovery is seen in the run.
ROUNDS_LEFT_FOR_A_FAULT = 40
# Rounds that must complete after a fault to count as "training goes on".
GOES_ON = 3

pytestmark = [pytest.mark.docker, pytest.mark.timeout(1200)]


@pytest.fixture(scope="module")
def stack(docker_client: Any, docker_prefix: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with compose_stack(docker_client, docker_prefix, tmp_path_factory.mktemp("chaos")) as made:
        yield made


@dataclass
class Client:
    """One data holder's client container, run with the line their bundle gives."""

    name: str
    line: list[str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        out = self.log.open("ab")
        self.proc = subprocess.Popen(self.line, stdout=out, stderr=subprocess.STDOUT)
        out.close()

    def ended(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else "(no output)"


@dataclass
class Watch:
    """The run as the API shows it, polled: every round record seen, by (attempt, number)."""

    site: Site
    token: str
    problem_id: int
    rounds_total: int
    platform_logs: Callable[[], str]
    rounds: dict[tuple[int, int], dict[str, Any]] = field(default_factory=dict)
    doc: dict[str, Any] = field(default_factory=dict)

    def poll(self) -> dict[str, Any]:
        # Every round after the last few held: a record can arrive late (a resumed
        # coordinator, or a report retried while the website was down).
        held = [n for _, n in self.rounds]
        since = max(0, max(held, default=0) - 50)
        doc = _unless_restarting(
            lambda: self.site.api("GET", f"/api/v1/problems/{self.problem_id}/dashboard/?since={since}", self.token)
        )
        if doc is None:
            return self.doc
        self.doc = doc
        for record in self.doc["rounds"]:
            self.rounds[(int(record["attempt"]), int(record["round"]))] = record
        return self.doc

    def everything(self) -> dict[str, Any]:
        doc = _unless_restarting(
            lambda: self.site.api("GET", f"/api/v1/problems/{self.problem_id}/dashboard/", self.token)
        )
        if doc is not None:
            self.doc = doc
            self.rounds = {(int(r["attempt"]), int(r["round"])): r for r in self.doc["rounds"]}
        return self.doc

    @property
    def run(self) -> dict[str, Any]:
        """The run as last seen ({"status": "starting"} before the website first answered)."""
        return dict(self.doc.get("run") or {"status": "starting", "attempts": [], "restarts": []})

    def last_round(self) -> int:
        """The highest round number recorded so far (any attempt)."""
        return max((n for _, n in self.rounds), default=0)

    def explain(self) -> str:
        run = self.doc.get("run") or {}
        logs = "\n".join(line["message"] for line in self.doc.get("logs", [])[-15:])
        return (
            f"run: status={run.get('status')} phase={run.get('phase')!r} detail={run.get('status_detail')!r}\n"
            f"restarts: {run.get('restarts')}\nattempts: {run.get('attempts')}\n"
            f"last round: {self.last_round()}\nlogs:\n{logs}\n{self.platform_logs()[-4000:]}"
        )

    def rounds_after(self, number: int, count: int, timeout: float) -> float:
        """Seconds until `count` rounds numbered above `number` are recorded, from now."""
        started = time.monotonic()

        def done() -> bool:
            if not self.poll():
                return False  # the website has not answered yet
            status = self.run["status"]
            assert status == "running", f"the run is {status}, not running\n{self.explain()}"
            return sum(1 for _, n in self.rounds if n > number) >= count

        wait(f"{count} rounds after round {number}", done, timeout, self.explain, interval=0.3)
        return time.monotonic() - started

    def room_for_a_fault(self, fault: str) -> None:
        left = self.rounds_total - self.last_round()
        assert left >= ROUNDS_LEFT_FOR_A_FAULT, (
            f"only {left} rounds left before `{fault}`: this machine ran the rounds faster than the faults"
            f" took; give the run more rounds or raise CLIENT_DELAY in {__file__}"
        )


def _started_at(container: Any) -> str:
    container.reload()
    return str(container.attrs["State"]["StartedAt"])


def _running(container: Any) -> bool:
    container.reload()
    return bool(container.attrs["State"]["Running"])


class Services(Protocol):
    """A problem's coordinator ("coordinator") and selectors ("selector-0", ...) on one backend."""

    def kill(self, name: str) -> None: ...

    def started(self, name: str) -> str:
        """What changes when the service is started again (a start time, a process id)."""
        ...

    def running(self, name: str) -> bool: ...


@dataclass
class Containers:
    """The problem's services as containers of the Docker backend, killed with `docker kill`."""

    docker: Any
    network: str

    def _get(self, name: str) -> Any:
        return self.docker.containers.get(f"{self.network}-{name}")

    def kill(self, name: str) -> None:
        self._get(name).kill()

    def started(self, name: str) -> str:
        return _started_at(self._get(name))

    def running(self, name: str) -> bool:
        return _running(self._get(name))


@dataclass
class Processes:
    """The problem's services as processes of the process backend, SIGKILLed with their group."""

    spawner: Any  # webserver.spawner.process.ProcessSpawner
    problem_id: int

    def _state(self, name: str) -> Any:
        role, _, index = name.partition("-")
        found = [s for s in self.spawner.status(self.problem_id) if (s.role, s.index) == (role, int(index or 0))]
        assert found, f"the process backend has no {name} for problem {self.problem_id}"
        return found[0]

    def kill(self, name: str) -> None:
        os.killpg(int(self._state(name).handle), signal.SIGKILL)

    def started(self, name: str) -> str:
        return str(self._state(name).handle)

    def running(self, name: str) -> bool:
        return bool(self._state(name).health != "exited")


def _model(site: Site, token: str, url: str) -> np.ndarray:
    import requests

    resp = requests.get(site.url + url, headers={"Authorization": f"Token {token}"}, timeout=60)
    assert resp.status_code == 200, f"GET {url} answered {resp.status_code}: {resp.text[:500]}"
    with np.load(io.BytesIO(resp.content)) as stored:
        arrays = [stored[name] for name in stored.files]
    assert len(arrays) == 1, f"{url} holds {len(arrays)} arrays, the counting app's model has one"
    return arrays[0]


def test_a_long_run_survives_killing_each_part_in_turn(
    stack: Stack, docker_client: Any, docker_prefix: str, tmp_path: Path
) -> None:
    for i, holder in enumerate(HOLDERS):
        stack.make_user(holder, "holder", f"Hospital {i}")

    def platform_faults(watch: Watch, services: Services, times: dict[str, float]) -> None:
        coordinator = docker_client.containers.get(f"{docker_prefix}-p{watch.problem_id}-coordinator")
        for service in ("worker", "web"):
            _kill_a_platform_service(stack, service, coordinator, watch, times)

    problem_id = _chaos(
        stack,
        lambda problem_id: Containers(docker_client, f"{docker_prefix}-p{problem_id}"),
        SETTER,
        HOLDERS,
        ROUNDS,
        docker_prefix,
        tmp_path,
        stack.logs,
        platform_faults,
    )
    wait(
        "the reconciler to remove the finished problem's containers, network and volume",
        lambda: leftovers(docker_client, docker_prefix, problem_id) == [],
        120,
        stack.logs,
    )


def test_the_process_backend_survives_killing_its_services_and_a_client(
    docker_client: Any, docker_prefix: str, tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    from tests.docker.test_e2e_docker import HOLDERS as E2E_HOLDERS
    from tests.docker.test_e2e_docker import SETTER as E2E_SETTER
    from tests.docker.test_e2e_docker import running_platform
    from webserver.spawner.process import ProcessSpawner, tagged_pids

    tmp = tmp_path_factory.mktemp("chaos-process")
    spawner = ProcessSpawner(tmp / "var" / "problems")
    with running_platform(docker_client, docker_prefix, tmp, spawner="process") as platform:
        try:
            problem_id = _chaos(
                Site(platform.url),
                lambda problem_id: Processes(spawner, problem_id),
                E2E_SETTER,
                E2E_HOLDERS,
                PROCESS_ROUNDS,
                docker_prefix,
                tmp_path,
                lambda: platform.explain(),
                None,
            )
            wait(
                "the reconciler to end the finished problem's processes",
                lambda: tagged_pids(spawner.tag(problem_id)) == [],
                60,
                lambda: platform.explain(),
            )
        finally:
            for leftover in spawner.problems():
                spawner.stop(leftover)


def _chaos(
    site: Site,
    services_of: Callable[[int], Services],
    setter_name: str,
    holders: tuple[str, ...],
    rounds: int,
    docker_prefix: str,
    tmp_path: Path,
    platform_logs: Callable[[], str],
    platform_faults: Callable[[Watch, Services, dict[str, float]], None] | None,
) -> int:
    """Publish the counting app, join `holders`, kill a selector, the coordinator and a client, then
    `platform_faults`; check the run finished whole. The problem's id."""
    from fedota_common.fab import load_app
    from scripts.make_demo_data import make_breast_cancer
    from tests.docker.joining import filled_in, readable

    demo = make_breast_cancer(tmp_path / "demo", len(holders), seed=0)
    readable(tmp_path)
    contract = json.loads((demo / "contract.json").read_text())
    setter = site.token(setter_name)
    fields = {
        "title": "Chaos",
        "description": "Survives a kill of each part of the platform in turn.",
        "contract": json.dumps(contract),
        "run_config": json.dumps(
            {
                "rounds": rounds,
                "num_selectors": 2,
                "min_clients": 2,
                "round_timeout": 60,
                "app_config": {"client-delay": CLIENT_DELAY},
            }
        ),
        "join_policy": "open",
    }
    fab = load_app(APP).content
    problem = site.api("POST", "/api/v1/problems/", setter, fields, expect=201, files={"fab": ("counting.fab", fab)})
    problem_id = int(problem["id"])
    site.api("POST", f"/api/v1/problems/{problem_id}/publish/", setter, expect=201)
    watch = Watch(site, setter, problem_id, rounds, platform_logs)

    def running() -> bool:
        runs = _unless_restarting(lambda: site.api("GET", f"/api/v1/problems/{problem_id}/runs/", setter))
        if runs is None:
            return False
        status = runs[0]["status"] if runs else "none"
        assert status not in ("failed", "stopped", "finished"), f"the run is {status}: {runs[0]['status_detail']}"
        return status == "running"

    wait("the worker to start the problem's services", running, 240, platform_logs, interval=2.0)
    services = services_of(problem_id)

    clients: list[Client] = []
    for i, holder in enumerate(holders):
        token = site.token(holder)
        joined = site.api(
            "POST", f"/api/v1/problems/{problem_id}/participants/", token, {"site_name": f"Site {i}"}, expect=201
        )
        bundle = site.api("POST", f"/api/v1/participants/{joined['id']}/bundle/", token)
        name = f"{docker_prefix}-chaos-client-{problem_id}-{i}"
        line = filled_in(
            bundle["docker_run"], problem_id, demo / "clients" / f"hospital_{i}", bundle, tmp_path / f"b{i}"
        )
        line[2:2] = ["--name", name, "--label", f"fedota.install={docker_prefix}"]
        clients.append(Client(name, line, tmp_path / f"client-{i}.log"))
    times: dict[str, float] = {}
    try:
        for client in clients:
            client.start()
        watch.rounds_after(0, 5, 240)

        # ---- a selector: only it restarts, its clients fail over, no round is lost ----
        watch.room_for_a_fault("kill a selector")
        served = {s["index"]: s["clients_connected"] for s in watch.doc["services"] if s["role"] == "selector"}
        victim = max(served, key=lambda i: served[i])
        other = 1 - victim
        before = {"coordinator": services.started("coordinator"), "other": services.started(f"selector-{other}")}
        last = watch.last_round()
        killed = time.monotonic()
        services.kill(f"selector-{victim}")
        times["selector kill: next round done"] = watch.rounds_after(last, 1, 120)
        watch.rounds_after(last, GOES_ON, 120)
        wait(f"selector {victim} to run again", lambda: services.running(f"selector-{victim}"), 120, watch.explain, 0.5)
        times["selector kill: selector running again"] = time.monotonic() - killed
        assert services.started("coordinator") == before["coordinator"], "the coordinator was restarted for a selector"
        assert services.started(f"selector-{other}") == before["other"], "the other selector was restarted too"
        watch.poll()
        assert [a["attempt"] for a in watch.run["attempts"]] == [1], watch.explain()
        assert [e["service"] for e in watch.run["restarts"]] == [f"selector {victim}"], watch.explain()

        # ---- the coordinator: restarted alone, resumes after its last checkpoint ----
        watch.room_for_a_fault("kill the coordinator")
        selectors_started = [services.started(f"selector-{i}") for i in range(2)]
        last = watch.last_round()
        killed, killed_at = time.monotonic(), datetime.now(UTC)
        services.kill("coordinator")

        def resumed() -> bool:
            watch.poll()
            assert watch.run["status"] == "running", watch.explain()
            return any(attempt == 2 for attempt, _ in watch.rounds)

        wait("the restarted coordinator's first round", resumed, 180, watch.explain, 0.3)
        times["coordinator kill: first round of the resumed attempt"] = time.monotonic() - killed
        # Where the time went: the restart (the reconciler's record) and the run's events.
        for entry in watch.run["restarts"]:
            print(f"[chaos] +{_after(killed_at, entry['at'])} restarted {entry['service']}: {entry['reason']}")
        for line in watch.doc["logs"]:
            if _after(killed_at, line["ts"]) > -1:
                print(f"[chaos] +{_after(killed_at, line['ts'])} {line['message'][:160]}")
        watch.rounds_after(watch.last_round(), GOES_ON, 120)
        assert [services.started(f"selector-{i}") for i in range(2)] == selectors_started, (
            "selectors were restarted for a coordinator"
        )
        first_resumed = min(n for a, n in watch.rounds if a == 2)
        last_before = max(n for a, n in watch.rounds if a == 1)
        assert last_before >= last, watch.explain()
        lost = last_before - (first_resumed - 1)
        print(f"[chaos] coordinator killed after round {last_before}; attempt 2 began at round {first_resumed}")
        assert 0 <= lost <= 1, f"{lost} rounds lost to a coordinator kill (at most the one in flight)"
        times["coordinator kill: rounds lost"] = lost

        # ---- a client: the others go on; its holder runs the line again ----
        watch.room_for_a_fault("kill a client")
        last = watch.last_round()
        subprocess.run(["docker", "kill", clients[-1].name], capture_output=True, check=True, timeout=60)
        code = clients[-1].ended(60)
        assert code != 0, "a killed client container exited 0"
        times["client kill: next round done"] = watch.rounds_after(last, 1, 120)
        watch.rounds_after(last, GOES_ON, 120)
        wait(
            "the killed client's container to be removed (--rm)",
            lambda: subprocess.run(["docker", "inspect", clients[-1].name], capture_output=True).returncode != 0,
            60,
            clients[-1].tail,
            0.5,
        )
        away = watch.last_round()
        clients[-1].start()
        restarted = time.monotonic()
        site_name = f"Site {len(clients) - 1}"
        wait(
            "the restarted client to train again",
            lambda: _last_trained(watch, site_name) > away,
            120,
            lambda: clients[-1].tail() + watch.explain(),
            0.5,
        )
        times["client restarted by its holder: first round it trains in"] = time.monotonic() - restarted
        times["client kill: rounds done while it was away"] = float(watch.last_round() - last)

        if platform_faults is not None:
            platform_faults(watch, services, times)
        watch.room_for_a_fault("the end")
        for i in range(len(clients)):
            fast = demo / "clients" / f"hospital_{i}" / ".no-delay"
            fast.touch()
            fast.chmod(0o644)

        # ---- the end: the run finishes by itself, history whole and in order ----
        for client in clients:
            code = client.ended(max(300, rounds * 3))
            assert code == 0, f"{client.name} exited {code}:\n{client.tail()}"
        wait("the run to be finished", lambda: watch.everything()["run"]["status"] == "finished", 120, watch.explain)
        # The models follow the run's last event (uploads have their own queue).
        wait(
            "the final model to be uploaded",
            lambda: watch.everything()["final_model"]["npz"] and watch.rounds[max(watch.rounds)]["downloads"]["npz"],
            120,
            watch.explain,
        )
        _check_history(watch, rounds)
        final = watch.doc["final_model"]
        last_downloads = [watch.rounds[k]["downloads"] for k in sorted(watch.rounds)[-3:]]
        assert final["round"] == 0 and final["npz"], (
            f"final model {final}; last rounds' {last_downloads}\n{watch.explain()}"
        )
        final_model = _model(site, setter, final["npz"])
        last_record = watch.rounds[max(watch.rounds)]
        assert last_record["round"] == rounds, last_record
        last_model = _model(site, setter, last_record["downloads"]["npz"])
        np.testing.assert_array_equal(final_model, last_model, err_msg="the final model is not the last checkpoint")
        counted = _rounds_with_results(watch)
        # Flower's FedAvg scales each reply by its share before summing, so the count drifts
        # by float32 rounding (about 0.003 over 450 rounds); a round lost or counted twice is 1.
        assert np.all(np.abs(final_model - counted) < 0.25), (
            f"the model counts {final_model.tolist()} rounds; {counted} of the run's {rounds} had results"
        )
    finally:
        for client in clients:
            if client.proc is not None and client.proc.poll() is None:
                subprocess.run(["docker", "rm", "-f", client.name], capture_output=True)
                client.proc.wait(timeout=60)
        for key, value in times.items():
            print(f"[chaos] {key}: {value:.1f}" + ("" if "lost" in key or "rounds" in key else " s"))

    return problem_id


def _kill_a_platform_service(
    stack: Stack, service: str, coordinator: Any, watch: Watch, times: dict[str, float]
) -> None:
    """`docker kill` the platform's `service`: rounds go on, the watchdog starts it again, the website answers."""
    watch.room_for_a_fault(f"kill the {service}")
    container = stack.containers()[service]
    started = _started_at(container)
    last = watch.last_round()
    logged = _coordinator_round(coordinator)
    killed = time.monotonic()
    container.kill()
    # Seen in the coordinator's own output: the website may be the part that is down.
    wait(
        f"rounds to go on while the {service} is down",
        lambda: _coordinator_round(coordinator) >= logged + GOES_ON,
        120,
        lambda: coordinator.logs(tail=30).decode(errors="replace"),
        0.3,
    )
    wait(
        f"the watchdog to start the {service} again",
        lambda: _running(container) and _started_at(container) != started,
        90,
        stack.logs,
        0.5,
    )
    times[f"{service} kill: running again"] = time.monotonic() - killed
    # Health is not waited for here (a check runs every 15-30 s; tests/docker/
    # test_compose_platform.py measures it): the website answering is what counts.
    wait(f"the website to answer after the {service} kill", lambda: _answers(stack), 120, stack.logs, 0.5)
    times[f"{service} kill: the website answers"] = time.monotonic() - killed
    watch.rounds_after(last, GOES_ON, 120)
    times[f"{service} kill: rounds done meanwhile, all on the website"] = float(watch.last_round() - last)


def _unless_restarting(call: Callable[[], Any]) -> Any:
    """`call()`, or None while the website does not answer.

    The web container is killed on purpose here, and on a loaded machine the watchdog
    restarts one whose health check timed out: a poll meanwhile finds no one, as a
    browser would, and the next poll tries again. What was lost is checked at the end.
    """
    import requests

    try:
        return call()
    except requests.ConnectionError:
        return None


def _answers(site: Site) -> bool:
    import requests

    try:
        return requests.get(site.url + "/healthz", timeout=5).status_code == 200
    except requests.RequestException:
        return False


def _after(start: datetime, iso: str) -> float:
    """Seconds from `start` to the ISO time `iso`, to a tenth."""
    return round((datetime.fromisoformat(iso) - start).total_seconds(), 1)


def _last_trained(watch: Watch, site: str) -> int:
    """The last round `site` contributed to."""
    watch.poll()
    return max((int(p["last_round"] or 0) for p in watch.doc["participants"] if p.get("site") == site), default=0)


def _coordinator_round(container: Any) -> int:
    """The last round the coordinator's own output says ended (seen without the website)."""
    text = container.logs(tail=200).decode(errors="replace")
    return max((int(m.group(1)) for m in re.finditer(r"^round (\d+)/", text, re.M)), default=0)


def _check_history(watch: Watch, rounds: int) -> None:
    """No round twice within an attempt, the attempts following on, every round of the run present."""
    by_attempt: dict[int, list[int]] = {}
    for record in watch.doc["rounds"]:
        by_attempt.setdefault(int(record["attempt"]), []).append(int(record["round"]))
    for attempt, numbers in by_attempt.items():
        assert len(numbers) == len(set(numbers)), f"attempt {attempt} recorded a round twice: {sorted(numbers)}"
    assert sorted(by_attempt) == [1, 2], f"attempts {sorted(by_attempt)}: one coordinator kill makes two"
    one, two = sorted(by_attempt[1]), sorted(by_attempt[2])
    assert one == list(range(1, one[-1] + 1)), f"attempt 1 has gaps: {_gaps(one)}"
    assert two == list(range(two[0], rounds + 1)), f"attempt 2 has gaps: {_gaps(two)}"
    assert two[0] <= one[-1] + 1, f"rounds {one[-1] + 1}..{two[0] - 1} are in no attempt"


def _gaps(numbers: list[int]) -> list[int]:
    return sorted(set(range(numbers[0], numbers[-1] + 1)) - set(numbers))


def _rounds_with_results(watch: Watch) -> int:
    """Rounds of the run's one history (attempt 1 up to where attempt 2 resumed, then attempt 2) with results."""
    resumed_at = min(n for a, n in watch.rounds if a == 2)
    history = [r for (a, n), r in watch.rounds.items() if (a == 1 and n < resumed_at) or a == 2]
    return sum(1 for r in history if not r["no_results"])
