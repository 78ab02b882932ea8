"""Developer scripts (run as modules, e.g. ``python -m scripts.make_demo_data``)."""
