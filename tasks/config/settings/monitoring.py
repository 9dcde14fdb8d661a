"""The settings of one concern: metrics and their alerts, when the inventory has a
`monitoring_servers` host (tasks/roles/monitoring_server.py, tasks/steps/metrics.py,
docs/monitoring.md).

They are read from the monitoring host's own data (its Prometheus and Alertmanager);
the exporters on the other hosts follow its `monitoring_interval`. Where alerts go are
the `alert_*` settings (alerts.py), shared with the watch.

One part of tasks/config/settings/__init__.py's Settings; its fields, in this order,
are its rows of the settings table (`markdown_table`)."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, Field

# Prometheus's own duration syntax, in the units a retention is said in.
RETENTION_RE = r"^[1-9][0-9]{0,4}[hdwy]$"


class MonitoringSettings(BaseModel):
    """Metrics (Prometheus on a `monitoring_servers` host) and their alerts."""

    monitoring_interval: int = Field(
        15, ge=2, le=300,
        description="Seconds between two scrapes of every exporter by Prometheus on the `monitoring_servers` "
        "host, between two evaluations of its alert rules, and between two readings of the apps' uWSGI "
        "figures on each app server (docs/monitoring.md).",
    )
    monitoring_retention: Annotated[str, Field(pattern=RETENTION_RE)] = Field(
        "15d",
        description="How long Prometheus keeps its samples: a number and `h`, `d`, `w` or `y`.",
    )
    monitoring_alert_after: int = Field(
        120, ge=0, le=86400,
        description="Seconds a target, an app or a unit must stay down or failed before Prometheus alerts "
        "(the rules' `for:`); slow responses, disk, certificates and backups wait longer (docs/monitoring.md).",
    )
    monitoring_slow_response: float = Field(
        2.0, gt=0, le=600,
        description="Seconds: Prometheus alerts when an app's uWSGI workers answer slower than this on "
        "average for 10 minutes.",
    )
    monitoring_error_ratio: float = Field(
        0.05, gt=0, le=1,
        description="Prometheus alerts when more than this share of an app's requests got a 5xx answer from "
        "nginx over 5 minutes (counted from nginx's access log by Debian's mtail).",
    )
