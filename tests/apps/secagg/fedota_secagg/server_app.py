"""ServerApp: FedAvg through Flower's DefaultWorkflow, with SecAggPlusWorkflow as its fit workflow.

It writes the global model after every round (models.jsonl), each round's plaintext
fit results (fit.jsonl) and the final model with the federated losses (final.json) into
its working folder, which on Fedota is the coordinator's state folder.
"""

import json

from flwr.common import Context, Metrics, NDArrays, Scalar, ndarrays_to_parameters
from flwr.server import Grid, LegacyContext, ServerApp, ServerConfig
from flwr.server.strategy import FedAvg
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow

from fedota_secagg.task import initial_model

app = ServerApp()

latest: dict[str, object] = {}


def record_model(server_round: int, parameters: NDArrays, config: dict[str, Scalar]) -> None:
    """Centralised "evaluation": write down the global model after each round (0: the initial one)."""
    doc = {"round": server_round, "arrays": [a.tolist() for a in parameters]}
    latest.update(doc)
    with open("models.jsonl", "a") as fh:
        fh.write(json.dumps(doc) + "\n")


def record_fit(metrics: list[tuple[int, Metrics]]) -> Metrics:
    """Once per round: what SecAgg+ leaves in plaintext, each client's num_examples and metrics."""
    with open("fit.jsonl", "a") as fh:
        fh.write(json.dumps([{"examples": n, **m} for n, m in metrics]) + "\n")
    return {}


class RecordingGrid:
    """Writes down what every train reply the ServerApp receives holds (replies.jsonl).

    On Fedota the ServerApp runs in the coordinator, so this is what the coordinator holds:
    the test of client-side DP under SecAgg+ checks that no reply carries a site's update.
    """

    def __init__(self, grid: Grid) -> None:
        self.grid = grid

    def __getattr__(self, name: str) -> object:
        return getattr(self.grid, name)

    def send_and_receive(self, messages, *args, **kwargs):  # type: ignore[no-untyped-def]
        replies = list(self.grid.send_and_receive(messages, *args, **kwargs))
        with open("replies.jsonl", "a") as fh:
            for reply in replies:
                if reply.metadata.message_type != "train" or reply.has_error():
                    continue
                content = reply.content
                doc = {
                    "node_id": reply.metadata.src_node_id,
                    "arrays": sum(len(rec) for rec in content.array_records.values()),
                    "configs": {name: sorted(rec.keys()) for name, rec in content.config_records.items()},
                }
                fh.write(json.dumps(doc) + "\n")
        return replies


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    clients = int(cfg["min-available-clients"])
    strategy = FedAvg(
        fraction_fit=float(cfg["fraction-fit"]),
        fraction_evaluate=1.0,
        min_fit_clients=2,
        min_evaluate_clients=clients,
        min_available_clients=clients,
        initial_parameters=ndarrays_to_parameters(initial_model()),
        evaluate_fn=record_model,
        fit_metrics_aggregation_fn=record_fit,
    )
    legacy = LegacyContext(
        context=context,
        config=ServerConfig(num_rounds=int(cfg["num-server-rounds"])),
        strategy=strategy,
    )
    workflow = DefaultWorkflow(
        fit_workflow=SecAggPlusWorkflow(
            num_shares=int(cfg["num-shares"]),
            reconstruction_threshold=int(cfg["reconstruction-threshold"]),
        )
    )
    workflow(RecordingGrid(grid) if cfg.get("record-replies") else grid, legacy)
    with open("final.json", "w") as fh:
        json.dump({"model": latest, "losses_distributed": legacy.history.losses_distributed}, fh)
