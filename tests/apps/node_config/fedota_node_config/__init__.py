"""Test app: the ClientApp reports its context.node_config (a file and a metric)."""
