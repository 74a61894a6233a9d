#!/usr/bin/env python3
"""Why 8 streams move no more than one: per-GB accounting of an iroh-direct tunnel.

The full harness (bench.py) says *whether* 8 streams keep up with one; this says *where*
the time goes, so a claim in docs/BENCHMARKS.md can be re-checked. One tunnel, one
iperf3 server; every measurement alternates 1 and 8 streams and is normalised per GB
moved, so a slow phase of the shared host hits both.

  python3 bench/streams.py pairs   [--rounds 9] [--seconds 5]
      interleaved direct 1, tunnel 1, direct 8, tunnel 8; each pair's 8-vs-1 ratio
  python3 bench/streams.py account [--rounds 2] [--seconds 5]
      per GB: CPU, context switches and system calls of each tunnel end, the iperf3
      client and the iperf3 server (`perf stat`)
  python3 bench/streams.py profile [--rounds 3] [--seconds 5]
      per GB: flat `perf record` samples of each tunnel end by symbol; the symbols whose
      cost changes most between 1 and 8 streams

Needs a release build (`cargo build --release -p porthole`, or PORTHOLE_BENCH_BIN),
iperf3 and, for account / profile, `perf` (Debian: linux-perf) with permission to
attach to processes (root).
"""

import argparse
import collections
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import bench

COUNTERS = ",".join([
    "task-clock", "context-switches", "raw_syscalls:sys_enter",
    "syscalls:sys_enter_read", "syscalls:sys_enter_recvfrom", "syscalls:sys_enter_recvmsg",
    "syscalls:sys_enter_recvmmsg", "syscalls:sys_enter_write", "syscalls:sys_enter_writev",
    "syscalls:sys_enter_sendmsg", "syscalls:sys_enter_epoll_wait", "syscalls:sys_enter_pselect6",
])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["pairs", "account", "profile"])
    ap.add_argument("--rounds", type=int, help="rounds of 1 and 8 streams (default: 9 / 2 / 3)")
    ap.add_argument("--seconds", type=int, default=5, help="length of each iperf3 run")
    a = ap.parse_args()
    rounds = a.rounds or {"pairs": 9, "account": 2, "profile": 3}[a.what]
    needs = ["iperf3"] + (["perf"] if a.what != "pairs" else [])
    missing = [tool for tool in needs if not shutil.which(tool)]
    if missing:
        ap.error(f"needs {' and '.join(missing)} (Debian: apt-get install iperf3 linux-perf)")
    if not bench.PORTHOLE.is_file():
        ap.error(f"no porthole binary at {bench.PORTHOLE}: run `cargo build --release -p porthole` "
                 "or set PORTHOLE_BENCH_BIN")
    iperf_port = bench.free_port()
    server = subprocess.Popen(["iperf3", "-s", "-p", str(iperf_port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    work = Path(tempfile.mkdtemp(prefix="porthole-streams-"))
    bench.secrets(work)
    tunnel = bench.Case(bench.JUDGED, work)
    try:
        bench.setup_iroh_direct(tunnel, iperf_port, iperf_port)
        run = {"pairs": pairs, "account": account, "profile": profile}[a.what]
        run(tunnel, server, iperf_port, work, rounds, a.seconds)
    finally:
        tunnel.stop()
        server.terminate()


def pairs(tunnel, _server, iperf_port, _work, rounds, seconds):
    ratios = collections.defaultdict(list)
    for _ in range(rounds):
        d1 = bench.tcp(iperf_port, 1, seconds)[0] / 1e9
        t1 = bench.tcp(tunnel.iperf_port, 1, seconds)[0] / 1e9
        d8 = bench.tcp(iperf_port, 8, seconds)[0] / 1e9
        t8 = bench.tcp(tunnel.iperf_port, 8, seconds)[0] / 1e9
        ratios["tunnel 8/1"].append(t8 / t1)
        ratios["direct 8/1"].append(d8 / d1)
        print(f"direct {d1:5.1f} / {d8:5.1f} Gb/s   tunnel {t1:5.2f} / {t8:5.2f} Gb/s   "
              f"8/1: tunnel {t8 / t1:.3f}x, direct {d8 / d1:.3f}x", flush=True)
    for name, xs in ratios.items():
        print(f"{name}: median {statistics.median(xs):.3f}x ({min(xs):.2f}-{max(xs):.2f}x)")


def account(tunnel, server, _iperf_port, work, rounds, seconds):
    targets = tunnel_ends(tunnel)
    targets["iperf3 server"] = server.pid
    for _ in range(rounds):
        for streams in (1, 8):
            stats = {name: work / f"{name}.stat".replace(" ", "-") for name in [*targets, "iperf3 client"]}
            perfs = [subprocess.Popen(perf_stat_argv(stats[name]) + ["-p", str(pid)]) for name, pid in targets.items()]
            time.sleep(0.3)
            client_perf = perf_stat_argv(stats["iperf3 client"]) + ["--"]
            bps, moved = bench.tcp(tunnel.iperf_port, streams, seconds, wrapper=client_perf)
            stop(perfs)
            gb = moved / 1e9
            print(f"{streams} stream(s): {bps / 1e9:.2f} Gb/s; per GB:")
            for name, path in stats.items():
                per_gb = " ".join(f"{k}={v / gb:.0f}" for k, v in perf_stat(path).items())
                print(f"  {name:14} {per_gb}", flush=True)


def profile(tunnel, _server, _iperf_port, work, rounds, seconds):
    ends = tunnel_ends(tunnel)
    per_gb = collections.defaultdict(collections.Counter)
    for r in range(rounds):
        for streams in (1, 8):
            data = {end: work / f"{end}-{streams}-{r}.data" for end in ends}
            perfs = [subprocess.Popen(["perf", "record", "-q", "-F", "2000", "-p", str(pid), "-o", str(data[end])],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                     for end, pid in ends.items()]
            time.sleep(0.3)
            bps, moved = bench.tcp(tunnel.iperf_port, streams, seconds)
            stop(perfs)
            gb = moved / 1e9
            print(f"round {r}, {streams} stream(s): {bps / 1e9:.2f} Gb/s", flush=True)
            for end, path in data.items():
                for symbol, samples in perf_samples(path).items():
                    per_gb[(end, streams)][symbol] += samples / gb / rounds
    for end in ends:
        one, eight = per_gb[(end, 1)], per_gb[(end, 8)]
        total1, total8 = sum(one.values()), sum(eight.values())
        print(f"\n{end}: samples per GB, 1 stream {total1:.0f}, 8 streams {total8:.0f} ({total8 / total1:.3f}x)")
        print(f"  {'1':>7} {'8':>7} {'8-1':>7}  symbol")
        by_change = sorted(set(one) | set(eight), key=lambda s: eight[s] - one[s])
        for symbol in by_change[-12:][::-1] + by_change[:6]:
            print(f"  {one[symbol]:7.0f} {eight[symbol]:7.0f} {eight[symbol] - one[symbol]:+7.0f}  {symbol}")


def tunnel_ends(tunnel):
    """{"server": pid, "client": pid} of the tunnel's two processes."""
    return {p.name.removeprefix(f"{tunnel.name}-"): p.p.pid for p in tunnel.tunnel_procs()}


def perf_stat_argv(out):
    return ["perf", "stat", "-x,", "-e", COUNTERS, "-o", str(out)]


def stop(perfs):
    for p in perfs:
        p.send_signal(2)  # perf writes its report on SIGINT
    for p in perfs:
        p.wait(timeout=60)


def perf_stat(path):
    """`perf stat -x,` output: value,unit,event,..."""
    counts = {}
    for line in path.read_text().splitlines():
        fields = line.split(",")
        if len(fields) > 3 and fields[0].replace(".", "").isdigit():
            counts[fields[2].split(":")[-1].removeprefix("sys_enter_")] = float(fields[0])
    return counts


def perf_samples(path):
    report = subprocess.run(["perf", "report", "-i", str(path), "--no-children", "--stdio",
                             "--sort", "dso,sym", "-F", "sample,dso,sym"],
                            capture_output=True, text=True).stdout
    samples = {}
    for line in report.splitlines():
        fields = line.split(None, 1)
        if len(fields) == 2 and fields[0].isdigit():
            samples[" ".join(fields[1].split())[:100]] = int(fields[0])
    return samples


if __name__ == "__main__":
    main()
