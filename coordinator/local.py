"""Run a whole federation on this machine: one coordinator, N selectors, one client per data folder.

    python -m coordinator.local --app apps/tabular --data-dir demo/breast_cancer/clients --selectors 2 --rounds 5

Every service is a separate process talking gRPC over loopback, exactly as they
would across hosts: TLS on both links (clients to selectors, selectors to the
coordinator) with a throwaway CA made for the run, and a selector token; with
`--insecure`, plaintext on both. Round lines go to the terminal; each process's
log goes to `<out>/logs/`. Exits with the coordinator's exit code (non-zero if
any client failed its data check or crashed before the run finished).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

from client_image import exits
from fedota_common.priority import start_service

REPO = Path(__file__).resolve().parent.parent


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m coordinator.local", description=__doc__.split("\n\n")[0])
    p.add_argument("--app", required=True, help="Flower app folder or .fab file")
    p.add_argument("--data-dir", required=True, type=Path, help="folder with one sub-folder per data holder")
    p.add_argument("--selectors", type=int, default=2, help="number of selectors (default 2)")
    p.add_argument("--rounds", type=int, default=None, help="sets the run config's num-server-rounds")
    p.add_argument("--strategy", default=None, help="sets the run config's strategy (built-in apps)")
    p.add_argument("--run-config", default="", help="more overrides: JSON or 'key=value key2=value2'")
    p.add_argument(
        "--contract",
        type=Path,
        default=None,
        help="data contract JSON (default: contract.json beside or in --data-dir)",
    )
    p.add_argument("--out", type=Path, default=None, help="run folder (default: runs/<time>)")
    p.add_argument("--round-timeout", type=float, default=120.0)
    p.add_argument("--aggregation", default="auto", choices=["auto", "weighted-mean", "individual"])
    p.add_argument("--overselect", type=float, default=1.3)
    p.add_argument(
        "--reply-policy",
        default="auto",
        choices=["auto", "flower", "strict"],
        help="flower: the ServerApp gets every reply Flower would deliver; strict: replies unlike the model, "
        "not finite or with a bad weight are rejected; auto (default): strict for the built-in apps, flower otherwise",
    )
    p.add_argument("--clients", type=int, default=0, help="only start the first N data folders (0 = all)")
    p.add_argument(
        "--wait-timeout",
        type=float,
        default=120.0,
        help="seconds to wait for every client to check in before starting with those there (default 120)",
    )
    p.add_argument(
        "--client-args",
        action="append",
        default=[],
        metavar="FOLDER=ARGS",
        help="more flags for the client of one data folder, e.g. "
        "'hospital-a=--dp-epsilon 4 --dp-clipping-norm 1' (repeatable)",
    )
    p.add_argument(
        "--insecure",
        action="store_true",
        help="plaintext gRPC on every link, no selector token "
        "(default: TLS between clients and selectors and between selectors and the coordinator, "
        "with a throwaway CA made for this run)",
    )
    return p.parse_args(argv)


class Fleet:
    """The child processes of one local federation."""

    def __init__(self, out: Path, *, niceness: int = 0) -> None:
        self.out = out
        # Lower CPU priority for every process (and its session's scheduler group), as the
        # platform's process backend starts services (FEDOTA_SERVICE_NICE).
        self.niceness = niceness
        self.logs = out / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.env = dict(os.environ)
        self.env["PYTHONPATH"] = os.pathsep.join([str(REPO), self.env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        self.env.setdefault("FLWR_TELEMETRY_ENABLED", "0")
        self.env.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")

    def start(
        self, name: str, module: str, args: list[str], *, stdout_to_terminal: bool = False
    ) -> subprocess.Popen[bytes]:
        log = (self.logs / f"{name}.log").open("ab")
        cmd = [sys.executable, "-m", module, *args]
        (self.logs / f"{name}.cmd").write_text(shlex.join(cmd) + "\n")
        proc = start_service(
            cmd, self.niceness, stdout=None if stdout_to_terminal else log, stderr=log, env=self.env, cwd=REPO
        )
        self.procs[name] = proc
        # Lets an operator (or a failure test) find and signal one participant.
        (self.out / "pids.json").write_text(json.dumps({n: p.pid for n, p in self.procs.items()}))
        return proc

    def stop_all(self, grace: float = 5.0) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        end = time.monotonic() + grace
        for proc in self.procs.values():
            try:
                proc.wait(timeout=max(0.1, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _plain_errors(log: Path) -> str:
    """The human-readable `error:` lines a service printed before it exited."""
    if not log.exists():
        return ""
    lines = [
        line
        for line in log.read_text(errors="replace").splitlines()
        if line.startswith(("error:", "invalid settings", "  "))
    ]
    return "\n".join(lines[-10:])


def _wait_file(path: Path, proc: subprocess.Popen[bytes], what: str, timeout: float = 60.0) -> dict[str, object]:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if path.exists():
            try:
                return dict(json.loads(path.read_text()))
            except json.JSONDecodeError:
                pass
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode} before it was ready")
        time.sleep(0.05)
    raise RuntimeError(f"{what} was not ready within {timeout:.0f} s")


def start_selectors(
    fleet: Fleet, out: Path, coordinator: str, count: int, extra: list[str]
) -> list[tuple[str, subprocess.Popen[bytes]]]:
    """Start `count` selectors of the coordinator at `coordinator` on free ports; (address, process) once listening."""
    started = []
    for i in range(count):
        name = f"selector-{i + 1}"
        state = out / "selectors" / f"{name}.json"
        proc = fleet.start(
            name,
            "selector",
            ["--coordinator", coordinator, "--listen", "127.0.0.1:0", "--selector-id", name, "--state-file", str(state)]
            + extra,
        )
        started.append((str(_wait_file(state, proc, name)["address"]), proc))
    return started


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    data_dir = args.data_dir.resolve()
    if not data_dir.is_dir():
        print(f"error: --data-dir {data_dir} is not a folder", file=sys.stderr)
        return 2
    holders = sorted(p for p in data_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    if args.clients:
        holders = holders[: args.clients]
    if not holders:
        print(f"error: {data_dir} has no sub-folders; expected one folder per data holder", file=sys.stderr)
        return 2
    if args.selectors < 1:
        print("error: --selectors must be at least 1", file=sys.stderr)
        return 2
    contract = args.contract
    if contract is None:
        for candidate in (data_dir / "contract.json", data_dir.parent / "contract.json"):
            if candidate.is_file():
                contract = candidate
                break
    overrides: dict[str, object] = {}
    if args.run_config:
        from fedota_common.settings import run_config

        overrides.update(run_config(args.run_config))
    if args.rounds is not None:
        overrides["num-server-rounds"] = args.rounds
    if args.strategy:
        overrides["strategy"] = args.strategy
    out = (args.out or REPO / "runs" / time.strftime("%Y%m%d-%H%M%S")).resolve()
    out.mkdir(parents=True, exist_ok=True)

    def interrupted(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    # SIGTERM (a test's or a supervisor's stop) stops every process as Ctrl-C does: the
    # default would end this launcher alone and leave the federation running.
    signal.signal(signal.SIGTERM, interrupted)
    fleet = Fleet(out)
    print(
        f"federation: app {args.app}, {len(holders)} data holders, {args.selectors} selectors; logs in {fleet.logs}",
        flush=True,
    )
    tls_client_args: list[str] = ["--insecure"]
    tls_coordinator_args: list[str] = []
    tls_selector_args: list[str] = []
    if args.insecure:
        fleet.env["FEDOTA_INSECURE"] = "1"
    else:
        # Like the platform: a CA for this federation, certificates for the selectors' and the
        # coordinator's host, and a token the coordinator asks of its selectors (in the
        # environment, not on command lines other users can read).
        from fedota_common.pki import issue_server_cert, make_ca

        ca_cert, ca_key = make_ca("fedota-local")
        tls = out / "tls"
        tls.mkdir(exist_ok=True)
        (tls / "ca.pem").write_text(ca_cert)
        for service in ("selector", "coordinator"):
            cert, key = issue_server_cert(ca_cert, ca_key, ["127.0.0.1", "localhost"])
            (tls / f"{service}.pem").write_text(cert)
            (tls / f"{service}.key").touch(mode=0o600)
            (tls / f"{service}.key").write_text(key)
        fleet.env["FEDOTA_SELECTOR_TOKEN"] = secrets.token_urlsafe(24)
        tls_client_args = ["--ca-cert", str(tls / "ca.pem")]
        tls_coordinator_args = ["--tls-cert", str(tls / "coordinator.pem"), "--tls-key", str(tls / "coordinator.key")]
        tls_selector_args = [
            "--tls-cert",
            str(tls / "selector.pem"),
            "--tls-key",
            str(tls / "selector.key"),
            "--coordinator-ca",
            str(tls / "ca.pem"),
        ]
    code = 1
    try:
        coord = fleet.start(
            "coordinator",
            "coordinator",
            [
                "--app",
                str(Path(args.app).resolve()),
                "--state-dir",
                str(out / "coordinator"),
                "--listen",
                "127.0.0.1:0",
                "--run-config",
                json.dumps(overrides),
                "--round-timeout",
                str(args.round_timeout),
                "--aggregation",
                args.aggregation,
                "--overselect",
                str(args.overselect),
                "--reply-policy",
                args.reply_policy,
                "--wait-for-nodes",
                str(len(holders)),
                "--wait-timeout",
                str(args.wait_timeout),
                *tls_coordinator_args,
            ],
            stdout_to_terminal=True,
        )
        info = _wait_file(out / "coordinator" / "coordinator.json", coord, "the coordinator")
        policy = str(info.get("reply_policy") or "flower")
        # The coordinator's policy decides; a strict one is applied at the selectors too,
        # so refused replies never cross the second hop.
        started = start_selectors(
            fleet, out, str(info["address"]), args.selectors, ["--reply-policy", policy, *tls_selector_args]
        )
        selector_addrs = [address for address, _proc in started]
        extra: dict[str, list[str]] = {}
        for item in args.client_args:
            name, sep, flags = item.partition("=")
            if not sep or name not in {f.name for f in holders}:
                raise RuntimeError(
                    f"--client-args {item!r}: expected FOLDER=FLAGS with FOLDER one of "
                    f"{', '.join(f.name for f in holders)}"
                )
            extra.setdefault(name, []).extend(shlex.split(flags))
        clients = []
        for i, folder in enumerate(holders):
            cargs = [
                "--selector",
                selector_addrs[i % len(selector_addrs)],
                "--data-path",
                str(folder),
                "--partition-id",
                str(i),
                "--num-partitions",
                str(len(holders)),
                "--cache-dir",
                str(out / "clients" / folder.name),
                "--name",
                folder.name,
                "--fab-sha256",
                str(info["fab_sha256"]),
                *tls_client_args,
            ]
            if contract is not None:
                cargs += ["--contract", str(contract)]
            cargs += extra.get(folder.name, [])
            clients.append((folder.name, fleet.start(f"client-{folder.name}", "client_image", cargs)))
        # Wait for the coordinator; stop early if every client has given up.
        while coord.poll() is None:
            # Clients exit 0 when told the run is over (RUN_FAILED when it failed); only other codes mean trouble.
            if all(p.poll() not in (None, exits.OK, exits.RUN_FAILED) for _, p in clients):
                failed = [f"{n} (exit {p.returncode})" for n, p in clients if p.returncode]
                print(
                    "error: every client has stopped before the run finished"
                    + (f"; failed: {', '.join(failed)}" if failed else "")
                    + f". See {fleet.logs}",
                    file=sys.stderr,
                )
                return 1
            time.sleep(0.2)
        code = coord.returncode
        if code:
            detail = _plain_errors(fleet.logs / "coordinator.log")
            print(
                f"error: the coordinator exited with code {code}" + (f":\n{detail}" if detail else ""),
                file=sys.stderr,
            )
        end = time.monotonic() + 15
        for _name, proc in clients:
            try:
                proc.wait(timeout=max(0.1, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        bad = [f"{n} (exit {p.returncode})" for n, p in clients if p.returncode not in (0, None)]
        if bad:
            print(f"warning: clients that failed: {', '.join(bad)}; see {fleet.logs}", file=sys.stderr)
        print(f"run folder: {out}", flush=True)
        return code
    except KeyboardInterrupt:
        print("interrupted; stopping every process", file=sys.stderr)
        return 130
    except RuntimeError as exc:
        print(f"error: {exc}. See {fleet.logs}", file=sys.stderr)
        for name in fleet.procs:
            detail = _plain_errors(fleet.logs / f"{name}.log")
            if detail:
                print(f"{name}:\n{detail}", file=sys.stderr)
        return 1
    finally:
        fleet.stop_all()


if __name__ == "__main__":
    sys.exit(main())
