"""pyinfra's own floor, for bench.performance: one operation that reads one fact and
changes nothing (`/srv` exists on every Debian host), run with the same inventory as
deploy.py. What is left is pyinfra's start-up, SSH connections, one fact and one
operation round: the least any pyinfra deploy to these hosts can cost.

    pyinfra <inventory> bench/floor.py -y
"""

from pyinfra.operations import files

files.directory(name="Ensure /srv exists (pyinfra's floor: one fact, no change)", path="/srv")
