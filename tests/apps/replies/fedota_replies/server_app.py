"""ServerApp: FedAvg over an int64 model, writing down every train reply it is given (seen.jsonl)."""

import json
from collections.abc import Iterable

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

app = ServerApp()


class RecordingFedAvg(FedAvg):
    """FedAvg that writes what each reply held before aggregating (in the coordinator's state folder)."""

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        with open("seen.jsonl", "a") as fh:
            for reply in replies:
                doc: dict[str, object] = {"round": server_round}
                if reply.has_content():
                    arrays = next(iter(reply.content.array_records.values()))
                    w = arrays["w"].numpy()
                    doc.update(
                        dtype=str(w.dtype),
                        shape=list(w.shape),
                        examples=next(iter(reply.content.metric_records.values()))["num-examples"],
                    )
                else:
                    doc["error"] = reply.error.reason
                fh.write(json.dumps(doc) + "\n")
        return super().aggregate_train(server_round, replies)


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    nodes = int(cfg["min-nodes"])
    strategy = RecordingFedAvg(
        fraction_evaluate=0.0, min_train_nodes=nodes, min_available_nodes=nodes, min_evaluate_nodes=0
    )
    initial = ArrayRecord({"w": Array(np.arange(4, dtype=np.int64))})
    result = strategy.start(
        grid=grid,
        initial_arrays=initial,
        num_rounds=int(cfg["num-server-rounds"]),
        timeout=float(cfg["round-timeout"]),
    )
    # A run in which nothing was aggregated has no final arrays.
    w = (result.arrays if "w" in result.arrays else initial)["w"].numpy()
    with open("final.json", "w") as fh:
        json.dump({"dtype": str(w.dtype), "values": w.tolist()}, fh)
