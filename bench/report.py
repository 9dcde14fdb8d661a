"""The report of bench.performance: one table with the goals met or not, printed, and
bench/results/performance.csv, performance.png and the timed cold and no-op logs.
"""

from __future__ import annotations

import csv
import statistics

from bench.deploy_speed import GROUP_ORDER, PREPARE, RESULTS, STARTUP, Run, breakdown
from bench.serving import Load

# Goals from the issue.
GOALS = {
    "noop_floor": 2.0,  # no-op re-run at most 2x pyinfra's floor
    "noop_hosts": 1.5,  # N hosts no-op at most 1.5x one host
    "vs_flask": 4.0,  # serving at least 4x Flask's built-in server
    "vs_ceiling": 0.20,  # and at least 20% of nginx's own ceiling
}


def report(args, cold: dict[int, Run], noops: dict[int, Run], deploys, loads: list[Load]) -> None:
    n = args.hosts
    med = {size: {name: statistics.median(values) for name, values in times.items()} for size, times in deploys.items()}
    for size, run in cold.items():
        med[size]["cold first deploy"] = run.seconds
    kinds = ["cold first deploy", "no-op re-run", "code-only redeploy", "pyinfra floor"]
    splits = {size: breakdown(run) for size, run in cold.items()}
    noop_splits = {size: breakdown(run) for size, run in noops.items()}
    stack, flask, gunicorn, ceiling = loads
    ratios = {
        "noop_floor_1": med[1]["no-op re-run"] / med[1]["pyinfra floor"],
        "noop_floor_n": med[n]["no-op re-run"] / med[n]["pyinfra floor"],
        "noop_hosts": med[n]["no-op re-run"] / med[1]["no-op re-run"],
        "vs_flask": stack.requests_per_s / flask.requests_per_s,
        "vs_gunicorn": stack.requests_per_s / gunicorn.requests_per_s,
        "vs_ceiling": stack.requests_per_s / ceiling.requests_per_s,
    }
    errors = sum(load.errors for load in loads)
    goals = [
        (f"no-op re-run <= {GOALS['noop_floor']:g}x pyinfra's floor (1 host)", ratios["noop_floor_1"],
         ratios["noop_floor_1"] <= GOALS["noop_floor"]),
        (f"no-op re-run <= {GOALS['noop_floor']:g}x pyinfra's floor ({n} hosts)", ratios["noop_floor_n"],
         ratios["noop_floor_n"] <= GOALS["noop_floor"]),
        (f"{n} hosts no-op <= {GOALS['noop_hosts']:g}x 1 host", ratios["noop_hosts"],
         ratios["noop_hosts"] <= GOALS["noop_hosts"]),
        (f"serving >= {GOALS['vs_flask']:g}x Flask's built-in server", ratios["vs_flask"],
         ratios["vs_flask"] >= GOALS["vs_flask"]),
        (f"serving >= {GOALS['vs_ceiling']:.0%} of nginx's ceiling", ratios["vs_ceiling"],
         ratios["vs_ceiling"] >= GOALS["vs_ceiling"]),
        ("zero errors under load (all four targets)", float(errors), errors == 0),
    ]

    lines = [(f"\nDebian {args.release}; deploy times: cold once, others median of {args.rounds} rounds; "
              f"wrk -t2 -c{args.connections} -d{args.duration}s --latency, "
              f"median of {args.serving_rounds} interleaved rounds"),
             "", "1. Deploy speed (wall time of `pyinfra ... -y`)",
             f"  {'':<22}{'1 host':>9}{f'{n} hosts':>10}{f'{n} / 1':>9}"]
    for kind in kinds:
        one, many = med[1][kind], med[n][kind]
        lines.append(f"  {kind:<22}{one:>8.1f}s{many:>9.1f}s{many / one:>8.2f}x")
    lines.append(f"  {'no-op / floor':<22}{ratios['noop_floor_1']:>8.2f}x{ratios['noop_floor_n']:>9.2f}x")
    lines += ["", "2. Serving (GET /, same host, same load, one after the other)",
              f"  {'':<32}{'requests/s':>11}{'p50':>10}{'p99':>10}{'requests':>10}{'errors':>8}"]
    for load in loads:
        lines.append(f"  {load.target:<32}{load.requests_per_s:>11.0f}{load.p50_ms:>8.2f}ms{load.p99_ms:>8.2f}ms"
                     f"{load.requests:>10}{load.errors:>8}")
    lines.append(f"  stack / Flask built-in: {ratios['vs_flask']:.2f}x;  stack / gunicorn: {ratios['vs_gunicorn']:.2f}x;  "
                 f"stack / nginx ceiling: {ratios['vs_ceiling']:.0%}")
    for load in loads:
        if load.errors:
            lines.append(f"  ERRORS {load.target}: {load.non_2xx_3xx} non-2xx/3xx, {load.socket_errors} socket errors")
    lines += ["", "3. Where the cold deploy spends its time (and, for comparison, the median no-op re-run)",
              f"  {'':<40}{'cold, 1':>9}{f'cold, {n}':>10}{'no-op, 1':>10}{f'no-op, {n}':>11}"]
    for group in GROUP_ORDER:
        values = [splits[1][0][group], splits[n][0][group], noop_splits[1][0][group], noop_splits[n][0][group]]
        if any(values):
            lines.append(f"  {group:<40}{values[0]:>8.1f}s{values[1]:>9.1f}s{values[2]:>9.1f}s{values[3]:>10.1f}s")
    lines.append(f"  {'total':<40}{cold[1].seconds:>8.1f}s{cold[n].seconds:>9.1f}s"
                 f"{noops[1].seconds:>9.1f}s{noops[n].seconds:>10.1f}s")
    for label, ops in (("cold, 1 host", splits[1][1]), (f"cold, {n} hosts", splits[n][1])):
        slowest = sorted(ops.items(), key=lambda item: -item[1])[:4]
        lines.append(f"  slowest operations ({label}): " + "; ".join(f"{name[:70]} {sec:.1f}s" for name, sec in slowest))
    for size in (1, n):
        count = sum(1 for _, line in noops[size].marks if "operation:" in line)
        seconds = sum(noop_splits[size][1].values())
        lines.append(f"  no-op re-run, {size} host{'s' if size > 1 else ''}: {count} operations took {seconds:.1f}s "
                     f"({1000 * seconds / max(count, 1):.0f} ms each); before them, start-up, connect and "
                     f"deploy.py's facts {noop_splits[size][0][STARTUP] + noop_splits[size][0][PREPARE]:.1f}s")
    lines += ["", "Goals"]
    for text, value, met in goals:
        lines.append(f"  {'met    ' if met else 'NOT MET'}  {text}: {value:.2f}")
    print("\n".join(lines))

    RESULTS.mkdir(parents=True, exist_ok=True)
    for kind, runs in (("cold", cold), ("noop", noops)):
        for size, run in runs.items():
            (RESULTS / f"{kind}-{size}.log").write_text(
                "".join(f"{t:8.2f}s  {line}\n" for t, line in run.marks) + "\n" + run.output)
    write_csv(RESULTS / "performance.csv", args, med, kinds, ratios, loads, splits, noop_splits, goals)
    chart(RESULTS / "performance.png", args, med, kinds, loads, splits, ratios)
    print(f"\nWrote {RESULTS / 'performance.csv'}, {RESULTS / 'performance.png'} and the output of the cold "
          f"and median no-op runs, with times ({RESULTS}/cold-*.log, noop-*.log)")


def write_csv(path, args, med, kinds, ratios, loads, splits, noop_splits, goals) -> None:
    n = args.hosts
    rows = [("section", "metric", "subject", "value", "unit")]
    for kind in kinds:
        for size in (1, n):
            rows.append(("deploy", kind, f"{size} hosts", f"{med[size][kind]:.2f}", "s"))
    rows += [("deploy", "no-op / floor", "1 hosts", f"{ratios['noop_floor_1']:.3f}", "x"),
             ("deploy", "no-op / floor", f"{n} hosts", f"{ratios['noop_floor_n']:.3f}", "x")]
    for kind in kinds:
        rows.append(("deploy", f"{kind}, {n} hosts / 1 host", "", f"{med[n][kind] / med[1][kind]:.3f}", "x"))
    for load in loads:
        rows += [("serving", "requests/s", load.target, f"{load.requests_per_s:.1f}", "1/s"),
                 ("serving", "p50", load.target, f"{load.p50_ms:.3f}", "ms"),
                 ("serving", "p99", load.target, f"{load.p99_ms:.3f}", "ms"),
                 ("serving", "requests", load.target, str(load.requests), ""),
                 ("serving", "errors", load.target, str(load.errors), "")]
    rows += [("serving", "stack / Flask built-in", "", f"{ratios['vs_flask']:.3f}", "x"),
             ("serving", "stack / gunicorn", "", f"{ratios['vs_gunicorn']:.3f}", "x"),
             ("serving", "stack / nginx ceiling", "", f"{ratios['vs_ceiling']:.3f}", "x")]
    for section, split in (("cold breakdown", splits), ("no-op breakdown", noop_splits)):
        for size in (1, n):
            for group, seconds in split[size][0].items():
                rows.append((section, group, f"{size} hosts", f"{seconds:.2f}", "s"))
    for text, value, met in goals:
        rows.append(("goal", text, "met" if met else "not met", f"{value:.3f}", ""))
    with path.open("w", newline="") as handle:
        csv.writer(handle).writerows(rows)


def chart(path, args, med, kinds, loads, splits, ratios) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = args.hosts
    fig, (deploy_ax, serve_ax, cold_ax) = plt.subplots(1, 3, figsize=(13, 3.9), gridspec_kw={"width_ratios": [4, 3, 5]})

    labels = ["cold", "no-op", "code-only", "pyinfra\nfloor"]
    width = 0.38
    for offset, size, color in ((-width / 2, 1, "#4c72b0"), (width / 2, n, "#dd8452")):
        values = [med[size][kind] for kind in kinds]
        bars = deploy_ax.bar([i + offset for i in range(len(kinds))], values, width, color=color,
                             label=f"{size} host{'s' if size > 1 else ''}")
        deploy_ax.bar_label(bars, labels=[f"{v:.0f}" if v >= 10 else f"{v:.1f}" for v in values],
                            fontsize=7, padding=1)
    deploy_ax.set_yscale("log")
    deploy_ax.set_xticks(range(len(kinds)), labels, fontsize=8)
    deploy_ax.set_ylabel("seconds (log)", fontsize=8)
    deploy_ax.set_title(f"Deploy wall time\nno-op/floor {ratios['noop_floor_1']:.1f}x, "
                        f"no-op {n}/1 hosts {ratios['noop_hosts']:.2f}x", fontsize=9)
    deploy_ax.legend(fontsize=7, loc="upper right")
    deploy_ax.tick_params(labelsize=7)
    deploy_ax.margins(y=0.15)

    names = ["nginx ->\nuWSGI", "nginx ->\nFlask dev", "nginx ->\ngunicorn", "nginx\nreturn 200"]
    bars = serve_ax.bar(names, [load.requests_per_s for load in loads],
                        color=["#55a868", "#c44e52", "#8172b3", "#8c8c8c"])
    serve_ax.bar_label(bars, labels=[f"{load.requests_per_s:.0f}/s\np99 {load.p99_ms:.0f} ms"
                                     + (f"\n{load.errors} errors" if load.errors else "") for load in loads],
                       fontsize=7, padding=1)
    serve_ax.set_ylabel("requests/s", fontsize=8)
    serve_ax.set_title(f"Serving GET / (wrk -c{args.connections}, {args.serving_rounds} x {args.duration}s, medians)\n"
                       f"{ratios['vs_flask']:.1f}x Flask dev, {ratios['vs_gunicorn']:.2f}x gunicorn, "
                       f"{ratios['vs_ceiling']:.0%} of nginx", fontsize=9)
    serve_ax.tick_params(labelsize=7)
    serve_ax.margins(y=0.25)

    groups = [g for g in GROUP_ORDER if splits[1][0][g] or splits[n][0][g]]
    colors = plt.get_cmap("tab10").colors
    rows = ["1 host", f"{n} hosts"]
    for index, size in enumerate((1, n)):
        left = 0.0
        for color, group in zip(colors, groups):
            seconds = splits[size][0][group]
            cold_ax.barh(index, seconds, left=left, color=color, label=group if index == 0 else None)
            if seconds >= 8:
                cold_ax.text(left + seconds / 2, index, f"{seconds:.0f}", ha="center", va="center", fontsize=7)
            left += seconds
    cold_ax.set_yticks([0, 1], rows, fontsize=8)
    cold_ax.invert_yaxis()
    cold_ax.set_xlabel("seconds", fontsize=8)
    cold_ax.set_title("Cold first deploy: where the time goes", fontsize=9)
    cold_ax.tick_params(labelsize=7)
    cold_ax.legend(fontsize=6.5, loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=2, frameon=False)

    fig.tight_layout()
    fig.savefig(path, dpi=85, bbox_inches="tight")
    plt.close(fig)
