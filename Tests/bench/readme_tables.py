#!/usr/bin/env python3
"""The README's Performance tables, from the JSON lines of two `make bench` outputs.

    python3 Tests/bench/readme_tables.py docs/bench/run-9.txt docs/bench/run-8.txt

Figures come from the first run; ratios are shown as "first (second)". Nothing is typed by hand:
rerun `make bench` twice, save the outputs, and run this to get the tables for the README.
"""
import json
import sys


def rows(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.startswith("{")]


def number(value):
    """Calls/s and latencies as the README writes them: 1 decimal below 1000, else grouped."""
    if value < 1000:
        return f"{value:.1f}"
    return f"{value:,.0f}".replace(",", " ")


def ratio(row, key):
    return f"{row[key]:.2f}" if key in row else ""


def find(all_rows, bench, **fields):
    for row in all_rows:
        if row["bench"] == bench and all(row.get(k) == v for k, v in fields.items()):
            return row
    return None


def throughput_table(latest, earlier):
    print("| daemon latency | mode | T | C | calls/s | p50 µs | p99 µs | CPU µs/call | × raw calls/s (earlier run) | × raw CPU (earlier run) |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row in latest:
        if row["bench"] != "throughput":
            continue
        keys = dict(mode=row["mode"], threads=row["threads"], connections=row["connections"],
                    daemon_latency_ms=row["daemon_latency_ms"])
        other = find(earlier, "throughput", **keys) or {}
        mode = row["mode"]
        if mode == "pool" and row["connections"] < row["threads"]:
            mode = "pool (queue)"
        latency = "0" if row["daemon_latency_ms"] == 0 else f"{row['daemon_latency_ms']} ms"
        both = lambda key: f"{ratio(row, key)} ({ratio(other, key)})" if key in row else ""
        print(f"| {latency} | {mode} | {row['threads']} | {row['connections']} | {number(row['calls_per_s'])} | "
              f"{number(row['p50_us'])} | {number(row['p99_us'])} | {row['cpu_us_per_call']:.1f} | "
              f"{both('ratio')} | {both('cpu_ratio')} |")


def pool10_table(latest, earlier):
    """The interleaved pool-of-10 rows: per-cycle ratio and CPU difference, median (95 % CI)."""
    print("| T | raw client | compared | × raw calls/s (95 % CI) (earlier run) "
          "| client CPU per call, raw → compared; difference (95 % CI) (earlier run) "
          "| switches per call, raw → compared | p99 µs, raw → compared |")
    print("|---:|---|---|---:|---|---|---|")
    names = {"raw-again": "raw again (the method's noise)", "pool": "pool 10..10", "pool-2..10": "pool 2..10",
             "pool-fifo": "pool 10..10, reuse_while_waiting 0"}
    for row in latest:
        if row["bench"] != "pool10" or "compared_with" not in row:
            continue
        base_threads = row["compared_with_threads"]
        base = find(latest, "pool10", mode="raw", threads=base_threads)
        other = find(earlier, "pool10", mode=row["mode"], threads=row["threads"]) or {}
        raw = f"{base_threads} threads, {base['connections']} connections" if base_threads != row["threads"] \
            else f"{base['connections']} connection{'s' if base['connections'] > 1 else ''}"
        low, high = row["ratio_ci95"]
        spread = f"{row['ratio']:.2f} ({low:.2f}–{high:.2f})"
        if "ratio" in other:
            spread += f" ({other['ratio']:.2f})"
        low, high = row["cpu_diff_ci95_us"]
        cpu = (f"{base['cpu_us_per_call']:.1f} → {row['cpu_us_per_call']:.1f} µs; {row['cpu_diff_us']:+.1f} "
               f"({low:+.1f}, {high:+.1f})")
        if "cpu_diff_us" in other:
            cpu += f" ({other['cpu_diff_us']:+.1f})"
        print(f"| {row['threads']} | {raw} | {names.get(row['mode'], row['mode'])} | {spread} | {cpu} | "
              f"{base['context_switches_per_call']:.2f} → {row['context_switches_per_call']:.2f} | "
              f"{number(base['p99_us'])} → {number(row['p99_us'])} |")


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    latest, earlier = rows(sys.argv[1]), rows(sys.argv[2])
    throughput_table(latest, earlier)
    print()
    pool10_table(latest, earlier)


if __name__ == "__main__":
    main()
