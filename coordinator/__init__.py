"""Per-problem coordinator: runs the problem's Flower ServerApp over the selector tier."""
