"""Fault-tolerance test app: the model counts the rounds that reached it (test fixture)."""
