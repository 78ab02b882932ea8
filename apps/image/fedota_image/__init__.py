"""Fedota image classifier: a small PyTorch CNN on a local image folder (Message API)."""
