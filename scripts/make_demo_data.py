"""Write realistic, non-IID demo data sets for Fedota's example Flower apps.

Usage::

    python -m scripts.make_demo_data --out DIR --holders 4 [--seed 0]

Writes, for each data set, one folder per data holder (what a hospital or a site
would keep locally), a held-out test split that no holder ever gets, and the data
contract that every holder's folder satisfies::

    DIR/breast_cancer/clients/hospital_<i>/records.csv
    DIR/breast_cancer/heldout/records.csv
    DIR/breast_cancer/contract.json
    DIR/digits/clients/site_<i>/<digit>/<n>.png
    DIR/digits/heldout/<digit>/<n>.png
    DIR/digits/contract.json

Both sources ship with scikit-learn (nothing is downloaded). The split is non-IID:
each class is spread over the holders with Dirichlet proportions, so holders differ
in size and in class balance. ``<n>`` in the image file names is the sample's index
in ``sklearn.datasets.load_digits()``, so file names are unique across holders and
the held-out split.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_breast_cancer, load_digits
from sklearn.model_selection import train_test_split

HELDOUT_FRACTION = 0.2

BREAST_CANCER_LABEL = "diagnosis"
BREAST_CANCER_CLASSES = ("benign", "malignant")
BREAST_CANCER_MIN_ROWS = 40  # every hospital gets at least this many rows
BREAST_CANCER_MIN_PER_CLASS = 5  # ... and at least this many of each class
BREAST_CANCER_ALPHA = 1.0

DIGITS_CLASSES = tuple(str(d) for d in range(10))
DIGITS_MIN_IMAGES = 40  # every site gets at least this many images
DIGITS_MIN_PER_CLASS = 2  # ... and at least this many of each digit
DIGITS_ALPHA = 0.5


# --------------------------------------------------------------------------- split


def dirichlet_split(
    labels: np.ndarray,
    holders: int,
    *,
    alpha: float,
    min_per_class: int,
    min_rows: int,
    rng: np.random.Generator,
    max_tries: int = 2000,
) -> list[np.ndarray]:
    """Split sample indices over ``holders`` with Dirichlet label skew.

    Every holder first gets ``min_per_class`` samples of every class, then the rest
    of each class is spread with proportions drawn from ``Dirichlet(alpha)``.
    Draws that leave a holder with fewer than ``min_rows`` samples are rejected.
    Returns one sorted index array per holder; together they partition
    ``range(len(labels))``.
    """
    if holders < 1:
        raise ValueError("holders must be >= 1")
    classes = np.unique(labels)
    counts = {c: int(np.sum(labels == c)) for c in classes}
    if holders * min_rows > len(labels):
        raise ValueError(f"cannot give {holders} holders >= {min_rows} rows each from {len(labels)} samples")
    for c, n in counts.items():
        if holders * min_per_class > n:
            raise ValueError(f"class {c!r} has {n} samples: too few for {holders} holders with >= {min_per_class} each")
    for _ in range(max_tries):
        parts: list[list[int]] = [[] for _ in range(holders)]
        for c in classes:
            idx = rng.permutation(np.flatnonzero(labels == c))
            for h in range(holders):
                parts[h].extend(idx[h * min_per_class : (h + 1) * min_per_class])
            rest = idx[holders * min_per_class :]
            props = rng.dirichlet(np.full(holders, alpha))
            cuts = (np.cumsum(props)[:-1] * len(rest)).astype(int)
            for h, chunk in enumerate(np.split(rest, cuts)):
                parts[h].extend(chunk)
        if min(len(p) for p in parts) >= min_rows:
            return [np.sort(np.asarray(p, dtype=int)) for p in parts]
    raise RuntimeError(f"no Dirichlet split met the constraints after {max_tries} tries; use fewer holders")


def _reset_dir(path: Path) -> None:
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)


def _print_summary(title: str, rows: Sequence[tuple[str, int, dict[str, int]]]) -> None:
    print(f"\n{title}")
    header = f"  {'holder':<14} {'rows':>6}  class balance"
    print(header)
    print("  " + "-" * (len(header) + 20))
    for name, n, per_class in rows:
        balance = "  ".join(f"{k}={v} ({v / n:.0%})" for k, v in per_class.items())
        print(f"  {name:<14} {n:>6}  {balance}")


# ------------------------------------------------------------------- breast cancer


def _write_records(path: Path, header: list[str], x: np.ndarray, y: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        for row, label in zip(x, y, strict=True):
            writer.writerow([repr(float(v)) for v in row] + [label])


def breast_cancer_contract(feature_names: Sequence[str]) -> dict:
    """The tabular data contract that every hospital's folder satisfies."""
    fields: list[dict] = [
        {
            "name": name,
            "type": "number",
            "constraints": {"required": True, "minimum": 0},
        }
        for name in feature_names
    ]
    fields.append(
        {
            "name": BREAST_CANCER_LABEL,
            "type": "string",
            "constraints": {"required": True, "enum": list(BREAST_CANCER_CLASSES)},
        }
    )
    return {
        "kind": "tabular",
        "files": "*.csv",
        "min_rows": 20,
        "label": BREAST_CANCER_LABEL,
        "schema": {"fields": fields},
    }


def make_breast_cancer(out: Path, holders: int, seed: int = 0) -> Path:
    """Write the breast-cancer demo data set under ``out`` and return its folder."""
    data = load_breast_cancer()
    x = np.asarray(data.data, dtype=float)
    # sklearn: target 0 = malignant, 1 = benign
    names = [str(n) for n in data.target_names]
    y = np.array([names[t] for t in data.target])
    features = [str(f).replace(" ", "_") for f in data.feature_names]
    header = [*features, BREAST_CANCER_LABEL]

    idx_train, idx_test = train_test_split(
        np.arange(len(y)),
        test_size=HELDOUT_FRACTION,
        stratify=y,
        random_state=seed,
    )
    rng = np.random.default_rng(seed)
    parts = dirichlet_split(
        y[idx_train],
        holders,
        alpha=BREAST_CANCER_ALPHA,
        min_per_class=BREAST_CANCER_MIN_PER_CLASS,
        min_rows=BREAST_CANCER_MIN_ROWS,
        rng=rng,
    )

    root = Path(out) / "breast_cancer"
    _reset_dir(root)
    summary = []
    for i, part in enumerate(parts):
        rows = idx_train[part]
        rows = rows[rng.permutation(len(rows))]  # no tell-tale ordering
        path = root / "clients" / f"hospital_{i}" / "records.csv"
        _write_records(path, header, x[rows], list(y[rows]))
        print(f"wrote {path} ({len(rows)} rows)")
        summary.append(
            (
                f"hospital_{i}",
                len(rows),
                {c: int(np.sum(y[rows] == c)) for c in BREAST_CANCER_CLASSES},
            )
        )
    heldout = root / "heldout" / "records.csv"
    _write_records(heldout, header, x[idx_test], list(y[idx_test]))
    print(f"wrote {heldout} ({len(idx_test)} rows, held out)")
    contract = root / "contract.json"
    contract.write_text(json.dumps(breast_cancer_contract(features), indent=2) + "\n")
    print(f"wrote {contract}")
    summary.append(
        (
            "heldout",
            len(idx_test),
            {c: int(np.sum(y[idx_test] == c)) for c in BREAST_CANCER_CLASSES},
        )
    )
    _print_summary("breast_cancer", summary)
    return root


# -------------------------------------------------------------------------- digits


def digits_contract() -> dict:
    """The image-folder data contract that every site's folder satisfies."""
    return {
        "kind": "image-folder",
        "classes": list(DIGITS_CLASSES),
        "extensions": [".png"],
        "image_size": [8, 8],
        "mode": "L",
        "min_images": 10,
    }


def _write_images(folder: Path, images: np.ndarray, y: np.ndarray, ids: np.ndarray):
    for cls in DIGITS_CLASSES:
        (folder / cls).mkdir(parents=True, exist_ok=True)
    for img, label, n in zip(images, y, ids, strict=True):
        pixels = np.clip(np.asarray(img, dtype=float) * 16, 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / str(label) / f"{int(n)}.png")


def make_digits(out: Path, holders: int, seed: int = 0) -> Path:
    """Write the digits demo data set under ``out`` and return its folder."""
    data = load_digits()
    images = np.asarray(data.images)
    y = np.asarray(data.target).astype(int)
    ids = np.arange(len(y))

    idx_train, idx_test = train_test_split(ids, test_size=HELDOUT_FRACTION, stratify=y, random_state=seed)
    rng = np.random.default_rng(seed + 1)
    parts = dirichlet_split(
        y[idx_train],
        holders,
        alpha=DIGITS_ALPHA,
        min_per_class=DIGITS_MIN_PER_CLASS,
        min_rows=DIGITS_MIN_IMAGES,
        rng=rng,
    )

    root = Path(out) / "digits"
    _reset_dir(root)
    summary = []
    for i, part in enumerate(parts):
        rows = idx_train[part]
        folder = root / "clients" / f"site_{i}"
        _write_images(folder, images[rows], y[rows], rows)
        print(f"wrote {folder}/<digit>/<n>.png ({len(rows)} images)")
        summary.append(
            (
                f"site_{i}",
                len(rows),
                {c: int(np.sum(y[rows] == int(c))) for c in DIGITS_CLASSES},
            )
        )
    heldout = root / "heldout"
    _write_images(heldout, images[idx_test], y[idx_test], idx_test)
    print(f"wrote {heldout}/<digit>/<n>.png ({len(idx_test)} images, held out)")
    contract = root / "contract.json"
    contract.write_text(json.dumps(digits_contract(), indent=2) + "\n")
    print(f"wrote {contract}")
    summary.append(
        (
            "heldout",
            len(idx_test),
            {c: int(np.sum(y[idx_test] == int(c))) for c in DIGITS_CLASSES},
        )
    )
    _print_summary("digits", summary)
    return root


# ---------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m scripts.make_demo_data", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--holders", type=int, default=4, help="data holders")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    args = parser.parse_args(argv)
    make_breast_cancer(args.out, args.holders, args.seed)
    make_digits(args.out, args.holders, args.seed)


if __name__ == "__main__":
    main()
