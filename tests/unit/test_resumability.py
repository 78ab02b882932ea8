"""What the website tells a problem's users a coordinator restart does to its app, read from the FAB's source.

The answers must match coordinator/resume.py: it resumes through Flower's
`Strategy.start` only, and restores the model, the round numbers and the
FedOpt family's and FedAvgM's optimiser state, nothing else.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest
from flwr.serverapp import strategy as flower_strategies

from fedota_common.fab import load_app
from tests.unit.hostile_fabs import HOSTILE_FABS
from webserver.problems.resumability import MAX_SOURCE_BYTES, NOT_RESTORED, RESTORED, Resumability, analyse_fab

REPO = Path(__file__).resolve().parents[2]

PYPROJECT = """[project]
name = "mine"
version = "1.0.0"

[tool.flwr.app.components]
serverapp = "mine.server_app:app"
clientapp = "mine.client_app:app"
"""

MESSAGE_API = """
from flwr.app import ArrayRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import {cls}

app = ServerApp()

@app.main()
def main(grid: Grid, context: Context) -> None:
    strategy = {cls}()
    strategy.start(grid=grid, initial_arrays=ArrayRecord(), num_rounds=3)
"""


def fab(server_app: str, **modules: str) -> bytes:
    """A FAB with `mine/server_app.py` and any other `mine/<name>.py`, zipped as `flwr build` lays it out."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("pyproject.toml", PYPROJECT)
        zf.writestr("mine/__init__.py", "")
        zf.writestr("mine/server_app.py", server_app)
        zf.writestr("mine/client_app.py", "from flwr.clientapp import ClientApp\napp = ClientApp()\n")
        for name, text in modules.items():
            zf.writestr(f"mine/{name}.py", text)
    return buf.getvalue()


def of(source: str, **modules: str) -> Resumability:
    return analyse_fab(fab(source, **modules), "mine.server_app:app")


def of_app(folder: str) -> Resumability:
    app = load_app(REPO / folder)
    return analyse_fab(app.content, app.serverapp)


# ---- the apps in the repository ---------------------------------------------------------


@pytest.mark.parametrize("folder", ["apps/tabular", "apps/image"])
def test_the_built_in_apps_resume_with_their_optimiser_state(folder: str) -> None:
    result = of_app(folder)
    assert result.resumes is True, result.reason
    assert "FedAdam" in result.reason and "server-optimiser state" in result.reason
    assert result.sentence.startswith("If the coordinator restarts, this app resumes from its last checkpoint (")


def test_flowers_fedavg_run_by_start_resumes() -> None:
    result = of_app("tests/apps/echo")
    assert result == Resumability(True, "Flower's FedAvg via Strategy.start")
    assert result.sentence == (
        "If the coordinator restarts, this app resumes from its last checkpoint (Flower's FedAvg via Strategy.start)."
    )


def test_the_compatibility_api_starts_again_at_round_1() -> None:
    result = of_app("tests/apps/compat_numpy")
    assert result.resumes is False
    assert "compatibility API (ServerApp(server_fn=...))" in result.reason
    assert result.sentence.startswith("If the coordinator restarts, this app starts again at round 1 as a new attempt:")
    assert "docs/architecture.md" in result.sentence


def test_secagg_through_the_compatibility_workflows_starts_again_at_round_1() -> None:
    result = of_app("tests/apps/secagg")
    assert result.resumes is False
    assert "SecAggPlusWorkflow" in result.reason and "DefaultWorkflow" in result.reason


def test_an_app_driving_the_grid_itself_starts_again_at_round_1() -> None:
    result = of_app("tests/apps/protocol")
    assert result.resumes is False
    assert "drives the Grid itself" in result.reason and "grid.send_and_receive" in result.reason


def test_a_subclass_overriding_aggregation_without_state_of_its_own_resumes() -> None:
    result = of_app("tests/apps/replies")
    assert result.resumes is True
    assert "RecordingFedAvg overrides aggregate_train and keeps no state of its own" in result.reason


def test_dp_wrappers_say_their_privacy_state_is_not_restored() -> None:
    result = of_app("tests/apps/dp")
    assert result.resumes is None
    assert "accountant" in result.reason and "clipping norm" in result.reason
    assert result.sentence.startswith("Fedota cannot tell whether this app resumes if the coordinator restarts:")


def test_an_app_mixing_start_and_the_compatibility_workflows_is_not_promised_anything() -> None:
    result = of_app("tests/apps/weighted")
    assert result.resumes is None
    assert "compatibility API" in result.reason


# ---- small apps, one case each ----------------------------------------------------------


def test_a_server_optimiser_resumes_with_its_state() -> None:
    result = of(MESSAGE_API.format(cls="FedAdam"))
    assert result == Resumability(True, "Flower's FedAdam via Strategy.start, with the server-optimiser state")


def test_the_strategy_module_under_another_name_and_a_strategy_made_in_another_module() -> None:
    server = """
from flwr.serverapp import ServerApp
from .build import make

app = ServerApp()

@app.main()
def main(grid, context):
    make().start(grid, None)
"""
    build = "import flwr.serverapp.strategy as fl\n\ndef make():\n    return fl.FedProx(proximal_mu=0.1)\n"
    assert of(server, build=build) == Resumability(True, "Flower's FedProx via Strategy.start")


def test_the_code_is_read_never_run() -> None:
    source = "raise SystemExit('imported!')\n" + MESSAGE_API.format(cls="FedAvg")
    assert of(source).resumes is True


def test_a_thread_started_beside_the_strategy_is_not_taken_for_it() -> None:
    source = MESSAGE_API.format(cls="FedAvg") + "    import threading\n    threading.Thread(target=print).start()\n"
    assert of(source).resumes is True


def test_an_evaluate_fn_is_said_to_count_rounds_from_1_again() -> None:
    source = MESSAGE_API.format(cls="FedAvg").replace("num_rounds=3)", "num_rounds=3, evaluate_fn=print)")
    result = of(source)
    assert result.resumes is True
    assert "evaluate_fn counts rounds from 1 again" in result.reason


def test_the_compatibility_api_with_config_and_strategy_starts_again_at_round_1() -> None:
    source = """
from flwr.server import ServerApp, ServerConfig
from flwr.server.strategy import FedAvg

app = ServerApp(config=ServerConfig(num_rounds=3), strategy=FedAvg())
"""
    result = of(source)
    assert result.resumes is False
    assert "ServerApp(config=..., strategy=...)" in result.reason


CUSTOM = """
from flwr.serverapp import ServerApp
from flwr.serverapp.strategy import FedAvg, Strategy

app = ServerApp()

{cls}

@app.main()
def main(grid, context):
    Mine().start(grid=grid, initial_arrays=None)
"""


def test_a_subclass_keeping_state_between_rounds_is_not_promised_a_full_resume() -> None:
    cls = """class Mine(FedAvg):
    def __init__(self):
        super().__init__()
        self.seen = []

    def aggregate_train(self, server_round, replies):
        replies = list(replies)
        self.seen.append(len(replies))
        return super().aggregate_train(server_round, replies)
"""
    result = of(CUSTOM.format(cls=cls))
    assert result.resumes is None
    assert "Mine keeps state of its own between rounds (it changes itself in aggregate_train)" in result.reason


def test_a_subclass_of_a_subclass_keeping_state_is_caught_too() -> None:
    cls = """class Counting(FedAvg):
    def configure_train(self, server_round, arrays, config, grid):
        self.calls += 1
        return super().configure_train(server_round, arrays, config, grid)

class Mine(Counting):
    pass
"""
    result = of(CUSTOM.format(cls=cls))
    assert result.resumes is None and "configure_train" in result.reason


def test_a_subclass_with_its_own_start_starts_again_at_round_1() -> None:
    cls = """class Mine(FedAvg):
    def start(self, grid, initial_arrays, num_rounds=3, **kwargs):
        for _ in range(num_rounds):
            grid.send_and_receive([])
"""
    result = of(CUSTOM.format(cls=cls))
    assert result.resumes is False
    assert "Mine defines its own start()" in result.reason


def test_a_strategy_of_the_apps_own_is_not_promised_a_full_resume() -> None:
    cls = """class Mine(Strategy):
    def configure_train(self, server_round, arrays, config, grid):
        return []

    def aggregate_train(self, server_round, replies):
        return None, None
"""
    result = of(CUSTOM.format(cls=cls))
    assert result.resumes is None
    assert "Mine is its own (a subclass of Flower's abstract Strategy)" in result.reason


def test_a_class_not_from_flower_with_a_start_of_its_own_starts_again_at_round_1() -> None:
    cls = """class Mine:
    def start(self, grid, initial_arrays):
        grid.send_and_receive([])
"""
    result = of(CUSTOM.format(cls=cls))
    assert result.resumes is False
    assert "Mine defines its own start()" in result.reason


def test_start_called_more_than_once_is_not_promised_a_resume() -> None:
    source = MESSAGE_API.format(cls="FedAvg") + "    strategy.start(grid=grid, initial_arrays=ArrayRecord())\n"
    result = of(source)
    assert result.resumes is None and "more than once" in result.reason


def test_start_in_a_loop_is_not_promised_a_resume() -> None:
    source = MESSAGE_API.format(cls="FedAvg").replace(
        "    strategy.start(", "    for _ in range(2):\n        strategy.start("
    )
    result = of(source)
    assert result.resumes is None and "in a loop" in result.reason


def test_start_beside_messages_the_app_sends_itself_is_not_promised_a_resume() -> None:
    source = MESSAGE_API.format(cls="FedAvg") + "    grid.send_and_receive([])\n"
    result = of(source)
    assert result.resumes is None and "grid.send_and_receive" in result.reason


def test_a_strategy_picked_by_name_is_not_promised_a_full_resume() -> None:
    source = """
from flwr.serverapp import ServerApp
from flwr.serverapp import strategy as fl

app = ServerApp()

@app.main()
def main(grid, context):
    getattr(fl, context.run_config["strategy"])().start(grid=grid, initial_arrays=None)
"""
    result = of(source)
    assert result.resumes is None and "by name at run time" in result.reason


def test_a_module_that_does_not_parse_is_unknown_saying_where() -> None:
    result = of("from flwr.serverapp import ServerApp\napp = ServerApp(\n")
    assert result.resumes is None
    assert result.reason.startswith("mine/server_app.py cannot be parsed (line ")


def test_a_broken_module_the_server_app_imports_is_unknown_too() -> None:
    source = "from .helpers import make\n" + MESSAGE_API.format(cls="FedAvg")
    result = of(source, helpers="def make(:\n")
    assert result.resumes is None and "mine/helpers.py cannot be parsed" in result.reason


def test_a_missing_server_app_module_is_unknown() -> None:
    result = analyse_fab(fab(MESSAGE_API.format(cls="FedAvg")), "mine.elsewhere:app")
    assert result == Resumability(None, "the serverapp module mine.elsewhere is not in the app (no mine/elsewhere.py)")


def test_a_server_app_without_a_main_function_is_unknown() -> None:
    result = of("from flwr.serverapp import ServerApp\napp = ServerApp()\n")
    assert result.resumes is None and "@app.main()" in result.reason


def test_a_server_app_made_some_other_way_is_unknown() -> None:
    result = of("import mylib\napp = mylib.make_server_app()\n")
    assert result.resumes is None and "does not make app by calling Flower's ServerApp" in result.reason


def test_a_re_exported_server_app_is_followed() -> None:
    assert of("from .real import app\n", real=MESSAGE_API.format(cls="FedAvg")).resumes is True


@pytest.mark.parametrize("case", sorted(HOSTILE_FABS))
def test_a_hostile_fab_gives_an_answer_not_an_exception(case: str) -> None:
    content, _ = HOSTILE_FABS[case]
    result = analyse_fab(content, "mine.server:app")
    assert result.resumes is None and result.reason


def test_every_flower_strategy_is_known() -> None:
    # A new Flower strategy must be looked at (does a restart restore its state?) before it is promised anything.
    assert RESTORED | set(NOT_RESTORED) | {"Result", "Strategy"} == set(flower_strategies.__all__)


def test_a_helper_class_with_state_is_not_taken_for_the_strategy() -> None:
    cls = """class Log:
    def summary(self):
        self.lines.append("done")

class Mine(FedAvg):
    pass
"""
    assert of(CUSTOM.format(cls=cls)).resumes is True


def test_a_subclass_made_at_run_time_keeping_state_is_caught() -> None:
    source = """
from flwr.serverapp import ServerApp
from flwr.serverapp import strategy as fl

app = ServerApp()

def counting(cls):
    def aggregate_train(self, server_round, replies):
        self.rounds_seen += 1
        return cls.aggregate_train(self, server_round, replies)
    return type("Counting", (cls,), {"aggregate_train": aggregate_train})

@app.main()
def main(grid, context):
    counting(fl.FedAvg)().start(grid=grid, initial_arrays=None)
"""
    result = of(source)
    assert result.resumes is None and "keeps state of its own" in result.reason


def test_a_server_app_made_in_one_module_with_its_main_in_another_is_followed() -> None:
    core = "from flwr.serverapp import ServerApp\nserver = ServerApp()\n"
    source = MESSAGE_API.format(cls="FedAvg").replace("app = ServerApp()", "from .core import server as app")
    assert of(source, core=core).resumes is True


def test_more_source_than_is_read_is_unknown_not_slow() -> None:
    big = "x = 1\n" * (MAX_SOURCE_BYTES // 6 + 1)
    source = "from .big import x\n" + MESSAGE_API.format(cls="FedAvg")
    result = of(source, big=big)
    assert result.resumes is None and "KiB of source" in result.reason and "mine/big.py" in result.reason


def test_a_start_of_a_subclass_that_calls_flowers_resumes() -> None:
    cls = """class Mine(FedAvg):
    def start(self, *args, **kwargs):
        print("starting")
        return super().start(*args, **kwargs)
"""
    result = of(CUSTOM.format(cls=cls))
    assert result.resumes is True and "Mine overrides start" in result.reason


def test_a_start_of_a_subclass_that_never_calls_flowers_starts_again_at_round_1() -> None:
    cls = """class Mine(FedAvg):
    def start(self, *args, **kwargs):
        return None
"""
    result = of(CUSTOM.format(cls=cls))
    assert result.resumes is False and "Mine defines its own start()" in result.reason
