"""The data holder's client (`fedota-client`, `python -m client_image`).

Order matters for trust: the data is checked against the problem's contract
before any connection is made; the app's hash is checked before any of its code
is imported; only model updates ever leave this process.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from client_image import exits, privacy
from client_image.contract import ContractSpecError, DataContractError, check_or_raise
from client_image.runner import DECLINED, WITHDRAWN, ClientError, FederationLost, Node, NodeSetup
from fedota_common import payload
from fedota_common.settings import Key, boolean, load, non_negative_int, positive_float, service_main

log = logging.getLogger("client")

EXIT_DATA = exits.DATA
EXIT_REFUSED = exits.REFUSED
EXIT_RUN_FAILED = exits.RUN_FAILED
EXIT_LOST = exits.LOST
EXIT_BUDGET = exits.BUDGET


def _finite_positive(text: str) -> float:
    value = float(text)
    if not 0 < value < float("inf"):
        raise ValueError("must be a finite number > 0")
    return value


def _probability(text: str) -> float:
    value = float(text)
    if not 0 < value < 1:
        raise ValueError("must be between 0 and 1, both excluded")
    return value


def _whole(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError("must be 1 or more")
    return value


KEYS = [
    Key(
        "join-bundle", Path, None, "join bundle JSON from the problem page (selectors, credential, FAB hash, contract)"
    ),
    Key("selector", str, "", "host:port of a selector (comma-separated for several); overrides the bundle"),
    Key("data-path", Path, Path("/data"), "folder with this site's data (mounted read-only)"),
    Key("credential", str, "", "participant credential; overrides the bundle"),
    Key("fab-sha256", str, "", "SHA-256 of the app you reviewed; overrides the bundle"),
    Key("contract", Path, None, "data contract JSON file; overrides the bundle"),
    Key(
        "partition-id",
        non_negative_int,
        None,
        "node_config partition-id passed to the ClientApp; overrides the bundle's (default 0 without one)",
    ),
    Key(
        "num-partitions",
        non_negative_int,
        None,
        "node_config num-partitions passed to the ClientApp; overrides the bundle's (default 1 without one)",
    ),
    Key(
        "node-config",
        str,
        "",
        'node_config entries as a Flower SuperNode takes them, e.g. "partition-id=0 num-partitions=3"; '
        "overrides the bundle and the two settings above",
    ),
    Key("cache-dir", Path, Path.home() / ".cache" / "fedota-client", "where the app is unpacked"),
    Key("name", str, "", "site name shown to the problem setter"),
    Key("max-join-wait", positive_float, 120.0, "seconds to keep trying to reach a selector at the start"),
    Key(
        "max-reconnect-wait",
        positive_float,
        300.0,
        f"once joined, seconds to keep looking for a selector after losing the session before giving up "
        f"(exit code {exits.LOST})",
    ),
    Key(
        "follow",
        boolean,
        False,
        "when a run ends, keep waiting for the problem's next run (and never give up looking for a selector) "
        "instead of exiting",
    ),
    Key("check-only", boolean, False, "only check the data, then exit"),
    Key("ca-cert", Path, None, "the problem's CA certificate (PEM); overrides the bundle's"),
    Key("insecure", boolean, False, "connect over plaintext gRPC, without TLS (local development only)"),
    Key(
        "dp-epsilon",
        _finite_positive,
        None,
        "this site's privacy budget: the most ε its model updates may reveal, counted over every round and run "
        "of the problem; each update is clipped and noised on this machine, and the client stops (exit code "
        f"{exits.BUDGET}) before a round would pass it",
    ),
    Key("dp-delta", _probability, None, f"the δ of the budget (default: the problem's, else {privacy.DEFAULT_DELTA})"),
    Key(
        "dp-noise-multiplier",
        _finite_positive,
        None,
        "noise standard deviation over the update's sensitivity (2 x clipping norm); default: the least that "
        "fits the run's rounds into what is left of the budget",
    ),
    Key("dp-clipping-norm", _finite_positive, None, "L2 norm each update is clipped to (default: the problem's)"),
    Key(
        "dp-rounds",
        _whole,
        None,
        "rounds to spread the rest of the budget over (default: the run config's num-server-rounds)",
    ),
    Key(
        "dp-state",
        Path,
        None,
        "folder for the privacy ledger, on your machine (default: fedota-privacy beside --data-path; "
        "in the image /state, which must be mounted)",
    ),
    Key("log-level", str, "INFO", "log level"),
]


@dataclass(frozen=True)
class Settings:
    join_bundle: Path | None
    selector: str
    data_path: Path
    credential: str
    fab_sha256: str
    contract: Path | None
    partition_id: int | None
    num_partitions: int | None
    node_config: str
    cache_dir: Path
    name: str
    max_join_wait: float
    max_reconnect_wait: float
    follow: bool
    check_only: bool
    ca_cert: Path | None
    insecure: bool
    dp_epsilon: float | None
    dp_delta: float | None
    dp_noise_multiplier: float | None
    dp_clipping_norm: float | None
    dp_rounds: int | None
    dp_state: Path | None
    log_level: str

    @classmethod
    def from_env(cls, environ: Mapping[str, str], argv: Sequence[str] | None = None) -> Settings:
        return cls(**load("fedota-client", "Join a Fedota federation with local data.", KEYS, argv, environ))


def _bundle(settings: Settings) -> dict[str, Any]:
    if settings.join_bundle is None:
        return {}
    try:
        data = json.loads(settings.join_bundle.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ClientError(f"cannot read the join bundle {settings.join_bundle}: {exc}") from exc
    if not isinstance(data, dict):
        raise ClientError(f"the join bundle {settings.join_bundle} must be a JSON object")
    return data


def _node_config(settings: Settings, bundle: dict[str, Any]) -> dict[str, Any]:
    """`context.node_config` beyond `data-path`: the bundle's, then the data holder's own flags.

    A bundle without `node_config` (issued before bundles carried it) keeps the old
    defaults, partition 0 of 1.
    """
    config: dict[str, Any] = {"partition-id": 0, "num-partitions": 1}
    given = bundle.get("node_config")
    if given is not None:
        fine = isinstance(given, dict) and all(
            isinstance(given.get(key), int) and not isinstance(given.get(key), bool) and given[key] >= low
            for key, low in (("partition-id", 0), ("num-partitions", 1))
        )
        if not fine or given["partition-id"] >= given["num-partitions"]:
            raise ClientError(
                f"the join bundle's node_config must hold partition-id (0 or more) below num-partitions, not {given!r}: "
                "download your current join bundle from the problem page"
            )
        config.update({"partition-id": given["partition-id"], "num-partitions": given["num-partitions"]})
    if settings.partition_id is not None:
        config["partition-id"] = settings.partition_id
    if settings.num_partitions is not None:
        config["num-partitions"] = settings.num_partitions
    if settings.node_config.strip():
        from flwr.common.config import parse_config_args

        try:
            config.update(parse_config_args([settings.node_config]))
        except ValueError as exc:
            raise ClientError(f"--node-config {settings.node_config!r} is not key=value pairs: {exc}") from exc
    return config


def _trust(settings: Settings, bundle: dict[str, Any]) -> bytes | None:
    """The CA certificate selectors must prove themselves against; None for --insecure."""
    if settings.insecure:
        warning = "INSECURE: connecting over plaintext gRPC (--insecure); use it for local development only"
        print(f"warning: {warning}", file=sys.stderr, flush=True)
        log.warning(warning)
        return None
    if settings.ca_cert is not None:
        try:
            return settings.ca_cert.read_bytes()
        except OSError as exc:
            raise ClientError(f"cannot read the CA certificate {settings.ca_cert}: {exc}") from exc
    pem = bundle.get("ca_certificate")
    if not isinstance(pem, str) or "BEGIN CERTIFICATE" not in pem:
        raise ClientError(
            "the join bundle has no CA certificate, so the selector cannot be verified: download your current "
            "join bundle from the problem page (or pass --ca-cert; --insecure only for local development)"
        )
    return pem.encode()


def _privacy(settings: Settings, bundle: dict[str, Any], environ: Mapping[str, str]) -> privacy.Guard | None:
    """This site's privacy budget, with its ledger open; None when no one asks for DP."""
    try:
        budget = privacy.resolve(
            epsilon_cap=settings.dp_epsilon,
            delta=settings.dp_delta,
            noise_multiplier=settings.dp_noise_multiplier,
            clipping_norm=settings.dp_clipping_norm,
            rounds=settings.dp_rounds,
            requirement=privacy.Requirement.parse(bundle.get("privacy")),
        )
        if budget is None:
            return None
        state_dir = settings.dp_state or settings.data_path.resolve().parent / "fedota-privacy"
        privacy.check_state_dir(state_dir, environ)
        path, problem = privacy.ledger_path(state_dir, bundle, settings.fab_sha256 or str(bundle.get("fab_sha256", "")))
        ledger = privacy.Ledger(path, problem)
        ledger.open()
    except privacy.PrivacyError as exc:
        raise ClientError(str(exc)) from exc
    guard = privacy.Guard(budget, ledger)
    cap = "no cap of its own" if budget.epsilon_cap is None else f"cap ε {budget.epsilon_cap:g}"
    asked = " (the problem requires noise)" if budget.min_noise_multiplier > 0 else ""
    print(
        f"privacy: every update is clipped to L2 norm {budget.clipping_norm:g} and noised here{asked}; {cap} at "
        f"δ {budget.delta:g}, ε {guard.spent_epsilon():.3f} spent so far ({len(ledger.releases)} updates), "
        f"ledger {path}",
        file=sys.stderr,
        flush=True,
    )
    return guard


def run(settings: Settings) -> int:
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
    try:
        bundle = _bundle(settings)
        contract: Any = settings.contract or bundle.get("data_contract")
        if contract is None:
            log.warning("no data contract given: the data is not checked before joining")
        else:
            try:
                summary = check_or_raise(contract, settings.data_path)
            except DataContractError as exc:
                print(
                    f"error: the data in {settings.data_path} does not match the problem's data contract:\n{exc}",
                    file=sys.stderr,
                )
                print("nothing was sent; fix the data and run again.", file=sys.stderr)
                return EXIT_DATA
            except ContractSpecError as exc:
                print(f"error: the data contract itself is invalid: {exc}", file=sys.stderr)
                return EXIT_DATA
            if summary.kind == "none":
                # The setter declared that the app loads its own data: say so, never "passed".
                log.info("no data check: the app loads its own data", extra={"summary": str(summary)})
                print(
                    "data check: the problem's app loads its own data (contract kind 'none'), "
                    f"so nothing in {settings.data_path} was checked",
                    file=sys.stderr,
                )
            else:
                log.info("data matches the contract", extra={"summary": str(summary)})
                print(f"data check passed: {summary}", file=sys.stderr)
        if settings.check_only:
            return 0
        listed = bundle.get("selectors", [])
        if not settings.selector and not (isinstance(listed, list) and all(isinstance(s, str) for s in listed)):
            raise ClientError(
                f"the join bundle's 'selectors' must be a list of host:port strings, not {listed!r}: "
                "download your current join bundle from the problem page"
            )
        selectors = [s.strip() for s in (settings.selector or ",".join(listed)).split(",") if s.strip()]
        if not selectors:
            raise ClientError("no selector given: pass --selector host:port or a join bundle with 'selectors'")
        root_certificates = _trust(settings, bundle)
        # Over TLS every record is authenticated: replies go without a hash of their own.
        payload.send_digests(root_certificates is None)
        guard = _privacy(settings, bundle, os.environ)
        node_config = _node_config(settings, bundle)
        partition_id, num_partitions = node_config.pop("partition-id"), node_config.pop("num-partitions")
        if "data-path" in node_config:
            raise ClientError("give the data folder with --data-path, not in --node-config (it is checked first)")
        print(
            f"this site is partition-id {partition_id} of num-partitions {num_partitions} (context.node_config)",
            file=sys.stderr,
            flush=True,
        )
        setup = NodeSetup(
            selectors=selectors,
            credential=settings.credential or str(bundle.get("credential", "")),
            fab_sha256=settings.fab_sha256 or str(bundle.get("fab_sha256", "")),
            data_path=settings.data_path.resolve(),
            partition_id=partition_id,
            num_partitions=num_partitions,
            cache_dir=settings.cache_dir,
            display_name=settings.name or str(bundle.get("site_name", "")),
            max_join_wait=settings.max_join_wait,
            root_certificates=root_certificates,
            selectors_local_only=not settings.selector and bundle.get("selectors_local_only") is True,
            extra_node_config=node_config,
            max_reconnect_wait=settings.max_reconnect_wait,
            follow=settings.follow,
            privacy=guard,
        )
        node = Node(setup)
        end = node.serve()
        log.info("run over", extra={"status": end.status, "reason": end.reason, "tasks": node.tasks_done})
        if end.status == WITHDRAWN:
            print(f"error: the selector ended this client's session: {end.reason}", file=sys.stderr)
            return EXIT_REFUSED
        if end.status == DECLINED:
            print(
                f"{end.reason}. This client is done ({node.tasks_done} tasks served), exit code {EXIT_BUDGET}: "
                "raise --dp-epsilon to take part again (what was spent stays spent).",
                file=sys.stderr,
                flush=True,
            )
            return EXIT_BUDGET
        code = EXIT_RUN_FAILED if end.status == "failed" else 0
        told = f"no run of this problem is going on: {end.describe()}" if end.late else end.describe()
        print(
            f"{'error: ' if code else ''}{told}. This client is done ({node.tasks_done} tasks served), "
            f"exit code {code}; with --follow it would wait for the problem's next run.",
            file=sys.stderr,
            flush=True,
        )
        return code
    except FederationLost as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_LOST
    except ClientError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_REFUSED


def main(argv: Sequence[str] | None = None) -> int:
    return service_main("client", Settings.from_env, run, argv)


if __name__ == "__main__":
    sys.exit(main())
