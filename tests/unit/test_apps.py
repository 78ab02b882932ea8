"""The example Flower apps and the demo data, without any network.

Each app is built into a FAB (proves its pyproject is valid), its ClientApp is
driven directly with Messages, and short federations run in-process through a
`LocalGrid` that hands every Message straight to a ClientApp.
"""

from __future__ import annotations

import copy
import csv
import importlib
import io
import json
import logging
import sys
import tomllib
import uuid
import zipfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.cli.build import build_fab_from_disk
from flwr.serverapp import Grid
from flwr.supercore.run import Run
from PIL import Image

pytestmark = pytest.mark.usefixtures("task_identity")

ROOT = Path(__file__).resolve().parents[2]
APPS = {
    "tabular": ROOT / "apps" / "tabular",
    "image": ROOT / "apps" / "image",
    "compat": ROOT / "tests" / "apps" / "compat_numpy",
    "echo": ROOT / "tests" / "apps" / "echo",
}
PACKAGES = {
    "tabular": "fedota_tabular",
    "image": "fedota_image",
    "compat": "fedota_compat",
    "echo": "fedota_echo",
}
for _path in [ROOT, *APPS.values()]:
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from scripts.make_demo_data import make_breast_cancer, make_digits  # noqa: E402

HOLDERS = 4


# ------------------------------------------------------------------ helpers


def app_pyproject(name: str) -> dict[str, Any]:
    return tomllib.loads((APPS[name] / "pyproject.toml").read_text())


def app_run_config(name: str, **overrides: Any) -> dict[str, Any]:
    config = dict(app_pyproject(name)["tool"]["flwr"]["app"]["config"])
    config.update(overrides)
    return config


def load_component(name: str, component: str) -> Any:
    ref = app_pyproject(name)["tool"]["flwr"]["app"]["components"][component]
    module, attr = ref.split(":")
    return getattr(importlib.import_module(module), attr)


def node_context(data_path: Path, run_config: Mapping[str, Any], partition: int = 0):
    return Context(
        run_id=1,
        node_id=100 + partition,
        node_config={
            "data-path": str(data_path),
            "partition-id": partition,
            "num-partitions": HOLDERS,
        },
        state=RecordDict(),
        run_config=dict(run_config),
    )


def instruction(content: RecordDict, message_type: str) -> Message:
    msg = Message(content=content, dst_node_id=100, message_type=message_type)
    msg.metadata.__dict__["_message_id"] = uuid.uuid4().hex
    return msg


def only_metrics(reply: Message) -> MetricRecord:
    records = list(reply.content.metric_records.values())
    assert len(records) == 1, "a reply must carry exactly one MetricRecord"
    return records[0]


class LocalGrid(Grid):
    """A Grid that delivers each Message to an in-process ClientApp."""

    def __init__(self, nodes: Mapping[int, tuple[Any, Context]]) -> None:
        self._nodes = dict(nodes)
        self._run = Run.create_empty(1)
        self._replies: dict[str, Message] = {}
        self.delivered: list[Message] = []
        self.replied: list[Message] = []

    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run:
        return self._run

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None):
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return list(self._nodes)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for msg in messages:
            msg_id = uuid.uuid4().hex
            msg.metadata.__dict__["_message_id"] = msg_id
            client_app, context = self._nodes[msg.metadata.dst_node_id]
            delivered = Message(
                metadata=copy.deepcopy(msg.metadata),
                content=copy.deepcopy(msg.content),
            )
            self.delivered.append(delivered)
            reply = client_app(delivered, context)
            self.replied.append(reply)
            reply.metadata.__dict__["_message_id"] = uuid.uuid4().hex
            self._replies[msg_id] = reply
            ids.append(msg_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self._replies.pop(i) for i in list(message_ids) if i in self._replies]

    def send_and_receive(self, messages, *, timeout=None):
        return self.pull_messages(self.push_messages(messages))


def run_federation(
    name: str, data_dirs: list[Path], overrides: Mapping[str, Any] | None = None
) -> tuple[LocalGrid, dict[str, Any]]:
    run_config = app_run_config(name, **(overrides or {}))
    client_app = load_component(name, "clientapp")
    server_app = load_component(name, "serverapp")
    nodes = {100 + i: (client_app, node_context(d, run_config, i)) for i, d in enumerate(data_dirs)}
    grid = LocalGrid(nodes)
    server_context = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=run_config)
    server_app(grid, server_context)
    return grid, run_config


# ----------------------------------------------------------------- fixtures


@pytest.fixture(autouse=True)
def quiet_flower() -> Iterator[None]:
    logger = logging.getLogger("flwr")
    level = logger.level
    logger.setLevel(logging.WARNING)
    yield
    logger.setLevel(level)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("demo")
    return {
        "breast_cancer": make_breast_cancer(out, HOLDERS, seed=0),
        "digits": make_digits(out, HOLDERS, seed=0),
    }


def holders(dataset: Path) -> list[Path]:
    return sorted(p for p in (dataset / "clients").iterdir() if p.is_dir())


def read_rows(path: Path) -> tuple[list[str], list[list[str]]]:
    with path.open(newline="") as fh:
        rows = list(csv.reader(fh))
    return rows[0], rows[1:]


# ---------------------------------------------------------------- the FABs


@pytest.mark.parametrize("name", list(APPS))
def test_app_builds_into_a_fab(name: str) -> None:
    fab = build_fab_from_disk(APPS[name])
    files = zipfile.ZipFile(io.BytesIO(fab)).namelist()
    package = PACKAGES[name]
    assert "pyproject.toml" in files
    for module in ("__init__", "client_app", "server_app"):
        assert f"{package}/{module}.py" in files
    flwr_app = app_pyproject(name)["tool"]["flwr"]["app"]
    assert flwr_app["publisher"]
    assert flwr_app["components"] == {
        "serverapp": f"{package}.server_app:app",
        "clientapp": f"{package}.client_app:app",
    }
    deps = app_pyproject(name)["project"]["dependencies"]
    assert "flwr==1.41.0" in deps


@pytest.mark.parametrize("name", ["tabular", "image"])
def test_task_defaults_mirror_pyproject(name: str) -> None:
    task = importlib.import_module(f"{PACKAGES[name]}.task")
    assert task.DEFAULT_RUN_CONFIG == app_run_config(name)


# --------------------------------------------------------------- demo data


def test_breast_cancer_demo_data_is_non_iid_and_disjoint(demo) -> None:
    root = demo["breast_cancer"]
    contract = json.loads((root / "contract.json").read_text())
    assert contract["kind"] == "tabular"
    assert contract["files"] == "*.csv"
    assert contract["label"] == "diagnosis"
    fields = {f["name"]: f for f in contract["schema"]["fields"]}
    assert fields["mean_radius"] == {
        "name": "mean_radius",
        "type": "number",
        "constraints": {"required": True, "minimum": 0},
    }
    assert fields["diagnosis"]["constraints"]["enum"] == ["benign", "malignant"]
    assert len(fields) == 31

    sites = holders(root)
    assert [p.name for p in sites] == [f"hospital_{i}" for i in range(HOLDERS)]
    seen: set[tuple[str, ...]] = set()
    sizes, malignant_share = [], []
    for site in sites:
        header, rows = read_rows(site / "records.csv")
        assert header == list(fields)
        labels = [r[-1] for r in rows]
        assert len(rows) >= 40
        assert {"benign", "malignant"} <= set(labels)
        sizes.append(len(rows))
        malignant_share.append(labels.count("malignant") / len(rows))
        site_rows = {tuple(r) for r in rows}
        assert not seen & site_rows, "holders must not share rows"
        seen |= site_rows
    _, heldout = read_rows(root / "heldout" / "records.csv")
    heldout_rows = {tuple(r) for r in heldout}
    assert not seen & heldout_rows, "the held-out split must stay out of every holder"
    assert len(seen) + len(heldout_rows) == 569
    assert len(heldout) == 114
    # non-IID: different sizes and clearly different class balance
    assert len(set(sizes)) == HOLDERS
    assert max(malignant_share) - min(malignant_share) > 0.25


def test_digits_demo_data_is_non_iid_and_disjoint(demo) -> None:
    root = demo["digits"]
    contract = json.loads((root / "contract.json").read_text())
    assert contract == {
        "kind": "image-folder",
        "classes": [str(d) for d in range(10)],
        "extensions": [".png"],
        "image_size": [8, 8],
        "mode": "L",
        "min_images": 10,
    }
    seen: set[str] = set()
    shares = []
    for site in holders(root):
        files = sorted(site.glob("*/*.png"))
        assert len(files) >= contract["min_images"]
        names = {f.name for f in files}
        assert not seen & names
        seen |= names
        counts = np.array([len(list((site / str(d)).glob("*.png"))) for d in range(10)])
        shares.append(counts / counts.sum())
    heldout = {f.name for f in (root / "heldout").glob("*/*.png")}
    assert not seen & heldout
    assert len(seen) + len(heldout) == 1797
    # label skew: some digit's share differs a lot between sites
    shares_arr = np.array(shares)
    assert (shares_arr.max(0) - shares_arr.min(0)).max() > 0.15
    with Image.open(next((root / "heldout" / "3").glob("*.png"))) as img:
        assert img.mode == "L"
        assert img.size == (8, 8)
        assert np.asarray(img).dtype == np.uint8


def test_demo_data_is_idempotent(tmp_path: Path) -> None:
    first = make_breast_cancer(tmp_path, 3, seed=5)
    (first / "clients" / "stale_file").write_text("x")
    again = make_breast_cancer(tmp_path, 3, seed=5)
    assert not (again / "clients" / "stale_file").exists()
    assert len(holders(again)) == 3


# ---------------------------------------------------- ClientApps, directly


def _train_message(arrays: ArrayRecord, **config: Any) -> Message:
    content = RecordDict({"arrays": arrays, "config": ConfigRecord({"server-round": 1, **config})})
    return instruction(content, MessageType.TRAIN)


def _evaluate_message(arrays: ArrayRecord) -> Message:
    content = RecordDict({"arrays": arrays, "config": ConfigRecord({"server-round": 1})})
    return instruction(content, MessageType.EVALUATE)


@pytest.mark.parametrize(("name", "dataset"), [("tabular", "breast_cancer"), ("image", "digits")])
def test_torch_client_train_and_evaluate(demo, name: str, dataset: str) -> None:
    task = importlib.import_module(f"{PACKAGES[name]}.task")
    client_app = load_component(name, "clientapp")
    run_config = app_run_config(name)
    context = node_context(holders(demo[dataset])[0], run_config)
    model = task.model_from_run_config(run_config)
    initial = ArrayRecord(model.state_dict())

    reply = client_app(_train_message(initial), context)
    assert not reply.has_error()
    assert len(reply.content.array_records) == 1
    arrays = next(iter(reply.content.array_records.values()))
    assert set(arrays) == set(model.state_dict())
    metrics = only_metrics(reply)
    assert set(metrics) == {"num-examples", "train_loss"}
    assert metrics["num-examples"] > 0
    assert np.isfinite(metrics["train_loss"])
    changed = [k for k in arrays if not np.array_equal(arrays[k].numpy(), initial[k].numpy())]
    assert changed, "training must change the model"

    reply = client_app(_evaluate_message(arrays), context)
    assert not reply.has_error()
    assert len(reply.content.array_records) == 0
    metrics = only_metrics(reply)
    assert set(metrics) == {"num-examples", "eval_loss", "eval_acc"}
    assert 0.0 <= metrics["eval_acc"] <= 1.0


@pytest.mark.parametrize(("name", "dataset"), [("tabular", "breast_cancer"), ("image", "digits")])
def test_fedprox_term_comes_from_the_train_config(demo, name: str, dataset: str) -> None:
    task = importlib.import_module(f"{PACKAGES[name]}.task")
    client_app = load_component(name, "clientapp")
    run_config = app_run_config(name, **{"local-epochs": 2})
    context = node_context(holders(demo[dataset])[1], run_config, partition=1)
    initial = ArrayRecord(task.model_from_run_config(run_config).state_dict())

    def drift(**config: Any) -> float:
        reply = client_app(_train_message(initial, **config), context)
        arrays = next(iter(reply.content.array_records.values()))
        return sum(float(np.sum((arrays[k].numpy() - initial[k].numpy()) ** 2)) for k in arrays if "weight" in k)

    assert drift(**{"proximal-mu": 10.0}) < drift()


def test_tabular_heldout_accuracy_and_load_table(demo, tmp_path: Path) -> None:
    from fedota_tabular import task

    x, y = task.load_table(holders(demo["breast_cancer"])[0], task.DEFAULT_RUN_CONFIG)
    assert x.shape[1] == 30 and x.dtype == np.float32
    assert set(np.unique(y)) == {0, 1}
    model = task.build_model(30, 2, 8)
    task.train(model, x, y, epochs=20, batch_size=32, lr=0.02)
    npz = tmp_path / "model.npz"
    task.save_npz(npz, {k: v.numpy() for k, v in model.state_dict().items()})
    acc = task.heldout_accuracy(npz, demo["breast_cancer"] / "heldout")
    assert 0.8 <= acc <= 1.0


def test_tabular_rejects_unknown_labels(tmp_path: Path) -> None:
    from fedota_tabular import task

    (tmp_path / "a.csv").write_text("f1,diagnosis\n1.0,benign\n2.0,unsure\n")
    with pytest.raises(ValueError, match="unsure"):
        task.load_table(tmp_path, {"feature-columns": "f1"})


@pytest.mark.parametrize("name", ["tabular", "image"])
def test_strategy_selection(name: str) -> None:
    strategy = importlib.import_module(f"{PACKAGES[name]}.strategy")
    for strategy_name, cls in strategy.STRATEGIES.items():
        built = strategy.make_strategy(app_run_config(name, strategy=strategy_name.lower()), ["scaler.mean"])
        assert isinstance(built, cls)
        assert type(built).__name__ == strategy_name
    prox = strategy.make_strategy(app_run_config(name, strategy="FedProx", **{"proximal-mu": 0.3}))
    assert prox.proximal_mu == 0.3
    with pytest.raises(ValueError, match="FedAvg, FedProx, FedAvgM"):
        strategy.make_strategy(app_run_config(name, strategy="FedMagic"))


@pytest.mark.parametrize("name", ["tabular", "image"])
def test_one_reply_with_other_metric_keys_costs_that_reply_not_the_run(name: str) -> None:
    """Flower's FedAvg raises on replies whose metric keys differ (failing the run); ours leaves the odd one out."""
    from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict
    from flwr.serverapp import strategy as fl

    strategy = importlib.import_module(f"{PACKAGES[name]}.strategy")

    def reply(node: int, value: float, **metrics: Any) -> Message:
        instruction = Message(RecordDict(), dst_node_id=node, message_type="train")
        arrays = ArrayRecord({"w": Array(np.full(3, value, dtype=np.float32))})
        content = RecordDict({"arrays": arrays, "metrics": MetricRecord({"num-examples": 10, **metrics})})
        return Message(content, reply_to=instruction)

    honest = [reply(n, float(n), train_loss=0.5) for n in (1, 2, 3)]
    odd = [reply(4, 100.0, train_loss=0.5, extra=1.0), reply(5, 100.0, train_loss=[0.5, 0.4])]
    with pytest.raises(Exception, match="same keys"):
        fl.FedAvg().aggregate_train(1, honest + odd[:1])
    built = strategy.make_strategy(app_run_config(name, strategy="FedAvg"))
    arrays, metrics = built.aggregate_train(1, honest + odd)
    assert arrays is not None and np.allclose(arrays["w"].numpy(), 2.0)  # the mean of 1, 2, 3 only
    assert metrics is not None and metrics["train_loss"] == pytest.approx(0.5)
    # Evaluation too; replies that agree pass untouched, errors included.
    assert built.aggregate_evaluate(1, honest + odd) is not None
    assert strategy.consistent_replies(honest) == honest


def test_compat_client_answers_legacy_messages(demo) -> None:
    from flwr.common import (
        EvaluateIns,
        FitIns,
        GetParametersIns,
        ndarrays_to_parameters,
        parameters_to_ndarrays,
    )
    from flwr.compat.common.recorddict_compat import (
        evaluateins_to_recorddict,
        fitins_to_recorddict,
        getparametersins_to_recorddict,
        recorddict_to_evaluateres,
        recorddict_to_fitres,
        recorddict_to_getparametersres,
    )

    client_app = load_component("compat", "clientapp")
    context = node_context(holders(demo["breast_cancer"])[0], app_run_config("compat"))

    content = getparametersins_to_recorddict(GetParametersIns(config={}))
    reply = client_app(instruction(content, "get_parameters"), context)
    res = recorddict_to_getparametersres(reply.content, keep_input=False)
    params = parameters_to_ndarrays(res.parameters)
    assert [p.shape for p in params] == [(30, 2), (2,)]

    fit_ins = FitIns(ndarrays_to_parameters(params), {})
    reply = client_app(
        instruction(fitins_to_recorddict(fit_ins, keep_input=True), MessageType.TRAIN),
        context,
    )
    fit_res = recorddict_to_fitres(reply.content, keep_input=False)
    assert fit_res.num_examples > 0
    assert set(fit_res.metrics) == {"train_loss"}
    trained = parameters_to_ndarrays(fit_res.parameters)
    assert not np.allclose(trained[0], 0)

    eval_ins = EvaluateIns(ndarrays_to_parameters(trained), {})
    reply = client_app(
        instruction(evaluateins_to_recorddict(eval_ins, keep_input=True), MessageType.EVALUATE),
        context,
    )
    eval_res = recorddict_to_evaluateres(reply.content)
    assert eval_res.num_examples > 0
    assert 0.5 <= eval_res.metrics["accuracy"] <= 1.0


def test_echo_client_returns_arrays_unchanged(tmp_path: Path) -> None:
    from fedota_echo.server_app import make_arrays

    client_app = load_component("echo", "clientapp")
    arrays = make_arrays(0.5)
    assert sum(a.numpy().nbytes for a in arrays.values()) == 512 * 1024
    context = node_context(tmp_path, app_run_config("echo"))
    reply = client_app(_train_message(arrays), context)
    out = next(iter(reply.content.array_records.values()))
    assert np.array_equal(out["weights"].numpy(), arrays["weights"].numpy())
    assert dict(only_metrics(reply)) == {"num-examples": 1, "train_loss": 0.0}


# ------------------------------------------------- in-process federations


def test_tabular_federation_reaches_target(demo, tmp_path: Path) -> None:
    from fedota_tabular import task

    root = demo["breast_cancer"]
    model_out, metrics_out = tmp_path / "model.npz", tmp_path / "metrics.json"
    grid, run_config = run_federation(
        "tabular",
        holders(root),
        {"model-out": str(model_out), "metrics-out": str(metrics_out)},
    )
    rounds = run_config["num-server-rounds"]
    assert len(grid.delivered) == 2 * HOLDERS * rounds
    history = json.loads(metrics_out.read_text())
    assert set(history["train"]) == {str(r) for r in range(1, rounds + 1)}
    assert set(history["evaluate"][str(rounds)]) == {"eval_loss", "eval_acc"}
    assert task.heldout_accuracy(model_out, root / "heldout", run_config) >= 0.90


@pytest.mark.parametrize("strategy", ["FedAvgM", "FedAdam", "FedMedian", "Krum"])
def test_tabular_federation_with_other_strategies(demo, tmp_path: Path, strategy: str) -> None:
    from fedota_tabular import task

    root = demo["breast_cancer"]
    model_out = tmp_path / "model.npz"
    run_federation(
        "tabular",
        holders(root),
        {"strategy": strategy, "num-server-rounds": 3, "model-out": str(model_out)},
    )
    assert task.heldout_accuracy(model_out, root / "heldout") >= 0.80


def test_image_federation_reaches_target(demo, tmp_path: Path) -> None:
    from fedota_image import task

    root = demo["digits"]
    model_out = tmp_path / "model.npz"
    run_federation("image", holders(root), {"model-out": str(model_out)})
    assert task.heldout_accuracy(model_out, root / "heldout") >= 0.85


def test_compat_federation_runs(demo) -> None:
    grid, run_config = run_federation("compat", holders(demo["breast_cancer"]), {"num-server-rounds": 2})
    types = [m.metadata.message_type for m in grid.delivered]
    assert types.count(MessageType.TRAIN) == 2 * HOLDERS
    assert types.count(MessageType.EVALUATE) == 2 * HOLDERS


def test_echo_federation_sends_arrays_back_unchanged(tmp_path: Path) -> None:
    grid, _ = run_federation("echo", [tmp_path] * 3, {"model-size-mb": 0.25, "num-server-rounds": 2})
    assert [m.metadata.message_type for m in grid.delivered] == [MessageType.TRAIN] * 6
    for sent, reply in zip(grid.delivered, grid.replied, strict=True):
        received = next(iter(sent.content.array_records.values()))["weights"]
        echoed = next(iter(reply.content.array_records.values()))["weights"]
        assert received.numpy().nbytes == 256 * 1024
        np.testing.assert_array_equal(received.numpy(), echoed.numpy())
        assert dict(only_metrics(reply)) == {"num-examples": 1, "train_loss": 0.0}
