"""The data holder's privacy budget (client_image/privacy.py): accountant, ledger, the noising mod.

The mod is exercised inside real Flower ClientApps built under `Guard.install()`, as the
client loads an app, and called with real Flower Messages.
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from pathlib import Path
from typing import Any

import dp_accounting
import numpy as np
import pytest
from dp_accounting import pld, rdp
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, Metadata, MetricRecord, RecordDict
from flwr.app.message import make_message
from flwr.clientapp import ClientApp
from scipy import optimize, stats

from client_image import privacy
from client_image.privacy import Budget, Guard, Ledger, PrivacyError, PrivacyStop, Requirement

DELTA = 1e-5

pytestmark = pytest.mark.usefixtures("task_identity")


def exact_gaussian_epsilon(multipliers: dict[float, int], delta: float) -> float:
    """The exact ε of composed Gaussian mechanisms: μ-GDP with μ = sqrt(Σ 1/z²) (Dong, Roth, Su 2019)."""
    mu = math.sqrt(sum(count / z**2 for z, count in multipliers.items()))

    def delta_at(eps: float) -> float:
        return float(stats.norm.cdf(-eps / mu + mu / 2) - math.exp(eps) * stats.norm.cdf(-eps / mu - mu / 2))

    return float(optimize.brentq(lambda e: delta_at(e) - delta, 1e-9, 500))


# ---- the accountant ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("multipliers", "delta"),
    [({1.0: 10}, 1e-5), ({2.0: 100}, 1e-5), ({0.8: 3, 1.5: 7}, 1e-6), ({5.0: 1000}, 1e-5)],
)
def test_epsilon_is_the_libraries_rdp_value_and_bounds_the_exact_one(
    multipliers: dict[float, int], delta: float
) -> None:
    ours = privacy.epsilon(multipliers, delta)
    accountant = rdp.RdpAccountant()
    for z, count in multipliers.items():
        accountant.compose(dp_accounting.GaussianDpEvent(z), count)
    assert ours == pytest.approx(accountant.get_epsilon(delta), rel=1e-12)
    # RDP never under-states ε, and is not far off the exact value.
    exact = exact_gaussian_epsilon(multipliers, delta)
    assert exact <= ours <= exact * 1.15
    # Google's tight PLD accountant agrees with the exact value too (what RDP is judged against).
    tight = pld.PLDAccountant()
    for z, count in multipliers.items():
        tight.compose(dp_accounting.GaussianDpEvent(z), count)
    assert tight.get_epsilon(delta) == pytest.approx(exact, rel=0.02)


def test_nothing_released_is_zero_epsilon() -> None:
    assert privacy.epsilon({}, DELTA) == 0.0
    assert privacy.epsilon({1.0: 0}, DELTA) == 0.0


def test_calibrate_gives_the_least_noise_that_fits() -> None:
    spent = Counter({1.5: 4})
    z = privacy.calibrate(spent, 10.0, DELTA, 20)
    assert z is not None
    assert privacy.epsilon(spent + Counter({z: 20}), DELTA) <= 10.0
    assert privacy.epsilon(spent + Counter({z * 0.99: 20}), DELTA) > 10.0


def test_calibrate_says_when_nothing_fits() -> None:
    # ε already above the cap: no noise makes room.
    assert privacy.calibrate(Counter({0.3: 5}), 1.0, DELTA, 1) is None


# ---- settings ------------------------------------------------------------------------------


def test_requirement_parses_and_refuses_with_the_key_named() -> None:
    assert Requirement.parse(None) == Requirement()
    got = Requirement.parse({"min_noise_multiplier": 1.1, "clipping_norm": 2, "delta": 1e-6})
    assert got == Requirement(1.1, 2.0, 1e-6) and got.requires_noise
    for bad, named in [
        ({"clipping_norm": 0}, "privacy.clipping_norm"),
        ({"delta": 1.0}, "privacy.delta"),
        ({"min_noise_multiplier": True}, "privacy.min_noise_multiplier"),
        ({"min_noise_multiplier": "1"}, "privacy.min_noise_multiplier"),
        # Past a float (was an OverflowError, not a PrivacyError), and not a number at all.
        ({"clipping_norm": 10**400}, "privacy.clipping_norm"),
        ({"min_noise_multiplier": float("nan")}, "privacy.min_noise_multiplier"),
        ({"max_epsilon": 3}, "unknown keys ['max_epsilon']"),
        ([1], "must be an object"),
    ]:
        with pytest.raises(PrivacyError, match=named.replace("[", r"\[").replace("]", r"\]")):
            Requirement.parse(bad)


def _resolve(**given: Any) -> Budget | None:
    values: dict[str, Any] = {
        "epsilon_cap": None,
        "delta": None,
        "noise_multiplier": None,
        "clipping_norm": None,
        "rounds": None,
        "requirement": Requirement(),
    }
    values.update(given)
    return privacy.resolve(**values)


def test_resolve_is_off_unless_someone_asks_and_says_what_is_missing() -> None:
    assert _resolve() is None
    with pytest.raises(PrivacyError, match="needs a clipping norm"):
        _resolve(epsilon_cap=4.0)
    with pytest.raises(PrivacyError, match="give the budget itself with --dp-epsilon"):
        _resolve(noise_multiplier=1.0, clipping_norm=1.0)
    with pytest.raises(PrivacyError, match="below the problem's required minimum 2"):
        _resolve(epsilon_cap=4.0, noise_multiplier=1.0, requirement=Requirement(2.0, 1.0))
    # The problem's requirement alone turns it on, with its norm and δ; no cap of the site's own.
    budget = _resolve(requirement=Requirement(1.2, 0.5, 1e-6))
    assert budget == Budget(None, 1e-6, 0.5, None, None, 1.2)
    # The holder's own δ and norm win over the problem's.
    budget = _resolve(epsilon_cap=3.0, delta=1e-7, clipping_norm=2.0, requirement=Requirement(0.0, 0.5, 1e-6))
    assert budget is not None and (budget.delta, budget.clipping_norm) == (1e-7, 2.0)


def test_in_the_image_the_ledger_folder_must_be_a_mount(tmp_path: Path) -> None:
    privacy.check_state_dir(tmp_path, {})  # outside the image: any folder
    with pytest.raises(PrivacyError, match="inside the container"):
        privacy.check_state_dir(tmp_path, {privacy.IN_IMAGE_ENV: "1"})
    privacy.check_state_dir(Path("/"), {privacy.IN_IMAGE_ENV: "1"})


# ---- the ledger ----------------------------------------------------------------------------


def _ledger(folder: Path, problem_id: int = 7) -> Ledger:
    path, problem = privacy.ledger_path(folder, {"problem_id": problem_id, "webserver_url": "https://x"}, "")
    ledger = Ledger(path, problem)
    ledger.open()
    return ledger


def test_ledger_is_per_problem_locked_and_refuses_to_forget(tmp_path: Path) -> None:
    a = _ledger(tmp_path, 7)
    assert a.path.name.startswith("problem-7-")
    assert _ledger(tmp_path, 8).path != a.path
    with pytest.raises(PrivacyError, match="another client of this problem"):
        _ledger(tmp_path, 7)
    a.record({"noise_multiplier": 1.0, "run_id": 1})
    a.close()
    b = _ledger(tmp_path, 7)
    assert b.releases == [{"noise_multiplier": 1.0, "run_id": 1}]
    b.close()
    a.path.write_text("{not json")
    with pytest.raises(PrivacyError, match="unreadable.*restore it from a backup"):
        _ledger(tmp_path, 7)
    assert a.path.read_text() == "{not json"  # left as it was


def test_ledger_folder_not_writable_says_how_to_fix(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    ledger = Ledger(blocker / "sub" / "l.json", {})
    with pytest.raises(PrivacyError, match="-v /path/on/your/machine/fedota-privacy:/state"):
        ledger.open()


# ---- the mod, inside real ClientApps -------------------------------------------------------


def _guard(tmp_path: Path, **budget: Any) -> Guard:
    values: dict[str, Any] = {
        "epsilon_cap": None,
        "delta": DELTA,
        "clipping_norm": 1.0,
        "noise_multiplier": 1.0,
        "rounds": None,
        "min_noise_multiplier": 0.0,
    }
    values.update(budget)
    return Guard(Budget(**values), _ledger(tmp_path))


def _context(rounds: int = 3) -> Context:
    return Context(run_id=1, node_id=5, node_config={}, state=RecordDict(), run_config={"num-server-rounds": rounds})


def _train(model: dict[str, np.ndarray], server_round: int, run_id: int = 1) -> Message:
    content = RecordDict(
        {
            "arrays": ArrayRecord({k: Array(v) for k, v in model.items()}),
            "config": ConfigRecord({"server-round": server_round}),
        }
    )
    metadata = Metadata(
        run_id=run_id,
        message_id=f"m{server_round}",
        src_node_id=1,
        dst_node_id=5,
        reply_to_message_id="",
        group_id="",
        created_at=time.time(),
        ttl=60.0,
        message_type="train",
    )
    return make_message(metadata=metadata, content=content)


def _app(guard: Guard, step: dict[str, np.ndarray]) -> ClientApp:
    before = guard.installed
    with guard.install():
        app = ClientApp()

        @app.train()
        def train(msg: Message, context: Context) -> Message:
            arrays = msg.content["arrays"].to_numpy_ndarrays()
            new = {k: a + step[k] for k, a in zip(msg.content["arrays"].keys(), arrays, strict=True)}
            record = ArrayRecord({k: Array(v) for k, v in new.items()})
            return Message(RecordDict({"arrays": record, "metrics": MetricRecord({"num-examples": 10})}), reply_to=msg)

    assert guard.installed == before + 1
    return app


def test_update_is_clipped_then_noised_with_std_two_z_c(tmp_path: Path) -> None:
    guard = _guard(tmp_path, noise_multiplier=0.5, clipping_norm=2.0)
    reports: list[Any] = []
    guard.report = reports.append
    model = {"w": np.zeros(200_000, dtype=np.float32), "b": np.ones(3, dtype=np.float64)}
    step = {"w": np.full(200_000, 0.1, dtype=np.float32), "b": np.zeros(3)}
    out = _app(guard, step)(_train(model, 1), _context())
    assert not out.has_error()
    released = out.content["arrays"].to_numpy_ndarrays()
    assert [a.dtype for a in released] == [np.float32, np.float64]
    norm = float(np.linalg.norm(step["w"].astype(np.float64)))
    clipped = step["w"] * (2.0 / norm)  # the update is clipped to L2 norm 2
    noise = released[0].astype(np.float64) - clipped
    assert abs(noise.mean()) < 0.02
    assert noise.std() == pytest.approx(2 * 0.5 * 2.0, rel=0.01)
    entry = guard.ledger.releases[0]
    assert entry["clipped"] is True and entry["update_norm"] == pytest.approx(norm, rel=1e-6)
    assert entry["round"] == 1 and entry["noise_multiplier"] == 0.5
    assert len(reports) == 1 and reports[0].state == "active"
    assert reports[0].epsilon == pytest.approx(privacy.epsilon({0.5: 1}, DELTA))
    assert (reports[0].releases, reports[0].run_releases, reports[0].round) == (1, 1, 1)
    assert not reports[0].HasField("epsilon_cap")


def test_a_small_update_is_not_scaled(tmp_path: Path) -> None:
    guard = _guard(tmp_path, noise_multiplier=1e-9, clipping_norm=10.0)
    model = {"w": np.arange(4, dtype=np.float64)}
    out = _app(guard, {"w": np.full(4, 0.25)})(_train(model, 1), _context())
    np.testing.assert_allclose(out.content["arrays"]["w"].numpy(), model["w"] + 0.25, atol=1e-6)


def test_site_stops_at_the_predicted_round_and_the_ledger_keeps_it(tmp_path: Path) -> None:
    cap, z = 6.0, 2.0
    # The accountant predicts how many releases fit under the cap.
    fit = max(n for n in range(1, 100) if privacy.epsilon({z: n}, DELTA) <= cap)
    assert 2 <= fit < 20
    guard = _guard(tmp_path, epsilon_cap=cap, noise_multiplier=z)
    app = _app(guard, {"w": np.ones(3)})
    context = _context()
    model = {"w": np.zeros(3)}
    for server_round in range(1, fit + 1):
        assert not app(_train(model, server_round), context).has_error()
    with pytest.raises(PrivacyStop) as stopped:
        app(_train(model, fit + 1), context)
    assert "one more round would bring ε to" in stopped.value.reason and f"cap {cap:g}" in stopped.value.reason
    report = stopped.value.report
    assert report.state == "exhausted" and report.releases == fit and report.epsilon_cap == cap
    assert report.epsilon <= cap < privacy.epsilon({z: fit + 1}, DELTA)
    assert report.round == fit + 1
    doc = json.loads(guard.ledger.path.read_text())
    assert len(doc["releases"]) == fit and doc["stops"][0]["round"] == fit + 1
    guard.ledger.close()

    # A restart of the client, and a new run: the budget is still spent; it stops before training.
    again = _guard(tmp_path, epsilon_cap=cap, noise_multiplier=z)
    with pytest.raises(PrivacyStop):
        again.start_run(2, {"num-server-rounds": 3})
    assert len(again.ledger.releases) == fit


def test_budget_spans_runs_and_calibrates_what_is_left(tmp_path: Path) -> None:
    cap = 8.0
    guard = _guard(tmp_path, epsilon_cap=cap, noise_multiplier=None)
    guard.start_run(1, {"num-server-rounds": 4})
    first = guard.noise_multiplier
    app = _app(guard, {"w": np.ones(2)})
    for server_round in (1, 2):
        app(_train({"w": np.zeros(2)}, server_round, run_id=1), _context(4))
    assert guard.ledger.run_plan(1) == {
        "noise_multiplier": first,
        "how": "calibrated for 4 rounds",
        "at": pytest.approx(0, abs=1e12),
    }
    guard.ledger.close()

    # Restarted in the same run: the same multiplier, not a new calibration.
    again = _guard(tmp_path, epsilon_cap=cap, noise_multiplier=None)
    again.start_run(1, {"num-server-rounds": 4})
    assert again.noise_multiplier == first
    # A new run spreads what is left over its rounds: more noise than the first run needed.
    again.start_run(2, {"num-server-rounds": 4})
    assert again.noise_multiplier > first
    spent = Counter({first: 2})
    assert privacy.epsilon(spent + Counter({again.noise_multiplier: 4}), DELTA) <= cap


def test_problem_minimum_raises_a_smaller_multiplier(tmp_path: Path) -> None:
    guard = _guard(tmp_path, epsilon_cap=1000.0, noise_multiplier=None, min_noise_multiplier=3.0)
    guard.start_run(1, {"num-server-rounds": 2})
    assert guard.noise_multiplier == 3.0


def test_without_rounds_to_plan_for_the_error_says_what_to_pass(tmp_path: Path) -> None:
    guard = _guard(tmp_path, epsilon_cap=5.0, noise_multiplier=None)
    with pytest.raises(PrivacyError, match="--dp-rounds"):
        guard.start_run(1, {})


def test_what_cannot_be_noised_is_not_sent(tmp_path: Path) -> None:
    guard = _guard(tmp_path)
    model = {"w": np.zeros(2), "count": np.array([3], dtype=np.int64)}
    out = _app(guard, {"w": np.ones(2), "count": np.array([1])})(_train(model, 1), _context())
    assert out.has_error() and "whole numbers cannot be noised" in out.error.reason
    assert guard.ledger.releases == []
    # An integer array the app left alone goes out as it came.
    out = _app(guard, {"w": np.ones(2), "count": np.array([0])})(_train(model, 1), _context())
    assert not out.has_error()
    assert out.content["arrays"]["count"].numpy().tolist() == [3]


def test_other_messages_pass_untouched(tmp_path: Path) -> None:
    guard = _guard(tmp_path)
    with guard.install():
        app = ClientApp()

        @app.evaluate()
        def evaluate(msg: Message, context: Context) -> Message:
            return Message(RecordDict({"metrics": MetricRecord({"acc": 0.5})}), reply_to=msg)

    msg = Message(
        RecordDict({"arrays": ArrayRecord({"w": Array(np.zeros(2))})}), dst_node_id=5, message_type="evaluate"
    )
    out = app(msg, _context())
    assert out.content["metrics"]["acc"] == 0.5 and guard.ledger.releases == []
