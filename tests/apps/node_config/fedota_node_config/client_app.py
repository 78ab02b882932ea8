"""ClientApp: report context.node_config in a metric and in a file named after the partition."""

import json
from pathlib import Path

from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    node_config = dict(context.node_config)
    report_dir = str(context.run_config["report-dir"])
    if report_dir:
        path = Path(report_dir) / f"partition-{node_config['partition-id']}.json"
        path.write_text(json.dumps(node_config))
    arrays = next(iter(msg.content.array_records.values()))
    metrics = MetricRecord(
        {
            "num-examples": 1,
            "partition-id": int(node_config["partition-id"]),
            "num-partitions": int(node_config["num-partitions"]),
        }
    )
    return Message(RecordDict({"arrays": arrays, "metrics": metrics}), reply_to=msg)
