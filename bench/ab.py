#!/usr/bin/env python3
"""Same-run A/B of two porthole builds (or one build with and without some flags) on
loopback, finer than two bench.py runs: both iroh-direct tunnels are up at once and TCP
runs alternate between them (A B, B A, A B, ...), so a slow phase of this shared host
hits both halves of a pair. Reports each side's median throughput and CPU per GB of the
tunnel ends, and the median of the paired ratios B/A.

  python3 bench/ab.py --a /tmp/base/porthole --b target/release/porthole \\
      --b-args "--metrics 127.0.0.1:0" --pairs 15 --seconds 3
"""

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--a", required=True, help="porthole binary A (the baseline)")
    ap.add_argument("--b", required=True, help="porthole binary B")
    ap.add_argument("--a-args", default="", help="extra server and client flags for A")
    ap.add_argument("--b-args", default="", help="extra server and client flags for B")
    ap.add_argument("--pairs", type=int, default=15)
    ap.add_argument("--seconds", type=int, default=3)
    ap.add_argument("--streams", type=int, default=1)
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="porthole-ab-"))
    print(f"ab: logs in {work}", file=sys.stderr)
    bench.secrets(work)
    iperf_port, echo_port = bench.free_port(), bench.free_port()
    services = [bench.Proc("iperf3-server", ["iperf3", "-s", "-p", iperf_port], work),
                bench.Proc("echo", [bench.LABTOOL, "echo", "--tcp", f"127.0.0.1:{echo_port}"], work)]
    time.sleep(0.5)
    sides = []
    try:
        for name, binary, extra in (("a", args.a, args.a_args), ("b", args.b, args.b_args)):
            bench.PORTHOLE = Path(binary).resolve()
            bench.EXTRA = extra.split()
            c = bench.Case(name, work)
            bench.setup_iroh_direct(c, iperf_port, echo_port)
            sides.append(c)
        for c in sides:
            bench.connect_rate(c.echo_port, 20)
        runs = {0: [], 1: []}
        cpu = {0: 0.0, 1: 0.0}
        moved = {0: 0, 1: 0}
        for i in range(args.pairs):
            order = (0, 1) if i % 2 == 0 else (1, 0)
            for k in order:
                procs = sides[k].tunnel_procs()
                cpu0 = sum(p.cpu_s() for p in procs)
                bps, n = bench.tcp(sides[k].iperf_port, args.streams, args.seconds)
                cpu[k] += sum(p.cpu_s() for p in procs) - cpu0
                moved[k] += n
                runs[k].append(bps)
            print(f"ab: pair {i + 1}: A {runs[0][-1] / 1e9:.2f} Gb/s, B {runs[1][-1] / 1e9:.2f} Gb/s",
                  file=sys.stderr, flush=True)
    finally:
        for c in sides:
            c.stop()
        for s in services:
            s.stop()
    ratios = [b / a for a, b in zip(runs[0], runs[1]) if a > 0]
    q = statistics.quantiles(ratios, n=4) if len(ratios) >= 4 else [min(ratios), 0, max(ratios)]
    for k, name in ((0, "A"), (1, "B")):
        print(f"{name}: median {statistics.median(runs[k]) / 1e9:.2f} Gb/s, "
              f"CPU {cpu[k] / (moved[k] / 1e9):.2f} s/GB ({args.streams} stream(s), {args.pairs} runs)")
    print(f"B/A paired ratio: median {statistics.median(ratios):.3f} "
          f"(quartiles {q[0]:.3f}-{q[-1]:.3f}); CPU per GB B/A "
          f"{(cpu[1] / moved[1]) / (cpu[0] / moved[0]):.3f}")


if __name__ == "__main__":
    main()
