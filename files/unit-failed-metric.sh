#!/bin/sh
# ExecStopPost=+ of pgBackRest's backup and restore-drill units on the backup host
# (installed by tasks/steps/pgbackrest.py): systemd's own verdict on the unit that just
# ran ($SERVICE_RESULT), as pyinfra_flask_unit_failed{unit=...} in node exporter's
# textfile directory, for the monitoring host's UnitFailed alert (docs/monitoring.md).
# Runs as root and reads nothing the unit's user wrote. Without a monitoring host
# (no such directory) it does nothing.
#
#   unit-failed-metric.sh TEXTFILE_DIR UNIT
set -eu
dir=$1
unit=$2
[ -d "$dir" ] || exit 0
failed=1
[ "${SERVICE_RESULT:-}" = success ] && failed=0
# Not *.prom until complete: node exporter never reads half a file.
tmp=$(mktemp "$dir/.unit-$unit.XXXXXX")
printf '# HELP pyinfra_flask_unit_failed 1 when systemd says the unit failed.\n# TYPE pyinfra_flask_unit_failed gauge\npyinfra_flask_unit_failed{unit="%s"} %s\n' \
    "$unit" "$failed" > "$tmp"
chmod 644 "$tmp"
mv -f "$tmp" "$dir/unit-$unit.prom"
