"""Logistic regression in NumPy on the Flower compatibility API (test fixture)."""
