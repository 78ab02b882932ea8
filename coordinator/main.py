"""Coordinator entry point (`fedota-coordinator`, `python -m coordinator`)."""

from __future__ import annotations

import _thread
import json
import logging
import os
import shutil
import signal
import sys
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from opentelemetry import trace

from coordinator.hub import Hub
from coordinator.report import NodeInfo, Reporter, ReportHandler, Target
from coordinator.roster import RosterPoller
from coordinator.rounds import RoundTracker, SecAggWatch
from coordinator.servicer import CoordinatorServicer
from fedota_common import metrics as metrics_lib
from fedota_common import payload, tracing
from fedota_common import tls as tlsconf
from fedota_common.fab import FabError, extract, load_app
from fedota_common.grpcutil import add_health, bind_with_health, make_server
from fedota_common.metrics import CoordinatorMetrics
from fedota_common.replies import NAMES as REPLY_POLICIES
from fedota_common.replies import builtin_app_names, default_policy_name, reply_policy
from fedota_common.settings import (
    Key,
    SettingsError,
    boolean,
    fraction,
    load,
    non_negative_float,
    non_negative_int,
    positive_float,
    run_config,
    service_main,
)
from protos.coordinator.v1 import coordinator_pb2 as cpb
from protos.coordinator.v1 import coordinator_pb2_grpc

log = logging.getLogger("coordinator")

# The built-in apps (their folders' `[project] name`s decide the `auto` reply policy).
BUILTIN_APPS = Path(__file__).resolve().parent.parent / "apps"
SELECTOR_TOKEN = Key("selector-token", str, "", "the run's token selectors must present", secret=True)
KEYS = [
    Key("app", str, required=True, help="Flower app folder or .fab file"),
    Key("state-dir", Path, Path("coordinator-state"), "folder for checkpoints, final model and the app"),
    Key("listen", str, "0.0.0.0:9091", "address:port the selectors dial (port 0 picks one)"),
    tlsconf.CERT,
    tlsconf.KEY,
    tlsconf.insecure_key("serve selectors over plaintext gRPC, no token needed"),
    Key("health-listen", str, "127.0.0.1:0", "plaintext loopback address for health checks (port 0 picks one)"),
    metrics_lib.LISTEN,
    tracing.OTLP_ENDPOINT,
    tracing.TRACE_FILE,
    tracing.TRACEPARENT,
    Key("run-config", run_config, {}, "run config overrides: JSON object or 'key=value key2=value2'"),
    Key("run-id", int, 1, "run id passed to the ServerApp's Context"),
    Key("round-timeout", positive_float, 600.0, "seconds a round waits for replies at most"),
    Key("overselect", positive_float, 1.3, "ask this many times the sampled clients when spare clients exist"),
    Key(
        "min-result-fraction",
        fraction,
        0.0,
        "a round with fewer results than this share of the sampled clients is abandoned",
    ),
    Key(
        "aggregation",
        str,
        "auto",
        "partial aggregation at selectors: auto (when the ServerApp's strategy is one of Flower's weighted-mean "
        "strategies, aggregating as Flower does) | weighted-mean (every train and evaluate round) | individual (never)",
    ),
    Key("weight-key", str, "num-examples", "metric a reply is weighted by"),
    Key(
        "reply-policy",
        str,
        "auto",
        "flower: the ServerApp receives every reply Flower would deliver; strict: replies unlike the model, "
        "not finite or with a bad weight are rejected; auto: strict for a built-in app (apps/), flower otherwise",
    ),
    Key("keep-checkpoints", non_negative_int, 5, "model checkpoints kept (0 = all)"),
    Key(
        "resume",
        boolean,
        True,
        "a restart on the same state folder resumes the run after its last checkpoint "
        "(Flower strategies' start(); see coordinator/resume.py); off: every attempt starts at round 1",
    ),
    SELECTOR_TOKEN,
    Key("wait-for-nodes", non_negative_int, 0, "start the ServerApp once this many clients have checked in"),
    Key("wait-timeout", positive_float, 600.0, "seconds to wait for --wait-for-nodes before starting anyway"),
    Key(
        "max-wait-for-clients",
        non_negative_float,
        0.0,
        "seconds a Flower strategy may wait for its minimum of connected clients before the run fails "
        "(0: the round timeout)",
    ),
    Key("max-workers", int, 64, "gRPC worker threads"),
    Key("report-url", str, "", "webserver internal API base for this run, ending in /runs/<id>/ (empty: no reports)"),
    Key("report-token", str, "", "the run's service token the webserver expects with each report", secret=True),
    Key("log-level", str, "INFO", "log level"),
]


@dataclass(frozen=True)
class Settings:
    app: str
    state_dir: Path
    listen: str
    tls_cert: str
    tls_key: str
    insecure: bool
    health_listen: str
    metrics_listen: str
    otlp_endpoint: str
    trace_file: str
    traceparent: str
    run_config: dict[str, Any]
    run_id: int
    round_timeout: float
    overselect: float
    min_result_fraction: float
    aggregation: str
    weight_key: str
    reply_policy: str
    keep_checkpoints: int
    resume: bool
    selector_token: str
    wait_for_nodes: int
    wait_timeout: float
    max_wait_for_clients: float
    max_workers: int
    report_url: str
    report_token: str
    log_level: str

    @classmethod
    def from_env(cls, environ: Mapping[str, str], argv: Sequence[str] | None = None) -> Settings:
        values = load("fedota-coordinator", "Run a problem's Flower ServerApp over the selectors.", KEYS, argv, environ)
        values["otlp_endpoint"] = tracing.otlp_endpoint(values["otlp_endpoint"], environ)
        problems: list[str | None] = []
        if values["aggregation"] not in ("auto", "weighted-mean", "individual"):
            problems.append(f"FEDOTA_AGGREGATION={values['aggregation']!r} must be auto, weighted-mean or individual")
        values["reply_policy"] = values["reply_policy"].strip().lower()
        if values["reply_policy"] not in ("auto", *REPLY_POLICIES):
            problems.append(f"FEDOTA_REPLY_POLICY={values['reply_policy']!r} must be auto, flower or strict")
        if values["report_url"] and not values["report_token"]:
            problems.append("FEDOTA_REPORT_TOKEN is required when FEDOTA_REPORT_URL is set")
        elif values["report_url"]:
            try:
                Target(values["report_url"], values["report_token"])
            except ValueError as exc:
                problems.append(f"FEDOTA_REPORT_URL: {exc}")
        problems += [
            tlsconf.unless_insecure(
                values,
                [tlsconf.CERT, tlsconf.KEY],
                "the coordinator serves selectors over TLS (the website issues its certificate per run)",
            ),
            tlsconf.unless_insecure(
                values, [SELECTOR_TOKEN], "the coordinator admits only selectors with the run's token"
            ),
        ]
        tlsconf.check(problems)
        return cls(**values)

    def tls(self) -> tuple[bytes, bytes] | None:
        """(certificate PEM, key PEM), read from files unless given as PEM text; None when insecure."""
        return tlsconf.server_pair(self.tls_cert, self.tls_key, self.insecure)


def _flower_env() -> None:
    # Flower must not phone home from a hospital's network.
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")


# How long a run's end may wait for the selectors to take the news before the coordinator
# exits (they pass it on to their clients at once); the website's stop grace is 10 s.
TELL_SELECTORS_TIMEOUT = 3.0
# How long a coordinator whose run ended keeps trying to deliver its last reports (the
# outcome, the last rounds, the final model) to a webserver that took its earlier ones and
# now does not answer: one restarting, or busy ("database is locked"), is back within it.
# One that never took any report is misconfigured (said at the first failure): 10 s.
FINAL_REPORTS_PATIENCE = 300.0


def _stop_on_signal(hub: Hub, server: grpc.Server) -> None:
    """On SIGTERM or SIGINT (the website stopping the run), tell the selectors the run was
    stopped, so clients exit instead of waiting for it, then exit with 128 + the signal."""
    if threading.current_thread() is not threading.main_thread():
        return

    def leave(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    def tell(signum: int) -> None:
        name = signal.Signals(signum).name
        # Nothing to tell if the run already ended (e.g. a stop during the final upload).
        if hub.finish(f"the coordinator was stopped ({name})", "stopped"):
            print(f"run stopped ({name}); telling the selectors", flush=True)
            log.warning("run stopped", extra={"signal": name})
            hub.wait_told(TELL_SELECTORS_TIMEOUT)
        server.stop(grace=1.0).wait()
        # Back to the main thread, which ends the process where it is (`leave`).
        _thread.interrupt_main(signal.Signals(signum))

    def stop(signum: int, _frame: object) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, leave)  # a second signal ends it at once
        # Not here: the handler runs in the main thread between two of its instructions,
        # maybe inside `with hub.cond` (pushing a round's instructions), and the hub's lock
        # is not re-entrant: taking it here hung the coordinator for good.
        threading.Thread(target=tell, args=(signum,), name="stop", daemon=True).start()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, stop)


def _start_reporter(settings: Settings, hub: Hub, state_dir: Path) -> Reporter | None:
    """Start reporting to the webserver when a report URL is configured."""
    if not settings.report_url:
        return None

    def nodes() -> list[NodeInfo]:
        with hub.cond:
            return [NodeInfo(n.node_id, n.selector_id, n.participant, n.display_name) for n in hub.nodes.values()]

    def selectors() -> list[str]:
        with hub.cond:
            return list(hub.selectors)

    spool = state_dir / "report-spool"
    # Links pinned by an earlier process that ended before sending them; the checkpoints
    # themselves stay in checkpoints/.
    shutil.rmtree(spool, ignore_errors=True)
    reporter = Reporter(
        Target(settings.report_url, settings.report_token),
        nodes=nodes,
        selectors=selectors,
        waiting=lambda: hub.waiting_for,
        spool_dir=spool,
    )
    reporter.start()
    logging.getLogger().addHandler(ReportHandler(reporter))
    return reporter


def run(settings: Settings) -> int:
    """Serve the selectors and run the ServerApp to completion; returns the exit code.

    All of it is one span (a child of the website's spawn when FEDOTA_TRACEPARENT names it),
    each round a span under it (coordinator/rounds.py).
    """
    tracing.configure("fedota-coordinator", endpoint=settings.otlp_endpoint, trace_file=settings.trace_file)
    with tracing.tracer().start_as_current_span(
        "coordinator.run",
        context=tracing.from_traceparent(settings.traceparent),
        kind=trace.SpanKind.SERVER,
        attributes={"fedota.run_id": settings.run_id},
    ) as span:
        code = _run(settings, span)
        span.set_attribute("fedota.exit_code", code)
        if code:
            span.set_status(trace.StatusCode.ERROR, f"exit code {code}")
        return code


def _run(settings: Settings, span: tracing.Span) -> int:
    _flower_env()
    try:
        server_tls = settings.tls()
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    # Over TLS every record is authenticated: contents go without a hash of their own.
    payload.send_digests(server_tls is None)
    if server_tls is None:
        tlsconf.warn_insecure(log, "selectors connect over plaintext gRPC and need no token")
    state_dir = settings.state_dir.resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    try:
        app = load_app(settings.app)
        config = app.fused_config(settings.run_config)
        app_dir = extract(app, state_dir / "apps")
    except FabError as exc:
        log.error("cannot load the app", extra={"error": str(exc)})
        print(f"error: {exc}", file=sys.stderr)
        if settings.report_url:
            # The problem setter should read why on the dashboard, not only in a container log.
            early = Reporter(Target(settings.report_url, settings.report_token))
            early.start()
            early.run_finished(ok=False, detail=f"cannot load the app: {exc}")
            early.close(timeout=10.0)
        return 2
    builtin = builtin_app_names(BUILTIN_APPS)
    policy_name = settings.reply_policy
    if policy_name == "auto":
        policy_name = default_policy_name(app.name, builtin)

    hub = Hub(reply_policy(policy_name))
    metrics = CoordinatorMetrics()
    hub.on_reject = metrics.reject
    metrics.watch(lambda: len(hub.nodes), lambda: len(hub.selectors))
    server = make_server(settings.max_workers)
    coordinator_pb2_grpc.add_CoordinatorServicer_to_server(
        CoordinatorServicer(
            hub, app, settings.run_id, json.dumps(settings.run_config), settings.selector_token, metrics=metrics
        ),
        server,
    )
    add_health(server, "protos.coordinator.v1.Coordinator")
    bound = bind_with_health(server, settings.listen, settings.health_listen, server_tls)
    if bound is None:
        return 2
    address, health_address = bound
    metrics_server = metrics_lib.start(settings.metrics_listen, metrics.registry)
    metrics_address = metrics_server.address if metrics_server else ""
    server.start()
    _stop_on_signal(hub, server)
    (state_dir / "coordinator.json").write_text(
        json.dumps(
            {
                "address": address,
                "health": health_address,
                "metrics": metrics_address,
                "tls": server_tls is not None,
                "pid": os.getpid(),
                "fab_sha256": app.sha256,
                "reply_policy": policy_name,
            }
        )
    )
    log.info(
        "coordinator listening",
        extra={
            "address": address,
            "health": health_address,
            "metrics": metrics_address,
            "tls": server_tls is not None,
            "app": app.name,
            "fab_sha256": app.sha256,
            "reply_policy": policy_name,
        },
    )
    print(f"reply policy: {policy_name}", flush=True)
    # Imported once the selectors can connect, not before: the grid and the strategies'
    # checkpoint hooks load Flower's SuperLink and ServerApp modules (FastAPI, SQLAlchemy;
    # about 1 s of CPU, half the coordinator's start-up), which the servicer does not need.
    # Alembic announces each of its plugins at import, at INFO: imported before the logging
    # was set up, as it used to be, those lines went nowhere, and they say nothing about the run.
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
    from flwr.app import Context, RecordDict
    from flwr.common.constant import SUPERLINK_NODE_ID
    from flwr.serverapp.server_app import LoadServerAppError, ServerApp
    from flwr.supercore.object_ref import load_app as load_object
    from flwr.supercore.run import Run
    from flwr.supercore.task_identity import TaskIdentity

    from coordinator.grid import GridPolicy, SelectorTierGrid, choose_aggregation
    from coordinator.resume import begin_attempt, identity, running

    aggregation = choose_aggregation(settings.aggregation, config, builtin=app.name in builtin)
    log.info("aggregation chosen", extra={"aggregation": aggregation})

    rounds = config.get("num-server-rounds")
    total_rounds = rounds if isinstance(rounds, int) else None
    reporter = _start_reporter(settings, hub, state_dir)

    def site_privacy(relayed: cpb.SitePrivacy) -> None:
        report = relayed.report
        log.info(
            "site privacy report (self-reported)",
            extra={
                "node_id": relayed.node_id,
                "participant": relayed.participant,
                "site": relayed.display_name,
                "state": report.state,
                "epsilon": round(report.epsilon, 4),
                "releases": report.releases,
                "reason": report.reason,
            },
        )
        if reporter is not None:
            reporter.site_privacy(relayed)

    hub.on_privacy = site_privacy
    if settings.report_url:
        poller = RosterPoller(
            Target(settings.report_url, settings.report_token), hub, cache=state_dir / "participants.json"
        )
        hub.on_roster_request = poller.poll_soon
        poller.start()
    else:
        log.warning("no website (--report-url is empty): selectors will admit any client; local development only")
        hub.set_participants(cpb.Participants(open=True))

    def echo(line: str) -> None:
        print(line, flush=True)
        if reporter is not None:
            reporter.log_line("INFO", line, source="rounds")

    def warn(line: str) -> None:
        print(line, flush=True)
        if reporter is not None:
            reporter.log_line("WARNING", line, source="rounds")

    attempt, plan = begin_attempt(
        state_dir, identity(settings.run_id, app.sha256, settings.run_config), resume=settings.resume
    )
    if attempt > 1:
        echo(
            f"attempt {attempt} of this run"
            + (
                f": resuming after round {plan.round}"
                if plan
                else ": no checkpoint to resume from, starting at round 1"
            )
        )
    metrics.attempt.set(attempt)

    def round_finished(doc: dict[str, Any]) -> None:
        metrics.round_finished(float(doc["seconds"]))
        if reporter is not None:
            reporter.round_finished(doc)

    tracker = RoundTracker(
        state_dir,
        attempt=attempt,
        weight_key=settings.weight_key,
        total_rounds=total_rounds,
        keep_checkpoints=settings.keep_checkpoints,
        echo=echo,
        warn=warn,
        on_round=round_finished,
        on_checkpoint=reporter.checkpoint if reporter is not None else None,
        trace_parent=trace.set_span_in_context(span),
    )
    if reporter is not None:
        reporter.run_started(
            total_rounds=total_rounds, app=app.name, fab_sha256=app.sha256, reply_policy=policy_name, attempt=attempt
        )
    policy = GridPolicy(
        round_timeout=settings.round_timeout,
        overselect=settings.overselect,
        min_result_fraction=settings.min_result_fraction,
        aggregation=aggregation,
        weight_key=settings.weight_key,
        node_wait=settings.max_wait_for_clients,
    )
    grid = SelectorTierGrid(hub, policy, tracker, say=warn, trace_context=tracker.trace_context)
    logging.getLogger("flwr").addHandler(SecAggWatch(tracker))
    run_info = Run.create_empty(settings.run_id)
    run_info.fab_hash = app.sha256
    run_info.override_config = settings.run_config
    grid.set_run(run_info)
    # Flower's runtimes set the task identity before any Message is built.
    TaskIdentity.run_id = settings.run_id
    TaskIdentity.task_id = 1
    TaskIdentity.node_id = SUPERLINK_NODE_ID
    context = Context(
        run_id=settings.run_id,
        node_id=SUPERLINK_NODE_ID,
        node_config={},
        state=RecordDict(),
        run_config=config,
    )
    if settings.wait_for_nodes:
        print(f"waiting for {settings.wait_for_nodes} clients to check in", flush=True)
        if not hub.wait_for_nodes(settings.wait_for_nodes, settings.wait_timeout):
            log.warning("starting with fewer clients than asked for", extra={"nodes": len(hub.node_ids())})
    code = 0
    detail = "run finished"
    cwd = os.getcwd()
    try:
        server_app = load_object(app.serverapp, LoadServerAppError, str(app_dir))
        if not isinstance(server_app, ServerApp):
            raise LoadServerAppError(f"{app.serverapp} is not a flwr ServerApp")
        os.chdir(state_dir)
        with running(plan, echo, tracker.strategy_result), grid.bounding_client_managers():
            server_app(grid=grid, context=context)
        log.info("ServerApp finished")
    except Exception as exc:
        log.exception("ServerApp failed", extra={"error": str(exc)})
        print(f"error: the ServerApp failed: {exc}", file=sys.stderr)
        code = 1
        detail = f"the ServerApp failed: {exc}"
    finally:
        os.chdir(cwd)
    final = tracker.finish(context.state)
    failure = tracker.failure() if code == 0 else ""
    if failure:
        # The ServerApp returned, but nothing it asked for was accepted: not a finished run.
        log.error("run failed", extra={"detail": failure})
        print(f"error: the run failed: {failure}", file=sys.stderr)
        print(f"run failed: {failure}", flush=True)
        code = 1
        detail = f"the run failed: {failure}"
    if final is not None:
        print(f"final model: {final} and {final.with_suffix('.pt')}", flush=True)
    # Clients exit (or, with --follow, wait for the next run) on what they hear here.
    hub.finish(detail, "finished" if code == 0 else "failed")
    if reporter is not None:
        if final is not None:
            reporter.checkpoint(0, final, "npz")
            if final.with_suffix(".pt").exists():
                reporter.checkpoint(0, final.with_suffix(".pt"), "pt")
        reporter.run_finished(ok=code == 0, detail=detail)
        reporter.close(timeout=final_reports_deadline(reporter))
    hub.wait_told(TELL_SELECTORS_TIMEOUT)
    server.stop(grace=2.0).wait()
    return code


def final_reports_deadline(reporter: Reporter) -> float:
    """Seconds to deliver what is buffered when the run has ended: a last chance, never a hang.

    A big final model gets the time it needs at a modest 20 MB/s, and rounds that ran faster
    than their uploads a quarter of a second a file, up to 10 minutes in all; a webserver
    that took this run's reports gets FINAL_REPORTS_PATIENCE to answer again.
    """
    backlog = reporter.pending_upload_bytes() / 20e6 + 0.25 * reporter.pending_uploads()
    patience = FINAL_REPORTS_PATIENCE if reporter.delivered else 10.0
    return min(600.0, patience + backlog)


def main(argv: Sequence[str] | None = None) -> int:
    return service_main("coordinator", Settings.from_env, run, argv)


if __name__ == "__main__":
    sys.exit(main())
