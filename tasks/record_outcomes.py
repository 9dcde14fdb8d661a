"""A pyinfra deploy file with no operations: loaded before deploy.py by rollout.py
(`pyinfra INVENTORY tasks/record_outcomes.py deploy.py`), it has the run write how
it ended on each host (tasks/outcomes.py)."""

from pyinfra import host

from tasks import outcomes

outcomes.record(host)
