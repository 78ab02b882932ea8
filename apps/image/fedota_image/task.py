"""Model, data loading and training for the image classifier.

Plain functions, no Flower types: the ClientApp/ServerApp wrap them and tests
call them directly. Images are read from an image folder (one sub-folder per
class, named as in the run config's ``classes``), converted to grayscale,
resized to ``image-size`` x ``image-size`` and scaled to [-1, 1] with a fixed
transform, so no statistics need to be shared between sites.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff")

# Mirrors [tool.flwr.app.config] in pyproject.toml (a test checks they agree).
# Used when a key is missing from the run config and by `heldout_accuracy`.
DEFAULT_RUN_CONFIG: dict[str, Any] = {
    "num-server-rounds": 5,
    "classes": "0,1,2,3,4,5,6,7,8,9",
    "image-size": 8,
    "local-epochs": 3,
    "batch-size": 32,
    "learning-rate": 0.003,
    "weight-decay": 0.0001,
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
    "fedopt-eta": 0.01,
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


def class_names(run_config: Mapping[str, Any] | None) -> list[str]:
    classes = [c.strip() for c in cfg_str(run_config, "classes").split(",")]
    classes = [c for c in classes if c]
    if len(classes) < 2:
        raise ValueError("run config 'classes' must name at least two classes")
    return classes


# ---------------------------------------------------------------------- data


def load_images(folder: Path, run_config: Mapping[str, Any] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Read ``folder/<class>/*`` into ``(x, y)``.

    ``x`` is float32 ``(n, 1, size, size)`` in [-1, 1], ``y`` int64 class
    indices in the order of ``classes``. A class without a sub-folder simply has
    no images here (label skew); sub-folders that are not classes are ignored.
    """
    folder = Path(folder)
    size = cfg_int(run_config, "image-size")
    xs: list[np.ndarray] = []
    ys: list[int] = []
    for index, name in enumerate(class_names(run_config)):
        class_dir = folder / name
        if not class_dir.is_dir():
            continue
        for path in sorted(class_dir.iterdir()):
            if not path.is_file() or path.suffix.lower() not in IMAGE_EXTENSIONS:
                continue
            with Image.open(path) as img:
                img = img.convert("L")
                if img.size != (size, size):
                    img = img.resize((size, size), Image.Resampling.BILINEAR)
                xs.append(np.asarray(img, dtype=np.float32))
            ys.append(index)
    if not ys:
        raise ValueError(f"no images of the classes {class_names(run_config)} in {folder}")
    x = np.stack(xs)[:, None, :, :] / 127.5 - 1.0
    return x.astype(np.float32), np.asarray(ys, dtype=np.int64)


def split_local(n: int, eval_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split of ``range(n)`` into (train, eval) indices.

    The same images are held out in every round. With too few images for both,
    all are used for training and evaluation alike.
    """
    order = np.random.default_rng(seed).permutation(n)
    n_eval = int(round(n * eval_fraction))
    if n_eval < 1 or n - n_eval < 1:
        return order, order
    return order[n_eval:], order[:n_eval]


# --------------------------------------------------------------------- model


class SmallCNN(nn.Module):
    """Two 3x3 conv layers, a 2x2 max-pool, then a small MLP head.

    Adaptive pooling to 4x4 keeps the head's size independent of ``image-size``.
    """

    def __init__(self, n_classes: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 32, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(4),
        )
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(32 * 4 * 4, 64),
            nn.ReLU(),
            nn.Linear(64, n_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def build_model(n_classes: int) -> nn.Module:
    return SmallCNN(int(n_classes))


def model_from_run_config(run_config: Mapping[str, Any] | None) -> nn.Module:
    return build_model(len(class_names(run_config)))


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
                f"array {key!r} has shape {tuple(value.shape)}, the model expects {tuple(ref.shape)} (check 'classes')"
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
    """Train in place with Adam; returns the mean training loss of the last epoch.

    With ``proximal_mu > 0`` adds FedProx's ``mu/2 * ||w - w_global||^2``.
    """
    torch.manual_seed(seed)
    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    yt = torch.from_numpy(np.ascontiguousarray(y, dtype=np.int64))
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


def load_npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(Path(path), allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def save_npz(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **{k: np.asarray(v) for k, v in arrays.items()})


def heldout_accuracy(
    model_npz: Path,
    heldout_folder: Path,
    run_config: Mapping[str, Any] | None = None,
) -> float:
    """Accuracy of a saved model (``.npz`` of its state_dict) on a held-out folder.

    ``run_config`` supplies ``classes`` and ``image-size`` (app defaults if None).
    """
    arrays = load_npz(model_npz)
    model = model_from_run_config(run_config)
    load_arrays(model, arrays)
    x, y = load_images(Path(heldout_folder), run_config)
    return evaluate(model, x, y)[1]
