"""ClientApp: a NumPyClient behind Flower's secaggplus_mod."""

from flwr.client import Client, ClientApp, NumPyClient
from flwr.client.mod import secaggplus_mod
from flwr.common import Context, NDArrays, Scalar

from fedota_secagg.task import eval_examples, num_examples, step


class StepClient(NumPyClient):
    def __init__(self, partition: int, fail: bool) -> None:
        self.partition = partition
        self.fail = fail

    def fit(self, parameters: NDArrays, config: dict[str, Scalar]) -> tuple[NDArrays, int, dict[str, Scalar]]:
        if self.fail:
            raise RuntimeError("this site cannot train (fail-fit is set)")
        new = [p + d for p, d in zip(parameters, step(self.partition), strict=True)]
        return new, num_examples(self.partition), {"partition-id": self.partition}

    def evaluate(self, parameters: NDArrays, config: dict[str, Scalar]) -> tuple[float, int, dict[str, Scalar]]:
        return float(self.partition + 1), eval_examples(self.partition), {}


def client_fn(context: Context) -> Client:
    fail = bool(context.run_config.get("fail-fit", False))
    return StepClient(int(context.node_config["partition-id"]), fail).to_client()


app = ClientApp(client_fn=client_fn, mods=[secaggplus_mod])
