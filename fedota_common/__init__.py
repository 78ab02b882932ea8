"""Code shared by the coordinator, the selectors and the data holder's client.

Only wire helpers live here (Flower Message <-> chunked payload, FAB checks,
partial aggregation, logging, gRPC plumbing), and what the website shares with
commands that run without it (`provenance`: signed model manifests and
`fedota-verify`): nothing that knows about one service's state.
"""
