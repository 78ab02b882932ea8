"""Flower ClientApp (compatibility API: client_fn returning a NumPyClient)."""

from flwr.client import ClientApp, NumPyClient
from flwr.common import Context

from fedota_compat.task import init_params, load_data, loss_and_accuracy, train


class FlowerClient(NumPyClient):
    def __init__(self, train_data, test_data, n_classes, local_epochs, lr):
        self.x_train, self.y_train = train_data
        self.x_test, self.y_test = test_data
        self.n_classes = n_classes
        self.local_epochs = local_epochs
        self.lr = lr

    def get_parameters(self, config):
        return init_params(self.x_train.shape[1], self.n_classes)

    def fit(self, parameters, config):
        params, loss = train(parameters, self.x_train, self.y_train, self.local_epochs, self.lr)
        return params, len(self.y_train), {"train_loss": loss}

    def evaluate(self, parameters, config):
        loss, accuracy = loss_and_accuracy(parameters, self.x_test, self.y_test)
        return loss, len(self.y_test), {"accuracy": accuracy}


def client_fn(context: Context):
    classes = [c.strip() for c in str(context.run_config["classes"]).split(",")]
    train_data, test_data = load_data(
        context.node_config["data-path"],
        context.run_config["label-column"],
        classes,
    )
    return FlowerClient(
        train_data,
        test_data,
        len(classes),
        int(context.run_config["local-epochs"]),
        float(context.run_config["learning-rate"]),
    ).to_client()


app = ClientApp(client_fn=client_fn)
