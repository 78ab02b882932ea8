"""What each client trains to: a fixed step that depends only on its partition id.

The test imports this module too, to compute the plain weighted mean that secure
aggregation must reproduce.
"""

import numpy as np

SHAPES = [(2, 3), (2,)]


def initial_model() -> list[np.ndarray]:
    return [np.zeros(shape) for shape in SHAPES]


def step(partition: int) -> list[np.ndarray]:
    """The update client `partition` adds to the model it is sent (not linear in the id)."""
    k = partition + 1
    return [
        k * np.array([[1.0, -1.0, 0.5], [0.25, 2.0, -0.5]]),
        np.array([k * k / 10.0, -float(partition)]),
    ]


def num_examples(partition: int) -> int:
    """A distinct weight per client, so the weighted and the plain mean differ."""
    return 100 * (partition + 1)


def eval_examples(partition: int) -> int:
    return 10 * (partition + 1)
