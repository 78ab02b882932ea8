"""NumPy softmax regression on CSV files."""

import csv
from pathlib import Path

import numpy as np


def load_data(data_path, label_column, classes, seed=42):
    """Load every CSV in data_path; return (x_train, y_train), (x_test, y_test).

    Features (every column but the label, in alphabetical order) go through
    log1p and are standardised with this client's own mean and std.
    """
    xs, ys = [], []
    for path in sorted(Path(data_path).glob("*.csv")):
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            features = sorted(c for c in reader.fieldnames if c != label_column)
            for row in reader:
                xs.append([float(row[c]) for c in features])
                ys.append(classes.index(row[label_column].strip()))
    x = np.log1p(np.maximum(np.array(xs), 0.0))
    x = (x - x.mean(axis=0)) / (x.std(axis=0) + 1e-8)
    y = np.array(ys)
    idx = np.random.default_rng(seed).permutation(len(y))
    n_test = max(1, len(y) // 5)
    test, train = idx[:n_test], idx[n_test:]
    return (x[train], y[train]), (x[test], y[test])


def init_params(n_features, n_classes):
    return [np.zeros((n_features, n_classes)), np.zeros(n_classes)]


def _softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def loss_and_accuracy(params, x, y):
    w, b = params
    p = _softmax(x @ w + b)
    loss = -np.mean(np.log(p[np.arange(len(y)), y] + 1e-12))
    acc = np.mean(p.argmax(axis=1) == y)
    return float(loss), float(acc)


def train(params, x, y, epochs, lr):
    """Full-batch gradient descent; returns (new params, final training loss)."""
    w, b = (np.array(p, dtype=np.float64) for p in params)
    onehot = np.eye(w.shape[1])[y]
    for _ in range(epochs):
        p = _softmax(x @ w + b)
        grad = (p - onehot) / len(y)
        w -= lr * (x.T @ grad)
        b -= lr * grad.sum(axis=0)
    return [w, b], loss_and_accuracy([w, b], x, y)[0]
