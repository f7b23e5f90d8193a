#!/usr/bin/env python3
"""Where the client's CPU goes, per interleaved mode of the benchmark, in µs per call.

    perf record -e cpu-clock -F 4000 -g -o perf.data -- \\
        build/bench/bench --refd build/stage/bin/goxel-refd --only pool10 --threads 32 --one-cpu --cycles 20 > bench.txt
    perf script -i perf.data -F comm,ip,sym,dso > perf.txt
    python3 Tests/bench/profile_modes.py perf.txt bench.txt 4000 [mode ...]

The benchmark names each interleaved thread after its mode ("3:pool"), so a sample's thread says
which mode it was working for. A sample is 1/F s of CPU; divided by the mode's calls (its JSON
row) it gives µs per call. Kernel samples are sorted by the system call they are in (and whether
it slept: "schedule" on the stack), user samples by library. Only the callers' threads count:
the pools' own threads (maintenance, workers) have other names. cpu-clock samples land where
interrupts are enabled again, so kernel time is attributed to its system call well, to the
functions inside it less so. Rows of the same name (the raw client with 10 and with 32 threads)
are told apart by the second one's thread count ("raw/32"). One experiment per run (--threads
N): the slots in the thread names start again in each.
"""
import collections
import json
import sys


def read_samples(path):
    """(thread name, [frames, innermost first], [libraries]) per sample."""
    samples, current = [], None
    with open(path, errors="replace") as f:
        for line in f:
            if not line.strip():
                if current:
                    samples.append(current)
                current = None
                continue
            if not line[0].isspace():
                current = (line.split()[0], [], [])
                continue
            if current is None:
                continue
            parts = line.split(None, 1)
            rest = parts[1].strip() if len(parts) > 1 else "?"
            dso = rest[rest.rfind("(") + 1:-1] if rest.endswith(")") else "?"
            symbol = rest[:rest.rfind(" (")] if rest.endswith(")") else rest
            current[1].append(symbol.split("+0x")[0])
            current[2].append(dso.rsplit("/", 1)[-1])
    if current:
        samples.append(current)
    return samples


def category(frames, dsos):
    syscall = next((f for f in frames if f.startswith("__x64_sys_")), None)
    if syscall:
        slept = any("schedule" in f for f in frames[:frames.index(syscall)])
        return "kernel " + syscall[len("__x64_sys_"):] + (" (slept)" if slept else "")
    if dsos and dsos[0].startswith("[kernel"):
        return "kernel, other"
    leaf = dsos[0] if dsos else "?"
    for name in ("libgoxelpool", "libjansson", "libc.so", "vdso", "bench"):
        if name in leaf:
            return "user " + name.replace(".so", "")
    return "user, other"


def main():
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    perf_path, bench_path, frequency = sys.argv[1], sys.argv[2], float(sys.argv[3])
    wanted = sys.argv[4:]
    calls, names = {}, {}
    with open(bench_path) as f:
        for line in f:
            if line.startswith("{") and '"pool10"' in line:
                row = json.loads(line)
                label = row["mode"]
                if any(r["mode"] == label and r["threads"] != row["threads"] for r in names.values()):
                    label = "%s/%d" % (row["mode"], row["threads"])
                names[label] = row
                calls[label] = row["calls"]
    # A thread's name is "slot:mode" cut to 15 characters; the slot is the mode's index, which is
    # its row's place in the output. A name whose mode does not match that row is refused.
    slot_label = {str(index): label for index, label in enumerate(names)}
    per_mode = collections.defaultdict(collections.Counter)
    for thread, frames, dsos in read_samples(perf_path):
        slot, _, mode = thread.partition(":")
        label = slot_label.get(slot)
        if label is None or not names[label]["mode"].startswith(mode):
            continue
        per_mode[label][category(frames, dsos)] += 1
    modes = wanted or [m for m in names if per_mode[m]]
    # A mode's samples include its warm-up slice, its calls do not: both are per mode alike.
    unit = 1e6 / frequency
    keys = sorted({k for m in modes for k in per_mode[m]},
                  key=lambda k: -sum(per_mode[m][k] / calls[m] for m in modes))
    print("client CPU per call, µs (perf cpu-clock at %g Hz; all of a mode's threads)" % frequency)
    print("%-34s" % "" + "".join("%12s" % m[:12] for m in modes))
    for key in keys:
        print("%-34s" % key[:34] + "".join("%12.2f" % (per_mode[m][key] * unit / calls[m]) for m in modes))
    print("%-34s" % "total" + "".join("%12.2f" % (sum(per_mode[m].values()) * unit / calls[m]) for m in modes))


if __name__ == "__main__":
    main()
