"""The client's exit codes: what a data holder's script (or `docker run`) can act on.

Listed in the README ("Client exit codes"); keep the two in step. No imports, so
launchers can read them without loading the client.
"""

from __future__ import annotations

# The run finished or was stopped (also: --check-only found the data fine).
OK = 0
# Invalid settings (a flag or FEDOTA_* variable); the message lists every one.
SETTINGS = 2
# The data does not match the problem's data contract; nothing was sent.
DATA = 3
# Refused: the credential, the app's hash or the join bundle (the message says which),
# or no selector could be reached within --max-join-wait at the start.
REFUSED = 4
# The run failed (the ServerApp raised, or nothing it asked for was accepted).
RUN_FAILED = 5
# The federation was lost: after this client had joined, no selector answered for
# --max-reconnect-wait seconds (the run's servers were stopped or are unreachable).
LOST = 6
# This site's privacy budget is spent (--dp-epsilon): its next round would pass the cap,
# so it declined and left. Nothing more leaves this machine for the problem until it is raised.
BUDGET = 7
