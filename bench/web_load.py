"""Latency of the website and its API under concurrent users.

    python bench/web_load.py --url http://127.0.0.1:8000 --user demo-setter --password ... \
        [--users 50] [--seconds 30] [--think 2] [--path /problems/1/ --path /api/v1/problems/1/dashboard/ ...]

Each simulated user logs in once (a session for pages, a token for the API),
then requests the given paths round-robin for `--seconds`, pausing `--think`
seconds (uniformly 0.5x to 1.5x) between requests: 2 s is what an open
dashboard does (it polls every 2 s). `--think 0` sends back to back, a stress
test rather than people browsing.
With no `--path`, it browses what a problem setter watching a live federation
opens: the problem list, the first problem's page and dashboard, and the
dashboard, rounds and problem-list API. Prints request count, errors and
p50/p95/p99/max latency per path and overall. Start the platform first
(`./scripts/start.sh`). `--train-rounds N` first starts a new run of N rounds
of the first problem (through the API, as its setter) and reports how many
rounds it trained during the measurement, so the figure is taken while a
federation runs.
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import re
import statistics
import threading
import time
from collections import defaultdict
from http.cookies import SimpleCookie
from urllib.parse import urlencode, urlsplit


class Session:
    """One user's keep-alive connection with its cookies and API token."""

    def __init__(self, base: str) -> None:
        parts = urlsplit(base)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
        self.cookies: dict[str, str] = {}
        self.token = ""

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None):
        hdrs = dict(headers or {})
        if self.token and path.startswith("/api/"):
            # Token auth alone, as API clients do (with the session cookie DRF would demand CSRF).
            hdrs["Authorization"] = f"Token {self.token}"
        elif self.cookies:
            hdrs["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        for attempt in range(2):
            try:
                self.conn.request(method, path, body=body, headers=hdrs)
                resp = self.conn.getresponse()
                data = resp.read()
                break
            except (http.client.HTTPException, OSError):
                self.conn.close()
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
                if attempt:
                    raise
        for header in resp.headers.get_all("Set-Cookie") or []:
            cookie = SimpleCookie(header)
            for key, morsel in cookie.items():
                self.cookies[key] = morsel.value
        return resp.status, data

    def login(self, user: str, password: str) -> None:
        status, page = self.request("GET", "/accounts/login/")
        match = re.search(rb'name="csrfmiddlewaretoken" value="([^"]+)"', page)
        if status != 200 or not match:
            raise SystemExit(f"GET /accounts/login/ answered {status} without a CSRF token")
        form = urlencode({"username": user, "password": password, "csrfmiddlewaretoken": match.group(1).decode()})
        status, _ = self.request(
            "POST",
            "/accounts/login/",
            form.encode(),
            {"Content-Type": "application/x-www-form-urlencoded", "Referer": f"http://{self.host}:{self.port}/"},
        )
        if status not in (302, 303):
            raise SystemExit(f"log-in as {user} failed (HTTP {status}); check --user/--password")
        body = json.dumps({"username": user, "password": password}).encode()
        status, data = self.request("POST", "/api/v1/auth/token/", body, {"Content-Type": "application/json"})
        if status == 200:
            self.token = json.loads(data)["token"]


def default_paths(session: Session) -> list[str]:
    status, data = session.request("GET", "/api/v1/problems/")
    if status != 200:
        raise SystemExit(f"GET /api/v1/problems/ answered {status}")
    doc = json.loads(data)
    problems = doc["results"] if isinstance(doc, dict) else doc
    if not problems:
        raise SystemExit("no problem to browse; start the demo first (./scripts/start.sh)")
    pid = problems[0]["id"]
    return [
        "/problems/",
        f"/problems/{pid}/",
        f"/monitoring/problems/{pid}/",
        f"/api/v1/problems/{pid}/dashboard/",
        "/api/v1/problems/",
        f"/api/v1/problems/{pid}/runs/",
    ]


def _json(session: Session, method: str, path: str, doc: object | None = None) -> tuple[int, object]:
    body = json.dumps(doc).encode() if doc is not None else None
    status, data = session.request(method, path, body, {"Content-Type": "application/json"})
    try:
        return status, json.loads(data) if data else None
    except json.JSONDecodeError:
        return status, data.decode(errors="replace")


def _latest_run(session: Session, pid: int) -> dict[str, object]:
    status, runs = _json(session, "GET", f"/api/v1/problems/{pid}/runs/")
    if status != 200 or not isinstance(runs, list) or not runs:
        raise SystemExit(f"GET /api/v1/problems/{pid}/runs/ answered {status}: {runs}")
    return max(runs, key=lambda r: int(r["number"]))


def start_training(session: Session, pid: int, rounds: int, wait: float = 180.0) -> dict[str, object]:
    """Start a new run of `rounds` rounds and wait until it has finished its first round."""
    status, problem = _json(session, "GET", f"/api/v1/problems/{pid}/")
    if status != 200 or not isinstance(problem, dict):
        raise SystemExit(f"GET /api/v1/problems/{pid}/ answered {status}")
    config = {**problem["run_config"], "rounds": rounds}
    status, answer = _json(session, "PATCH", f"/api/v1/problems/{pid}/", {"run_config": config})
    if status != 200:
        raise SystemExit(f"cannot set {rounds} rounds (HTTP {status}): {answer}")
    status, answer = _json(session, "POST", f"/api/v1/problems/{pid}/publish/")
    if status not in (200, 201):
        raise SystemExit(f"cannot start a run (HTTP {status}): {answer}; stop the active run first")
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        run = _latest_run(session, pid)
        if run["status"] in ("failed", "stopped", "finished"):
            raise SystemExit(f"run {run['number']} {run['status']}: {run['status_detail']}")
        if run["status"] == "running" and int(run["current_round"]) >= 1:
            return run
        time.sleep(1.0)
    raise SystemExit(f"the new run did not finish a round within {wait:.0f} s; are the clients running?")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default="http://127.0.0.1:8000")
    ap.add_argument("--user", default="demo-setter")
    ap.add_argument("--password", required=True)
    ap.add_argument("--users", type=int, default=50)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--think", type=float, default=2.0, help="mean seconds between a user's requests")
    ap.add_argument("--path", action="append", default=[])
    ap.add_argument("--train-rounds", type=int, default=0, help="start a run of this many rounds first")
    args = ap.parse_args()

    first = Session(args.url)
    first.login(args.user, args.password)
    paths = args.path or default_paths(first)
    training = None
    if args.train_rounds:
        pid = int(re.search(r"/problems/(\d+)/", " ".join(paths)).group(1))  # type: ignore[union-attr]
        training = (pid, start_training(first, pid, args.train_rounds))
    sessions = [first] + [Session(args.url) for _ in range(args.users - 1)]
    for s in sessions[1:]:
        s.login(args.user, args.password)

    latencies: dict[str, list[float]] = defaultdict(list)
    errors: dict[str, int] = defaultdict(int)
    lock = threading.Lock()
    start_gate = threading.Barrier(len(sessions))

    def browse(index: int, session: Session) -> None:
        rng = random.Random(index)
        start_gate.wait()
        end = time.monotonic() + args.seconds
        # Users arrive spread over one think time, not all in the same millisecond.
        time.sleep(rng.uniform(0, args.think))
        i = index
        while time.monotonic() < end:
            path = paths[i % len(paths)]
            i += 1
            t0 = time.perf_counter()
            try:
                status, _ = session.request("GET", path)
            except (OSError, http.client.HTTPException):
                status = 0
            dt = time.perf_counter() - t0
            with lock:
                latencies[path].append(dt)
                if status != 200:
                    errors[path] += 1
            if args.think:
                time.sleep(rng.uniform(0.5, 1.5) * args.think)

    threads = [threading.Thread(target=browse, args=(i, s)) for i, s in enumerate(sessions)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    def row(name: str, values: list[float], errs: int) -> str:
        q = statistics.quantiles(values, n=100) if len(values) > 1 else values * 99
        return (
            f"{name:<45} {len(values):>7} {errs:>6} {q[49] * 1000:>8.1f} {q[94] * 1000:>8.1f}"
            f" {q[98] * 1000:>8.1f} {max(values) * 1000:>8.1f}"
        )

    print(f"{args.users} users, {args.seconds:.0f} s, think {args.think:g} s, {args.url}")
    print(f"{'path':<45} {'requests':>7} {'errors':>6} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    everything: list[float] = []
    for path in paths:
        everything += latencies[path]
        print(row(path, latencies[path], errors[path]))
    print(row("all", everything, sum(errors.values())))
    print(f"throughput {len(everything) / args.seconds:.0f} requests/s")
    if training is not None:
        pid, before = training
        after = _latest_run(first, pid)
        print(
            f"training meanwhile: run {after['number']} went from round {before['current_round']} "
            f"to {after['current_round']} of {after['total_rounds']} ({after['status']})"
        )


if __name__ == "__main__":
    main()
