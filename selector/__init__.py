"""Per-problem selector: holds data-holder clients, relays tasks, pre-aggregates results."""
