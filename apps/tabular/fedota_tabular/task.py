"""Model, data loading and training for the tabular classifier.

Plain functions, no Flower types: the ClientApp/ServerApp wrap them and tests
call them directly.

Feature scaling without sharing data: the model's first layer, `FederatedScaler`,
applies a fixed signed ``log1p`` (tames heavy-tailed measurements such as areas)
and then standardises with the *federation's* mean and variance. It keeps two float
buffers, the per-feature first and second moments. Each client overwrites them
with the exact moments of its own training rows before replying, so the
strategy's weighted mean (weighted by ``num-examples``) turns them into the exact
moments of all training rows: mean = E[x], var = E[x^2] - E[x]^2, including the
between-site spread that a per-site standardisation would miss. Training and
evaluation both normalise with the buffers received from the server, so the two
never disagree (unlike BatchNorm's batch statistics, which on a label-skewed
site would wash out part of the class signal). The buffers are plain float32
arrays in the state_dict, so every strategy (means, medians, Krum distances,
server optimisers) handles them like any other parameter.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

# Mirrors [tool.flwr.app.config] in pyproject.toml (a test checks they agree).
# Used when a key is missing from the run config and by `heldout_accuracy`.
DEFAULT_RUN_CONFIG: dict[str, Any] = {
    "num-server-rounds": 5,
    "label-column": "diagnosis",
    "classes": "benign,malignant",
    "feature-columns": "",
    "num-features": 30,
    "local-epochs": 5,
    "batch-size": 32,
    "learning-rate": 0.02,
    "weight-decay": 0.01,
    "hidden-units": 16,
    "eval-fraction": 0.2,
    "seed": 0,
    "fraction-train": 1.0,
    "fraction-evaluate": 1.0,
    "min-available-nodes": 2,
    "clients-per-round": 0,
    "strategy": "FedAvg",
    "proximal-mu": 0.1,
    "server-learning-rate": 1.0,
    "server-momentum": 0.9,
    "fedopt-eta": 0.05,
    "fedopt-tau": 0.001,
    "num-malicious-nodes": 0,
    "num-nodes-to-select": 2,
    "trim-beta": 0.2,
    "round-timeout": 600.0,
    "model-out": "",
    "metrics-out": "",
}


# ---------------------------------------------------------------- run config


def cfg_value(run_config: Mapping[str, Any] | None, key: str) -> Any:
    """Return ``run_config[key]``, falling back to the app's default."""
    if run_config is not None and key in run_config:
        return run_config[key]
    return DEFAULT_RUN_CONFIG[key]


def cfg_int(run_config: Mapping[str, Any] | None, key: str) -> int:
    return int(cfg_value(run_config, key))


def cfg_float(run_config: Mapping[str, Any] | None, key: str) -> float:
    return float(cfg_value(run_config, key))


def cfg_str(run_config: Mapping[str, Any] | None, key: str) -> str:
    return str(cfg_value(run_config, key)).strip()


def cfg_list(run_config: Mapping[str, Any] | None, key: str) -> list[str]:
    """A comma-separated run-config string as a list (empty string -> [])."""
    return [part.strip() for part in cfg_str(run_config, key).split(",") if part.strip()]


def class_names(run_config: Mapping[str, Any] | None) -> list[str]:
    classes = cfg_list(run_config, "classes")
    if len(classes) < 2:
        raise ValueError("run config 'classes' must name at least two classes")
    return classes


def num_features(run_config: Mapping[str, Any] | None) -> int:
    """Input width: the explicit feature list if given, else ``num-features``."""
    features = cfg_list(run_config, "feature-columns")
    return len(features) if features else cfg_int(run_config, "num-features")


# ---------------------------------------------------------------------- data


def _csv_files(folder: Path) -> list[Path]:
    files = sorted(p for p in Path(folder).rglob("*.csv") if p.is_file())
    if not files:
        raise FileNotFoundError(f"no *.csv files in {folder}")
    return files


def _to_float(value: str) -> float:
    value = value.strip()
    if value == "":
        return math.nan
    return float(value)


def load_table(folder: Path, run_config: Mapping[str, Any] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Read every ``*.csv`` under ``folder`` into ``(x, y)``.

    ``x`` is float32 ``(n, n_features)`` with features in the order of
    ``feature-columns`` or, if that is empty, every column except the label in
    alphabetical order (so sites whose CSV columns are ordered differently still
    agree). ``y`` is int64 class indices in the order of ``classes``. Empty cells
    are filled with the column's mean over the loaded rows.
    """
    label = cfg_str(run_config, "label-column")
    classes = class_names(run_config)
    class_index = {name: i for i, name in enumerate(classes)}
    features = cfg_list(run_config, "feature-columns")

    xs: list[list[float]] = []
    ys: list[int] = []
    for path in _csv_files(folder):
        with path.open(newline="") as fh:
            reader = csv.DictReader(fh)
            header = [h.strip() for h in (reader.fieldnames or [])]
            if label not in header:
                raise ValueError(f"{path}: label column {label!r} not found")
            cols = features or sorted(h for h in header if h != label)
            missing = [c for c in cols if c not in header]
            if missing:
                raise ValueError(f"{path}: missing feature columns {missing}")
            if not features:
                features = cols
            for lineno, raw in enumerate(reader, start=2):
                row = {k.strip(): (v or "") for k, v in raw.items() if k is not None}
                target = row[label].strip()
                if target not in class_index:
                    raise ValueError(f"{path}:{lineno}: label {target!r} is not one of {classes}")
                try:
                    xs.append([_to_float(row[c]) for c in cols])
                except ValueError as err:
                    raise ValueError(f"{path}:{lineno}: {err}") from None
                ys.append(class_index[target])
    if not ys:
        raise ValueError(f"no rows in the *.csv files of {folder}")
    x = np.asarray(xs, dtype=np.float64)
    if np.isnan(x).any():
        col_mean = np.nanmean(np.where(np.isnan(x).all(0), 0.0, x), axis=0)
        x = np.where(np.isnan(x), col_mean, x)
    return x.astype(np.float32), np.asarray(ys, dtype=np.int64)


def split_local(n: int, eval_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split of ``range(n)`` into (train, eval) indices.

    The same rows are held out in every round. With too few rows for both, all
    rows are used for training and evaluation alike.
    """
    order = np.random.default_rng(seed).permutation(n)
    n_eval = int(round(n * eval_fraction))
    if n_eval < 1 or n - n_eval < 1:
        return order, order
    return order[n_eval:], order[:n_eval]


# --------------------------------------------------------------------- model


def signed_log1p(x: torch.Tensor) -> torch.Tensor:
    return torch.sign(x) * torch.log1p(torch.abs(x))


class FederatedScaler(nn.Module):
    """``signed_log1p`` then standardise with federated first/second moments."""

    def __init__(self, n_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.register_buffer("mean", torch.zeros(n_features))
        self.register_buffer("sq_mean", torch.ones(n_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = signed_log1p(x)
        var = torch.clamp(self.sq_mean - self.mean**2, min=0.0)
        return (z - self.mean) / torch.sqrt(var + self.eps)

    def is_initial(self) -> bool:
        """True while the buffers still hold their initial (uninformed) values."""
        return bool(torch.all(self.mean == 0) and torch.all(self.sq_mean == 1))

    @torch.no_grad()
    def set_moments(self, x: torch.Tensor) -> None:
        """Set the buffers to the exact moments of the rows ``x``."""
        z = signed_log1p(x)
        self.mean.copy_(z.mean(0))
        self.sq_mean.copy_((z**2).mean(0))


class TabularMLP(nn.Module):
    """Scaler, then a one-hidden-layer ReLU MLP plus a linear skip connection.

    The linear path keeps the model close to logistic regression on small tables
    (less overfitting), the hidden layer adds interactions.
    """

    def __init__(self, n_features: int, n_classes: int, hidden: int) -> None:
        super().__init__()
        self.scaler = FederatedScaler(n_features)
        self.net = nn.Sequential(
            nn.Linear(n_features, hidden),
            nn.ReLU(),
            nn.Linear(hidden, n_classes),
        )
        self.skip = nn.Linear(n_features, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.scaler(x)
        return self.net(z) + self.skip(z)


def build_model(n_features: int, n_classes: int, hidden: int) -> nn.Module:
    """The classifier: raw features in, class logits out."""
    return TabularMLP(int(n_features), int(n_classes), int(hidden))


def model_from_run_config(run_config: Mapping[str, Any] | None) -> nn.Module:
    return build_model(
        num_features(run_config),
        len(class_names(run_config)),
        cfg_int(run_config, "hidden-units"),
    )


def load_arrays(model: nn.Module, arrays: Mapping[str, Any]) -> None:
    """Load numpy/torch arrays keyed like ``model.state_dict()`` into ``model``.

    Values are cast to each entry's dtype (aggregation may return float64).
    """
    own = model.state_dict()
    missing = sorted(set(own) - set(arrays))
    unexpected = sorted(set(arrays) - set(own))
    if missing or unexpected:
        raise ValueError(f"arrays do not fit the model: missing {missing}, unexpected {unexpected}")
    state = {}
    for key, ref in own.items():
        value = torch.as_tensor(np.asarray(arrays[key]))
        if tuple(value.shape) != tuple(ref.shape):
            raise ValueError(
                f"array {key!r} has shape {tuple(value.shape)}, "
                f"the model expects {tuple(ref.shape)} (check the run config)"
            )
        state[key] = value.to(ref.dtype)
    model.load_state_dict(state)


# ------------------------------------------------------------------ training


def train(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float = 0.0,
    proximal_mu: float = 0.0,
    seed: int = 0,
) -> float:
    """Train in place; returns the mean training loss of the last epoch.

    Normalises with the scaler buffers received from the server (or, before the
    federation has any, with this site's own moments), then leaves the site's
    exact moments in the buffers for aggregation. With ``proximal_mu > 0`` adds
    FedProx's ``mu/2 * ||w - w_global||^2``.
    """
    torch.manual_seed(seed)
    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    yt = torch.from_numpy(np.ascontiguousarray(y, dtype=np.int64))
    scaler: FederatedScaler = model.scaler  # type: ignore[assignment]
    if scaler.is_initial():
        scaler.set_moments(xt)
    global_params = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    n = len(yt)
    batch_size = max(1, min(batch_size, n))
    last_epoch_loss = 0.0
    for _ in range(max(1, epochs)):
        perm = torch.randperm(n)
        total, seen = 0.0, 0
        for start in range(0, n, batch_size):
            idx = perm[start : start + batch_size]
            optimizer.zero_grad()
            loss = loss_fn(model(xt[idx]), yt[idx])
            total += float(loss.detach()) * len(idx)
            seen += len(idx)
            if proximal_mu > 0:
                prox = sum(torch.sum((p - g) ** 2) for p, g in zip(model.parameters(), global_params, strict=True))
                loss = loss + 0.5 * proximal_mu * prox
            loss.backward()
            optimizer.step()
        last_epoch_loss = total / max(1, seen)
    scaler.set_moments(xt)
    return last_epoch_loss


@torch.no_grad()
def evaluate(model: nn.Module, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Return ``(mean cross-entropy, accuracy)`` on ``(x, y)``."""
    model.eval()
    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    yt = torch.from_numpy(np.ascontiguousarray(y, dtype=np.int64))
    logits = model(xt)
    loss = float(nn.functional.cross_entropy(logits, yt))
    acc = float((logits.argmax(1) == yt).float().mean())
    return loss, acc


# ------------------------------------------------------------------ held-out


def _infer_shape(arrays: Mapping[str, np.ndarray]) -> tuple[int, int, int]:
    linears = sorted(
        (k for k in arrays if k.startswith("net.") and k.endswith(".weight")),
        key=lambda k: int(k.split(".")[1]),
    )
    if not linears:
        raise ValueError("not a tabular model: no 'net.<i>.weight' arrays")
    first, last = arrays[linears[0]], arrays[linears[-1]]
    return int(first.shape[1]), int(last.shape[0]), int(first.shape[0])


def load_npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(Path(path), allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def heldout_accuracy(
    model_npz: Path,
    heldout_folder: Path,
    run_config: Mapping[str, Any] | None = None,
) -> float:
    """Accuracy of a saved model (``.npz`` of its state_dict) on held-out CSVs.

    The architecture is read off the arrays' shapes; ``run_config`` supplies the
    label column, the class order and the feature columns (app defaults if None).
    """
    arrays = load_npz(model_npz)
    n_features, n_classes, hidden = _infer_shape(arrays)
    model = build_model(n_features, n_classes, hidden)
    load_arrays(model, arrays)
    x, y = load_table(Path(heldout_folder), run_config)
    if x.shape[1] != n_features:
        raise ValueError(f"held-out data has {x.shape[1]} features, the model expects {n_features}")
    return evaluate(model, x, y)[1]


def save_npz(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **{k: np.asarray(v) for k, v in arrays.items()})
