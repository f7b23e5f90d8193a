#!/usr/bin/env python3
"""The README's Performance tables and quoted figures, from the JSON lines of two `make bench` outputs.

    python3 Tests/bench/readme_tables.py docs/bench/run-9.txt docs/bench/run-8.txt

Figures come from the first run; ratios are shown as "first (second)". Nothing is typed by hand:
rerun `make bench` twice, save the outputs, and run this to get the tables for the README.
"""
import json
import math
import sys


def rows(path):
    with open(path) as f:
        all_rows = [json.loads(line) for line in f if line.startswith("{")]
    for row in all_rows:  # pool10 rows of `bench --one-cpu` (make bench's last part) say so
        if row["bench"] == "pool10":
            row.setdefault("one_cpu", False)
    return all_rows


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
             "pool-fifo": "pool 10..10, reuse_while_waiting 0", "pool-locked": "pool 10..10, fast_path false",
             "pool-w1ms": "pool 10..10, reuse 8 calls / 1 ms (1.3's defaults)",
             "hand": "a pool written by hand (mutex, condition variable, 10 raw connections)",
             "hand-fair": "the pool's fairness written by hand (16 calls or 3 ms, then FIFO hand-off on a futex)",
             "raw-on-pool-threads": "raw client on the pool row's first 10 threads"}
    for row in latest:
        if row["bench"] != "pool10" or "ratio_ci95" not in row:  # runs 1-7 measured pool10 in rounds
            continue
        base_threads, one_cpu = row["compared_with_threads"], row["one_cpu"]
        base = find(latest, "pool10", mode="raw", threads=base_threads, one_cpu=one_cpu)
        other = find(earlier, "pool10", mode=row["mode"], threads=row["threads"], one_cpu=one_cpu) or {}
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
        name = names.get(row["mode"], row["mode"])
        if row["mode"] == "raw-again" and row["threads"] == 10:  # the 32-thread experiment's A/A
            name += ", in the 32-thread cycles"
        threads = f"{row['threads']}, one CPU" if one_cpu else f"{row['threads']}"
        print(f"| {threads} | {raw} | {name} | {spread} | {cpu} | "
              f"{base['context_switches_per_call']:.2f} → {row['context_switches_per_call']:.2f} | "
              f"{number(base['p99_us'])} → {number(row['p99_us'])} |")


def median_ci95(values):
    """Median and 95 % CI of the median, as bench.c computes them (order statistics n/2 ∓ 0.98·√n)."""
    v, n = sorted(values), len(values)
    half = 0.98 * n ** 0.5
    lo, hi = math.floor(n / 2 - half), math.ceil(n / 2 + half) - 1
    if n < 6 or lo < 0:
        lo = 0
    if n < 6 or hi > n - 1:
        hi = n - 1
    middle = (v[(n - 1) // 2] + v[n // 2]) / 2
    return middle, v[lo], v[hi]


def fast_path_lines(latest, earlier):
    """The fast path's own share, paired per cycle: pool 10..10 against the same pool with
    fast_path false, from the same interleaved cycles (calls/s ratio; CPU per call difference)."""
    for label, other_mode, thread_counts in (("fast path against the lock path", "pool-locked", (1, 8, 32)),
                                             ("1.4's reuse defaults against 1.3's", "pool-w1ms", (32,))):
        for threads in thread_counts:
            parts = []
            for run in (latest, earlier):
                fast = find(run, "pool10", mode="pool", threads=threads, one_cpu=False)
                other = find(run, "pool10", mode=other_mode, threads=threads, one_cpu=False)
                if not fast or not other or "cycle_ratios" not in other:
                    continue
                ratios = [a / b for a, b in zip(fast["cycle_ratios"], other["cycle_ratios"])]
                cpu = [a - b for a, b in zip(fast["cycle_cpu_diffs_us"], other["cycle_cpu_diffs_us"])]
                r, rl, rh = median_ci95(ratios)
                c, cl, ch = median_ci95(cpu)
                parts.append(f"{r:.2f}× ({rl:.2f}–{rh:.2f}), CPU {c:+.1f} µs ({cl:+.1f}, {ch:+.1f})")
            if parts:
                print(f"- {label}, T = {threads}: " + "; ".join(parts))


def sessions_table(latest, earlier):
    print("| T | mode | calls/s | × plain (earlier run) | × plain CPU (earlier run) |")
    print("|---:|---|---:|---:|---:|")
    names = {"session": "session", "journal": "durable, journal only", "durable": "durable, checkpoint every 10 000"}
    for row in latest:
        if row["bench"] != "session_cost" or row["mode"] == "plain":
            continue
        other = find(earlier, "session_cost", mode=row["mode"], threads=row["threads"]) or {}
        print(f"| {row['threads']} | {names.get(row['mode'], row['mode'])} | {number(row['calls_per_s'])} | "
              f"{ratio(row, 'ratio')} ({ratio(other, 'ratio')}) | {ratio(row, 'cpu_ratio')} ({ratio(other, 'cpu_ratio')}) |")


def other_figures(latest, earlier):
    """One line per figure the README quotes in prose: latest (earlier)."""
    def pair(bench, key, fmt="{:.2f}", **fields):
        a, b = find(latest, bench, **fields), find(earlier, bench, **fields)
        text = fmt.format(a[key]) if a and key in a else "-"
        return text + (f" ({fmt.format(b[key])})" if b and key in b else "")
    print(f"- batch of 100 against 100 sequential calls: {pair('batch', 'speedup')}×")
    print(f"- three daemons against one: {pair('endpoints', 'ratio')}×")
    print(f"- 2 ms daemon, 10 threads, 10 connections / 1: {pair('scaling', 'ratio', connections=10)}×")
    print(f"- RSS per idle connection: {pair('memory', 'per_idle_connection_kib', '{:.1f}')} KiB; "
          f"growth over 1 M calls: {pair('memory', 'growth_kib', '{:+.0f}')} KiB")
    print(f"- durable session restore, 10 000 journaled calls: {pair('session_restore', 'restore_ms', '{:.0f}')} ms")
    for latency in (0, 2):
        print(f"- dispatch / thread mode at {latency} ms: {pair('async', 'ratio', mode='dispatch', daemon_latency_ms=latency)}, "
              f"CPU × {pair('async', 'cpu_ratio', mode='dispatch', daemon_latency_ms=latency)}")
    print(f"- 2 ms daemon, pool / raw at T = 1, 8, 32, 64: " + ", ".join(
        pair('throughput', 'ratio', mode='pool', threads=t, connections=t, daemon_latency_ms=2) for t in (1, 8, 32, 64)))
    print(f"- 64 threads on 1 connection (single), 2 ms daemon, p99 µs: "
          f"{pair('throughput', 'p99_us', '{:.0f}', mode='single', threads=64, daemon_latency_ms=2)}")


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    latest, earlier = rows(sys.argv[1]), rows(sys.argv[2])
    throughput_table(latest, earlier)
    print()
    pool10_table(latest, earlier)
    print()
    fast_path_lines(latest, earlier)
    print()
    sessions_table(latest, earlier)
    print()
    other_figures(latest, earlier)


if __name__ == "__main__":
    main()
