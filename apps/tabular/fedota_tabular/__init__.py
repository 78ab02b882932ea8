"""Fedota tabular classifier: a PyTorch MLP on local CSV files (Flower Message API)."""
