"""A pyinfra deploy file with no operations: loaded before deploy.py by rollout.py
(`pyinfra INVENTORY tasks/run/record_outcomes.py deploy.py`), it has the run write how
it ended on each host (tasks/run/outcomes.py)."""

from pyinfra import host

from tasks.run import outcomes

outcomes.record(host)
