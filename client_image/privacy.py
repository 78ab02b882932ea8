"""The data holder's privacy budget: client-side differential privacy on every training reply.

When a site sets a budget (`--dp-epsilon`, `--dp-delta`), or the problem requires noise,
every training reply leaving the site carries a clipped and noised model update:

- the update (reply arrays minus the arrays the site received) is clipped to L2 norm C,
  then Gaussian noise of standard deviation `2 · z · C` is added to every coordinate.
  The `2 · C` is the L2 sensitivity when the site's whole data may be replaced: two clipped
  updates differ by at most 2C. So the guarantee covers the site's dataset as a whole, and
  any record in it. `z` is the noise multiplier.
- every release is one Gaussian mechanism of noise multiplier z. Google's `dp-accounting`
  RDP accountant composes them: across rounds, across runs, across restarts of this client.
  RDP never under-states ε. Here it sits about 5-7 % above the tight PLD value, and it
  answers in milliseconds where PLD takes seconds on a small device.
- the ledger of releases is a file on the data holder's machine (`--dp-state`), written
  before the reply leaves. It is append-only: a release is never forgotten, even when its
  upload then fails (so ε may be over-counted, never under-counted).
- before training, the client checks that one more release fits the cap. If it does not,
  the site declines: it trains nothing, reports its spend and leaves (`PrivacyStop`).

The noise is added by a Flower mod placed innermost, after every mod of the app (`install`),
so Flower's `secaggplus_mod` masks the noised update and the server only sees the sum.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import math
import os
import secrets
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedota_common import privacy_rules as rules
from protos.selector.v1 import selector_pb2 as spb

log = logging.getLogger(__name__)

LEDGER_FORMAT = "fedota-privacy-ledger/1"
ACCOUNTANT = "dp-accounting RDP accountant, Gaussian mechanism, L2 sensitivity 2 x clipping norm"
DEFAULT_DELTA = 1e-5
# Calibration searches noise multipliers up to this; a budget that needs more is spent.
MAX_NOISE_MULTIPLIER = 1e4
# The image sets this: the ledger folder must then be a mount from the data holder's machine.
IN_IMAGE_ENV = "FEDOTA_CLIENT_IMAGE"


class PrivacyError(Exception):
    """The privacy settings cannot work; the message says what to change."""


class PrivacyStop(Exception):
    """This site's next release would pass its cap: it declines and leaves."""

    def __init__(self, reason: str, report: spb.PrivacyReport) -> None:
        super().__init__(reason)
        self.reason = reason
        self.report = report


@dataclass(frozen=True)
class Requirement:
    """What the problem asks of every site (the join bundle's `privacy`)."""

    min_noise_multiplier: float = 0.0
    clipping_norm: float | None = None
    delta: float | None = None

    @classmethod
    def parse(cls, data: Any) -> Requirement:
        if data is None:
            return cls()
        if not isinstance(data, dict):
            raise PrivacyError(f"the join bundle's 'privacy' must be an object, not {data!r}")
        unknown = rules.unknown_keys(data)
        if unknown:
            raise PrivacyError(
                f"the join bundle's 'privacy' has unknown keys {unknown}: this client is older than the problem's "
                "requirement; use the client image the problem page names"
            )

        def number(key: str) -> float | None:
            value = data.get(key)
            if value is None:
                return None
            if not rules.valid(key, value):
                raise PrivacyError(f"the join bundle's privacy.{key} must be {rules.BOUNDS[key]}, not {value!r}")
            return float(value)

        return cls(number("min_noise_multiplier") or 0.0, number("clipping_norm"), number("delta"))

    @property
    def requires_noise(self) -> bool:
        return self.min_noise_multiplier > 0


def epsilon(multipliers: Mapping[float, int], delta: float) -> float:
    """The ε (at `delta`) of composing Gaussian mechanisms: {noise multiplier: how many}."""
    import dp_accounting
    from dp_accounting import rdp

    if not any(multipliers.values()):
        return 0.0
    accountant = rdp.RdpAccountant()
    for z, count in sorted(multipliers.items()):
        if count:
            accountant.compose(dp_accounting.GaussianDpEvent(z), count)
    return float(accountant.get_epsilon(delta))


def calibrate(spent: Mapping[float, int], cap: float, delta: float, rounds: int) -> float | None:
    """The smallest noise multiplier with which `rounds` more releases keep ε within `cap`.

    None when even MAX_NOISE_MULTIPLIER does not fit (the budget is spent).
    """

    def fits(z: float) -> bool:
        more = Counter(spent)
        more[z] += rounds
        return epsilon(more, delta) <= cap

    if not fits(MAX_NOISE_MULTIPLIER):
        return None
    low, high = 0.0, 1.0
    while not fits(high):
        low, high = high, high * 2
    for _ in range(40):
        mid = (low + high) / 2
        if fits(mid):
            high = mid
        else:
            low = mid
        if high - low <= 1e-4 * high:
            break
    return high


class Ledger:
    """This site's releases for one problem: a JSON file on the data holder's machine.

    Append-only; every write replaces the file atomically (write, fsync, rename). The file
    is locked for the life of the client, so two clients of one problem cannot both spend
    the same budget.
    """

    def __init__(self, path: Path, problem: dict[str, Any]) -> None:
        self.path = path
        self.problem = problem
        self._lock_file: Any = None
        self.doc: dict[str, Any] = {}

    def open(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._lock_file = open(self.path.with_name(self.path.name + ".lock"), "a")  # noqa: SIM115 - held for life
        except OSError as exc:
            raise PrivacyError(
                f"cannot write the privacy ledger folder {self.path.parent}: {exc}. It must be a folder on your "
                "machine that this client may write (--dp-state; in Docker, mount one with "
                "-v /path/on/your/machine/fedota-privacy:/state, and run as its owner with "
                f'--user "$(id -u):$(id -g)"; this process runs as uid {os.getuid()})'
            ) from exc
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            raise PrivacyError(
                f"another client of this problem is using the privacy ledger {self.path}: run one client per site "
                "(or give each its own --dp-state, which splits the budget's record)"
            ) from exc
        if self.path.exists():
            try:
                doc = json.loads(self.path.read_text())
                if doc.get("format") != LEDGER_FORMAT or not isinstance(doc.get("releases"), list):
                    raise ValueError(f"not a {LEDGER_FORMAT} file")
            except (OSError, ValueError, AttributeError) as exc:
                raise PrivacyError(
                    f"the privacy ledger {self.path} is unreadable ({exc}). It is the record of what this site has "
                    "spent: restore it from a backup. Moving it away starts the budget from zero, forgetting "
                    "everything already released."
                ) from exc
            self.doc = doc
        else:
            self.doc = {"format": LEDGER_FORMAT, "problem": self.problem, "accountant": ACCOUNTANT, "releases": []}
        self.doc.setdefault("runs", {})
        self.doc.setdefault("stops", [])
        self._write()

    def close(self) -> None:
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None

    @property
    def releases(self) -> list[dict[str, Any]]:
        return list(self.doc.get("releases", []))

    def spent(self) -> Counter[float]:
        return Counter(float(r["noise_multiplier"]) for r in self.doc["releases"])

    def run_plan(self, run_id: int) -> dict[str, Any] | None:
        plan = self.doc["runs"].get(str(run_id))
        return dict(plan) if isinstance(plan, dict) else None

    def plan_run(self, run_id: int, plan: dict[str, Any]) -> None:
        self.doc["runs"][str(run_id)] = plan
        self._write()

    def record(self, release: dict[str, Any]) -> None:
        self.doc["releases"].append(release)
        self._write()

    def record_stop(self, stop: dict[str, Any]) -> None:
        self.doc["stops"].append(stop)
        self._write()

    def _write(self) -> None:
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        with open(tmp, "w") as out:
            json.dump(self.doc, out, indent=1, sort_keys=True)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, self.path)
        folder = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)


def ledger_path(state_dir: Path, bundle: Mapping[str, Any], fab_sha256: str) -> tuple[Path, dict[str, Any]]:
    """Where this problem's ledger lives, and how the file names the problem.

    A problem is its website and id (from the join bundle); without a bundle, its app's hash.
    """
    if bundle.get("problem_id") is not None:
        key = f"{bundle.get('webserver_url', '')}#problem-{bundle['problem_id']}"
        stem = f"problem-{bundle['problem_id']}"
    else:
        key = f"app:{fab_sha256}"
        stem = "app"
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    problem = {"key": key, "title": bundle.get("problem_title", ""), "webserver_url": bundle.get("webserver_url", "")}
    return state_dir / f"{stem}-{digest}.json", problem


@dataclass(frozen=True)
class Budget:
    """The data holder's settings, with the problem's requirement folded in."""

    epsilon_cap: float | None
    delta: float
    clipping_norm: float
    noise_multiplier: float | None
    rounds: int | None
    min_noise_multiplier: float


def resolve(
    *,
    epsilon_cap: float | None,
    delta: float | None,
    noise_multiplier: float | None,
    clipping_norm: float | None,
    rounds: int | None,
    requirement: Requirement,
) -> Budget | None:
    """The budget this client applies; None when neither the holder nor the problem asks for DP."""
    holder_asks = any(v is not None for v in (epsilon_cap, delta, noise_multiplier, clipping_norm, rounds))
    if not holder_asks and not requirement.requires_noise:
        return None
    if epsilon_cap is None and not requirement.requires_noise:
        raise PrivacyError(
            "--dp-delta, --dp-noise-multiplier, --dp-clipping-norm and --dp-rounds set how a budget is spent: "
            "give the budget itself with --dp-epsilon"
        )
    norm = clipping_norm if clipping_norm is not None else requirement.clipping_norm
    if norm is None:
        raise PrivacyError(
            "client-side privacy needs a clipping norm and the problem sets none: pass --dp-clipping-norm "
            "(the L2 norm each model update is clipped to; ask the problem setter what suits the model)"
        )
    if noise_multiplier is not None and noise_multiplier < requirement.min_noise_multiplier:
        raise PrivacyError(
            f"--dp-noise-multiplier {noise_multiplier} is below the problem's required minimum "
            f"{requirement.min_noise_multiplier}: give at least that (or leave it out)"
        )
    return Budget(
        epsilon_cap=epsilon_cap,
        delta=delta if delta is not None else (requirement.delta or DEFAULT_DELTA),
        clipping_norm=norm,
        noise_multiplier=noise_multiplier,
        rounds=rounds,
        min_noise_multiplier=requirement.min_noise_multiplier,
    )


def check_state_dir(state_dir: Path, environ: Mapping[str, str]) -> None:
    """In the client image, the ledger folder must come from the data holder's machine."""
    if environ.get(IN_IMAGE_ENV) == "1" and not os.path.ismount(state_dir):
        raise PrivacyError(
            f"the privacy ledger folder {state_dir} is inside the container, so what this site spends would be "
            f"forgotten when it stops: mount a folder of your machine there, e.g. "
            f"-v /path/on/your/machine/fedota-privacy:{state_dir}"
        )


class Guard:
    """Applies one site's budget: the mod that noises replies, and its ledger."""

    def __init__(self, budget: Budget, ledger: Ledger) -> None:
        self.budget = budget
        self.ledger = ledger
        # Set by the runner: sends a report to the selector.
        self.report: Callable[[spb.PrivacyReport], None] = lambda _report: None
        self.run_id: int | None = None
        self.noise_multiplier: float = 0.0
        self.installed = 0
        self.clock: Callable[[], float] = time.time

    # ---- accounting ------------------------------------------------------------------------

    def spent_epsilon(self, extra: float | None = None) -> float:
        spent = self.ledger.spent()
        if extra is not None:
            spent[extra] += 1
        return epsilon(spent, self.budget.delta)

    def _report(
        self, state: str, *, round_id: int = 0, reason: str = "", eps: float | None = None
    ) -> spb.PrivacyReport:
        releases = self.ledger.releases
        report = spb.PrivacyReport(
            state=state,
            epsilon=self.spent_epsilon() if eps is None else eps,
            delta=self.budget.delta,
            noise_multiplier=self.noise_multiplier,
            clipping_norm=self.budget.clipping_norm,
            releases=len(releases),
            run_releases=sum(1 for r in releases if r.get("run_id") == self.run_id),
            round=round_id,
            reason=reason,
        )
        if self.budget.epsilon_cap is not None:
            report.epsilon_cap = self.budget.epsilon_cap
        return report

    def _stop(self, reason: str, round_id: int = 0) -> PrivacyStop:
        self.ledger.record_stop({"at": self.clock(), "run_id": self.run_id, "round": round_id, "reason": reason})
        return PrivacyStop(reason, self._report("exhausted", round_id=round_id, reason=reason))

    def start_run(self, run_id: int, run_config: Mapping[str, Any]) -> None:
        """Fix the noise multiplier for this run (kept across restarts of the client in the run).

        Raises PrivacyStop when not even one release fits, PrivacyError when the settings
        cannot give a multiplier.
        """
        self.run_id = run_id
        plan = self.ledger.run_plan(run_id)
        budget = self.budget
        if plan is not None:
            self.noise_multiplier = max(float(plan["noise_multiplier"]), budget.min_noise_multiplier)
        else:
            z = budget.noise_multiplier
            how = "given"
            if z is None and budget.epsilon_cap is not None:
                rounds = budget.rounds
                if rounds is None:
                    value = run_config.get("num-server-rounds")
                    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                        rounds = value
                if rounds is None:
                    if budget.min_noise_multiplier <= 0:
                        raise PrivacyError(
                            "cannot spread the budget over this run: its run config has no num-server-rounds; pass "
                            "--dp-rounds (how many rounds to plan for) or --dp-noise-multiplier"
                        )
                else:
                    z = calibrate(self.ledger.spent(), budget.epsilon_cap, budget.delta, rounds)
                    how = f"calibrated for {rounds} rounds"
                    if z is None:
                        raise self._stop(
                            f"this site's privacy budget is spent: ε {self.spent_epsilon():.3f} of the cap "
                            f"{budget.epsilon_cap:g} is used, and no noise leaves room for another round"
                        )
            z = max(z or 0.0, budget.min_noise_multiplier)
            if z <= 0:
                raise PrivacyError("no noise multiplier: pass --dp-noise-multiplier or --dp-rounds")
            self.noise_multiplier = z
            self.ledger.plan_run(run_id, {"noise_multiplier": z, "how": how, "at": self.clock()})
        self._check_room(0)
        log.info(
            "client-side differential privacy on",
            extra={
                "noise_multiplier": round(self.noise_multiplier, 4),
                "clipping_norm": budget.clipping_norm,
                "delta": budget.delta,
                "epsilon_cap": budget.epsilon_cap,
                "epsilon_spent": round(self.spent_epsilon(), 4),
            },
        )

    def _check_room(self, round_id: int) -> None:
        cap = self.budget.epsilon_cap
        if cap is None:
            return
        after = self.spent_epsilon(self.noise_multiplier)
        if after > cap:
            raise self._stop(
                f"this site's privacy budget is spent: one more round would bring ε to {after:.3f}, "
                f"over the cap {cap:g} (δ = {self.budget.delta:g}); ε {self.spent_epsilon():.3f} is used",
                round_id,
            )

    # ---- the mod -----------------------------------------------------------------------------

    @contextlib.contextmanager
    def install(self) -> Iterator[None]:
        """While an app loads, put this guard innermost in every ClientApp function it builds.

        Flower composes a ClientApp's mods with `make_ffn` when the app is built (at import);
        the guard goes after the app's own mods, so a `secaggplus_mod` masks the noised update.
        The caller checks `installed` afterwards: an app built elsewhere would escape the guard.
        """
        import flwr.clientapp.client_app as client_app_module

        original = client_app_module.make_ffn

        def make_ffn(ffn: Any, mods: list[Any]) -> Any:
            self.installed += 1
            return original(ffn, [*mods, self])

        client_app_module.make_ffn = make_ffn  # type: ignore[assignment]
        try:
            yield
        finally:
            client_app_module.make_ffn = original

    def __call__(self, msg: Any, ctxt: Any, call_next: Callable[[Any, Any], Any]) -> Any:
        from flwr.app import Array, ArrayRecord, Message
        from flwr.app.error import Error
        from flwr.app.message_type import MessageType
        from flwr.common.constant import ErrorCode

        from fedota_common.payload import round_of

        if msg.metadata.message_type.split(".")[0] != MessageType.TRAIN:
            return call_next(msg, ctxt)

        def refuse(why: str) -> Any:
            # Nothing un-noised may leave: the server gets an error reply instead (nothing spent).
            log.error("client-side differential privacy cannot apply; no update is sent", extra={"reason": why})
            return Message(Error(code=ErrorCode.MOD_FAILED_PRECONDITION, reason=why), reply_to=msg)

        text = round_of(msg)
        round_id = int(text) if text.isdigit() else 0
        if self.run_id != msg.metadata.run_id:
            self.start_run(msg.metadata.run_id, ctxt.run_config)
        self._check_room(round_id)
        if len(msg.content.array_records) != 1:
            return refuse(
                f"Fedota's client-side DP needs exactly one ArrayRecord in a train instruction, found "
                f"{len(msg.content.array_records)}"
            )
        received = next(iter(msg.content.array_records.values()))
        out = call_next(msg, ctxt)
        if out.has_error():
            return out
        if len(out.content.array_records) != 1:
            return refuse(
                f"Fedota's client-side DP needs exactly one ArrayRecord in a train reply, found "
                f"{len(out.content.array_records)}"
            )
        key, sent = next(iter(out.content.array_records.items()))
        if list(sent.keys()) != list(received.keys()):
            return refuse(
                "Fedota's client-side DP needs the reply's ArrayRecord to hold the same arrays as the one received "
                f"(received {list(received.keys())[:8]}, replied {list(sent.keys())[:8]})"
            )
        before = received.to_numpy_ndarrays()
        after = sent.to_numpy_ndarrays()
        updates: list[np.ndarray | None] = []
        for name, old, new in zip(received.keys(), before, after, strict=True):
            if old.shape != new.shape:
                return refuse(f"array {name!r} changed shape from {old.shape} to {new.shape}")
            if np.issubdtype(new.dtype, np.floating):
                updates.append(new.astype(np.float64) - old.astype(np.float64))
            elif np.array_equal(old, new):
                updates.append(None)
            else:
                return refuse(
                    f"array {name!r} ({new.dtype}) changed, and an array of whole numbers cannot be noised: "
                    "releasing it as trained would reveal the data"
                )
        norm = math.sqrt(sum(float(np.dot(u.ravel(), u.ravel())) for u in updates if u is not None))
        scale = min(1.0, self.budget.clipping_norm / norm) if norm > 0 else 1.0
        std = 2.0 * self.noise_multiplier * self.budget.clipping_norm
        rng = np.random.default_rng(secrets.randbits(128))
        noised = {}
        for name, old, update in zip(received.keys(), before, updates, strict=True):
            if update is None:
                noised[name] = Array(old)
                continue
            released = old.astype(np.float64) + update * scale + rng.normal(0.0, std, update.shape)
            noised[name] = Array(np.asarray(released, dtype=old.dtype))
        eps = self.spent_epsilon(self.noise_multiplier)
        # Recorded before the reply leaves: a release is never unaccounted.
        self.ledger.record(
            {
                "at": self.clock(),
                "run_id": self.run_id,
                "round": round_id or None,
                "noise_multiplier": self.noise_multiplier,
                "clipping_norm": self.budget.clipping_norm,
                "update_norm": round(norm, 6),
                "clipped": scale < 1.0,
                "epsilon_after": eps,
                "delta": self.budget.delta,
            }
        )
        out.content[key] = ArrayRecord(noised)
        self.report(self._report("active", round_id=round_id, eps=eps))
        log.info(
            "update clipped and noised",
            extra={
                "round": round_id,
                "update_norm": round(norm, 4),
                "clipped": scale < 1.0,
                "noise_std": round(std, 6),
                "epsilon_spent": round(eps, 4),
                "epsilon_cap": self.budget.epsilon_cap,
            },
        )
        return out
