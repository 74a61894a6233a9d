#!/usr/bin/env python3
"""WAN benchmark (entry point: `bench/run.sh --wan`; root, it builds network namespaces).

porthole across two NATs over a shaped path, against kernel TCP and a stunnel TLS 1.3
tunnel over the very same path, in the same run. The lab is the NAT lab of the tests
(`porthole_labtool::lab`, started through `porthole-labtool lab`): the server and the
iperf3 server on host B behind NAT B, the client and iperf3's client on host A behind
NAT A, the relay (HTTPS + QUIC address discovery + STUN) on the lab's internet. Each
NAT's uplink delays every packet by RTT/2 (NFQUEUE, `porthole-labtool netem`), drops
a share of them, and is a tbf bottleneck; offloads are off on every link, so a lost
packet is one packet. Cases, all set up at once on each path and measured in turn:

  kernel        iperf3 straight through a DNAT port on NAT B (no tunnel, no punching)
  stunnel       stunnel TLS 1.3 client on host A, server on host B, over that DNAT port
  iroh-direct   porthole, iroh mode, on the hole-punched direct path
  manual        porthole, manual mode (quinn + STUN), on its punched path
  iroh-relay    porthole, iroh mode, relay only (both ends --relay-only)

For each: TCP 1 and 4 streams, up (client -> server) and down (`iperf3 -R`), medians
of --repeat runs (rounds interleave the cases, so a slow phase of the host hits them
all). Every tunnel's figure is reported as a ratio to stunnel's, on the same path in
the same run; the targets of docs/BENCHMARKS.md are checked. Peak RSS of both ends of
each tunnel is read at the end of each path.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import bench
from bench import LABTOOL, PORTHOLE, ROOT, Proc

IPERF_PORT = 5201
STUNNEL_PORT = 8443
RELAY_IP = "198.18.0.10"
STUN = ["--stun-server", f"{RELAY_IP}:3478", "--stun-server", f"{RELAY_IP}:3479"]
# The local port each tunnel's client listens on, on host A.
LOCAL = {"stunnel": 15201, "iroh-direct": 25201, "manual": 35201, "iroh-relay": 45201,
         "iroh-upgraded": 55201}
# iroh-upgraded: iroh mode moved onto a path the direct upgrade punched (needs
# --server-nat symmetric, where iroh alone stays on the relay); manual is the same QUIC
# stack on a path punched from the start.
CASES = ["kernel", "stunnel", "iroh-direct", "manual", "iroh-relay", "iroh-upgraded"]
TUNNELS = ["iroh-direct", "manual", "iroh-relay", "iroh-upgraded"]
CELLS = [(1, "up"), (1, "down"), (4, "up"), (4, "down")]


class Lab:
    """`porthole-labtool lab`: the network lives as long as its stdin is open."""

    def __init__(self, work, rtt_ms, loss, rate_mbit, queue_ms, tcp_wmem_max=None, server_nat="cone"):
        self.log = open(work / "lab.log", "w")
        argv = [LABTOOL, "lab", "--server-nat", server_nat, "--delay-ms", str(rtt_ms // 2), "--loss", str(loss),
                "--rate-mbit", str(rate_mbit), "--queue-ms", str(queue_ms), "--offloads-off",
                "--dnat-tcp", str(IPERF_PORT), "--dnat-tcp", str(STUNNEL_PORT)]
        if tcp_wmem_max:
            argv += ["--tcp-wmem-max", str(tcp_wmem_max)]
        self.p = subprocess.Popen([str(a) for a in argv], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=self.log, text=True)
        line = self.p.stdout.readline()
        if not line:
            self.p.wait(10)
            raise RuntimeError(f"the lab did not start: {(work / 'lab.log').read_text()[-2000:]}")
        self.info = json.loads(line)

    def ns(self, role):
        return ["ip", "netns", "exec", self.info[role]]

    def delay_line_drops(self):
        """Packets the delay lines could not queue (the kernel drops them: a lab artifact
        that would count as loss; the harness warns when there are any)."""
        total = 0
        for ns in self.info.get("impaired", []):
            out = subprocess.run(["ip", "netns", "exec", ns, "cat", "/proc/net/netfilter/nfnetlink_queue"],
                                 capture_output=True, text=True).stdout
            for line in out.splitlines():
                f = line.split()
                if len(f) >= 7:
                    total += int(f[5]) + int(f[6])  # queue_dropped + user_dropped
        return total

    def close(self):
        if self.p.stdin:
            self.p.stdin.close()
        try:
            self.p.wait(60)
        except subprocess.TimeoutExpired:
            self.p.kill()
        self.log.close()


class Path_:
    """One shaped path and every case running across it."""

    def __init__(self, work, lab, cases):
        self.work, self.lab, self.cases = work, lab, cases
        self.procs = {}  # case -> [Proc]
        self.errors = {}

    def spawn(self, case, name, role, argv, env=None):
        p = Proc(f"{case}-{name}", self.lab.ns(role) + [str(a) for a in argv], self.work, env)
        self.procs.setdefault(case, []).append(p)
        return p

    def stop(self):
        for procs in self.procs.values():
            for p in reversed(procs):
                p.stop()

    def target(self, case):
        """(host, port) the iperf3 client on host A connects to for `case`."""
        if case == "kernel":
            return self.lab.info["server_nat_ip"], IPERF_PORT
        return "127.0.0.1", LOCAL[case]

    # --- setup -------------------------------------------------------------------------

    def start(self):
        w = self.work
        self.iperf = Proc("iperf3-server", self.lab.ns("server") + ["iperf3", "-s", "-p", str(IPERF_PORT)], w)
        if any(c.startswith("iroh") for c in self.cases):
            self.start_relay()
        for case in self.cases:
            try:
                {"kernel": lambda: None, "stunnel": self.start_stunnel, "iroh-direct": self.start_iroh_direct,
                 "manual": self.start_manual, "iroh-relay": self.start_iroh_relay,
                 "iroh-upgraded": self.start_iroh_upgraded}[case]()
            except Exception as e:  # a case that cannot start is reported, not fatal
                self.errors[case] = str(e).splitlines()[0] if str(e) else type(e).__name__
                print(f"wan: {case} did not start: {e}", file=sys.stderr, flush=True)
        time.sleep(1)

    def start_relay(self):
        tls = self.work / "tls"
        subprocess.run([PORTHOLE, "generate-relay-cert", "--name", RELAY_IP, "--out-dir", tls, "--force"],
                       check=True, capture_output=True)
        r = Proc("relay", self.lab.ns("relay") + [str(PORTHOLE), "relay", "-q", "--http-bind", f"{RELAY_IP}:80",
                                                  "--https-bind", f"{RELAY_IP}:443", "--tls-cert", str(tls / "cert.pem"),
                                                  "--tls-key", str(tls / "key.pem"), "--quic-bind", f"{RELAY_IP}:7842",
                                                  "--stun-bind", f"{RELAY_IP}:3478", "--stun-bind", f"{RELAY_IP}:3479"],
                 self.work)
        self.procs.setdefault("relay", []).append(r)
        r.wait_for("relay URL", 30)

    def start_stunnel(self):
        tls = self.work / "tls"
        if not (tls / "cert.pem").exists():
            subprocess.run([PORTHOLE, "generate-relay-cert", "--name", RELAY_IP, "--out-dir", tls, "--force"],
                           check=True, capture_output=True)
        common = f"foreground = yes\npid =\nsslVersionMin = TLSv1.3\n"
        (self.work / "stunnel-server.conf").write_text(
            common + f"[iperf]\naccept = 0.0.0.0:{STUNNEL_PORT}\nconnect = 127.0.0.1:{IPERF_PORT}\n"
            f"cert = {tls}/cert.pem\nkey = {tls}/key.pem\n")
        (self.work / "stunnel-client.conf").write_text(
            common + f"[iperf]\nclient = yes\naccept = 127.0.0.1:{LOCAL['stunnel']}\n"
            f"connect = {self.lab.info['server_nat_ip']}:{STUNNEL_PORT}\n")
        self.spawn("stunnel", "server", "server", ["stunnel4", self.work / "stunnel-server.conf"])
        self.spawn("stunnel", "client", "client", ["stunnel4", self.work / "stunnel-client.conf"])

    def iroh(self, case, extra):
        tls = self.work / "tls"
        relay = ["--relay-url", f"https://{RELAY_IP}/?quic-port=7842", "--relay-ca", tls / "ca.pem",
                 "--dns-server", "none", "--no-portmap"]
        if case != "iroh-upgraded":
            relay.append("--no-upgrade")
        s = self.spawn(case, "server", "server", [PORTHOLE, "server", "--auth-tokens-file", self.work / "tokens.txt",
                                                  "--allowed-tcp", "127.0.0.0/8"] + relay + extra + bench.EXTRA)
        s.wait_for("Ticket: ", 30)
        ticket = [l for l in s.text().splitlines() if l.startswith("Ticket: ")][0].split()[1]
        c = self.spawn(case, "client", "client", [PORTHOLE, "client", "--ticket", ticket, "--auth-token-file",
                                                  self.work / "tokens.txt", "--source",
                                                  f"tcp://127.0.0.1:{IPERF_PORT}", "--listen",
                                                  f"127.0.0.1:{LOCAL[case]}"] + relay + extra + bench.EXTRA)
        c.wait_for("tunnel up", 60)
        return c

    def start_iroh_direct(self):
        c = self.iroh("iroh-direct", [])
        wait_path(c, "path=direct", 30)

    def start_iroh_upgraded(self):
        c = self.iroh("iroh-upgraded", STUN)
        wait_path(c, "upgraded from the relay", 30)

    def start_iroh_relay(self):
        c = self.iroh("iroh-relay", ["--relay-only"])
        wait_path(c, "path=relay", 30)

    def start_manual(self):
        offer, answer = self.work / "offer.txt", self.work / "answer.txt"
        for f in (offer, answer):
            f.unlink(missing_ok=True)
        signal = ["--mode", "manual", "--offer-file", offer, "--answer-file", answer] + STUN
        self.spawn("manual", "server", "server", [PORTHOLE, "server", "--auth-tokens-file", self.work / "tokens.txt",
                                                  "--allowed-tcp", "127.0.0.0/8"] + signal)
        c = self.spawn("manual", "client", "client", [PORTHOLE, "client", "--auth-token-file", self.work / "tokens.txt",
                                                      "--source", f"tcp://127.0.0.1:{IPERF_PORT}", "--listen",
                                                      f"127.0.0.1:{LOCAL['manual']}"] + signal)
        c.wait_for("tunnel up", 90)

    # --- measuring ---------------------------------------------------------------------

    def run(self, seconds, repeat):
        """{case: {(streams, dir): [bit/s...]}}, rounds interleaving the cases."""
        runs = {c: {cell: [] for cell in CELLS} for c in self.cases if c not in self.errors}
        for r in range(repeat):
            for case in runs:
                host, port = self.target(case)
                for streams, direction in CELLS:
                    try:
                        bps, _ = bench.tcp(port, streams, seconds, wrapper=self.lab.ns("client"), host=host,
                                           reverse=direction == "down")
                    except Exception as e:
                        print(f"wan: {case} {streams}x {direction} failed: {e}", file=sys.stderr, flush=True)
                        bps = 0.0
                    runs[case][(streams, direction)].append(bps)
                    print(f"wan:   round {r + 1} {case:12} {streams} stream(s) {direction:4} "
                          f"{bps / 1e6:7.1f} Mbit/s", file=sys.stderr, flush=True)
        return runs

    def peak_rss_mib(self, case):
        return max((p.status("VmHWM") for p in self.procs.get(case, [])), default=0) / 1024


def wait_path(client, needle, timeout):
    end = time.time() + timeout
    while time.time() < end:
        lines = [l for l in client.text().splitlines() if "path=" in l]
        if lines and needle in lines[-1]:
            return
        time.sleep(0.2)
    raise RuntimeError(f"{client.name}: not on {needle} after {timeout}s: "
                       f"{[l for l in client.text().splitlines() if 'path=' in l][-1:]}")


def path_name(rtt, loss):
    return f"{rtt} ms, {loss * 100:g} % loss" if loss else f"{rtt} ms, no loss"


def measure_path(work, rtt, loss, args):
    lab = Lab(work, rtt, loss, args.rate, args.queue_ms, args.tcp_wmem_max, args.server_nat)
    p = Path_(work, lab, args.cases)
    try:
        p.start()
        runs = p.run(args.seconds, args.repeat)
        result = {"rtt_ms": rtt, "loss": loss, "errors": p.errors, "cases": {},
                   "delay_line_drops": lab.delay_line_drops()}
        if result["delay_line_drops"]:
            print(f"wan: WARNING: the delay lines dropped {result['delay_line_drops']} packet(s) they could not "
                  "queue (host too busy?): loss beyond the configured rate", file=sys.stderr, flush=True)
        for case, cells in runs.items():
            result["cases"][case] = {
                f"{s}-{d}": {"median_mbps": statistics.median(v) / 1e6, "runs_mbps": [round(x / 1e6, 1) for x in v]}
                for (s, d), v in cells.items()}
            if case != "kernel":
                result["cases"][case]["peak_rss_mib"] = p.peak_rss_mib(case)
        return result
    finally:
        p.stop()
        p.iperf.stop()
        lab.close()


# --- reporting --------------------------------------------------------------------------

def cell(res, case, key):
    c = res["cases"].get(case)
    return c[key]["median_mbps"] if c and key in c else None


def table(res):
    head = ["case", "1 stream up", "1 stream down", "4 streams up", "4 streams down", "peak RSS (MiB)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for case in CASES:
        if case in res["errors"]:
            lines.append(f"| {case} | " + " | ".join(["n/a"] * 4) + f" | {res['errors'][case][:50]} |")
            continue
        if case not in res["cases"]:
            continue
        cells = [case]
        for s, d in CELLS:
            v, ref = cell(res, case, f"{s}-{d}"), cell(res, "stunnel", f"{s}-{d}")
            ratio = f" ({v / ref:.2f}x)" if ref and case not in ("stunnel", "kernel") else ""
            cells.append(f"{v:.0f}{ratio}")
        rss = res["cases"][case].get("peak_rss_mib")
        cells.append(f"{rss:.1f}" if rss else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def targets(results):
    """The issue's targets, judged per path on ratios to stunnel in the same run."""
    checks = []
    for res in results:
        rtt, loss, name = res["rtt_ms"], res["loss"], path_name(res["rtt_ms"], res["loss"])
        for case in ("iroh-direct", "manual"):
            if case not in res["cases"] or "stunnel" not in res["cases"]:
                continue
            if loss == 0 and rtt <= 50:
                keys, bar = ["1-up", "1-down", "4-up", "4-down"], 0.95
            elif loss == 0:
                keys, bar = ["1-up", "1-down"], 0.9
            else:
                keys, bar = ["1-up", "1-down", "4-up", "4-down"], 1.0
            ratios = {k: cell(res, case, k) / cell(res, "stunnel", k) for k in keys if cell(res, "stunnel", k)}
            worst = min(ratios, key=ratios.get)
            checks.append((f"{name}: {case} >= {bar}x stunnel ({', '.join(keys)})", ratios[worst] >= bar,
                           ", ".join(f"{k} {v:.2f}x" for k, v in ratios.items())))
            for s in (1, 4):
                up, down = cell(res, case, f"{s}-up"), cell(res, case, f"{s}-down")
                if up and down:
                    gap = abs(up - down) / max(up, down)
                    checks.append((f"{name}: {case} {s} stream(s) up and down within 10 %", gap <= 0.10,
                                   f"{up:.0f} / {down:.0f} Mbit/s"))
        for base in ("manual", "iroh-direct"):
            if "iroh-upgraded" not in res["cases"] or base not in res["cases"]:
                continue
            ratios = {k: cell(res, "iroh-upgraded", k) / cell(res, base, k)
                      for k in ("1-up", "1-down", "4-up", "4-down") if cell(res, base, k)}
            if ratios:
                checks.append((f"{name}: upgraded path >= 0.9x {base} (direct from the start)",
                               min(ratios.values()) >= 0.9,
                               ", ".join(f"{k} {v:.2f}x" for k, v in ratios.items())))
        if "iroh-relay" in res["cases"] and "iroh-direct" in res["cases"]:
            r = [cell(res, "iroh-relay", k) / cell(res, "iroh-direct", k)
                 for k in ("1-up", "1-down") if cell(res, "iroh-direct", k)]
            if r:
                checks.append((f"{name}: relay path >= 0.5x direct (1 stream)", min(r) >= 0.5,
                               " / ".join(f"{x:.2f}x" for x in r)))
    return checks


def chart(results, png):
    """Ratio to stunnel per path and case: 1 stream up / down, 4 streams up / down."""
    dat = png.with_suffix(".dat")
    tunnels = [c for c in TUNNELS if any(c in r["cases"] for r in results)]
    with open(dat, "w") as f:
        for res in results:
            row = [f'"{res["rtt_ms"]} ms\\n{res["loss"] * 100:g} %"']
            for key in ("1-up", "1-down", "4-up", "4-down"):
                ref = cell(res, "stunnel", key)
                for case in tunnels:
                    v = cell(res, case, key)
                    row.append(f"{v / ref:.3f}" if v is not None and ref else "0")
            f.write(" ".join(row) + "\n")
    n = len(tunnels)
    panels = []
    for i, title in enumerate(["1 stream up", "1 stream down", "4 streams up", "4 streams down"]):
        cols = ", ".join(f'"{dat}" using {2 + i * n + j}{":xtic(1)" if j == 0 else ""} title "{t}"'
                         for j, t in enumerate(tunnels))
        panels.append(f'set title "{title}"\nplot {cols}, 1 with lines lc "black" dt 2 notitle')
    script = f"""
set terminal pngcairo size 1200,800 font ",10"
set output "{png}"
set multiplot layout 2,2 title "porthole across two NATs, 500 Mbit/s bottleneck: throughput as a ratio to stunnel on the same path"
set ylabel "x stunnel"
set yrange [0:*]
set style data histogram
set style histogram clustered gap 1
set style fill solid 0.8 border -1
set key top left
""" + "\n".join(panels) + "\nunset multiplot\n"
    subprocess.run(["gnuplot"], input=script, text=True, check=True)
    dat.unlink()


def kernel_cc():
    try:
        return Path("/proc/sys/net/ipv4/tcp_congestion_control").read_text().strip()
    except OSError:
        return "?"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="4 s tests, one round, no docs update")
    ap.add_argument("--rtts", default="50,150", help="round-trip times in ms (comma-separated)")
    ap.add_argument("--losses", default="0,0.001,0.01", help="loss per packet per direction (comma-separated)")
    ap.add_argument("--cases", default=",".join(c for c in CASES if c != "iroh-upgraded"))
    ap.add_argument("--server-nat", default="cone", choices=["cone", "symmetric"],
                    help="the server side's NAT (symmetric: iroh alone stays relayed; the "
                         "iroh-upgraded case needs it, iroh-direct cannot have it)")
    ap.add_argument("--seconds", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=3, help="rounds (medians reported)")
    ap.add_argument("--rate", type=int, default=500, help="bottleneck, Mbit/s")
    ap.add_argument("--queue-ms", type=int, default=50, help="bottleneck queue, ms of traffic at its rate")
    ap.add_argument("--no-docs", action="store_true", help="print only, do not update docs/BENCHMARKS.md")
    ap.add_argument("--tcp-wmem-max", type=int, default=None,
                    help="kernel TCP send-buffer limit (net.ipv4.tcp_wmem max, bytes) on every lab host; "
                         "default: the kernel's (4 MiB)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        ap.error("the WAN lab builds network namespaces: run as root")
    for tool in (PORTHOLE, LABTOOL):
        if not Path(tool).is_file():
            ap.error(f"no {tool}: run bench/run.sh --wan (it builds the release binaries)")
    if args.quick:
        args.seconds, args.repeat = 4, 1
    args.cases = [c for c in args.cases.split(",") if c]
    unknown = set(args.cases) - set(CASES)
    if unknown:
        ap.error(f"unknown case(s) {sorted(unknown)}: {', '.join(CASES)}")
    if args.server_nat == "symmetric" and "iroh-direct" in args.cases:
        ap.error("iroh-direct cannot go direct with --server-nat symmetric (iroh-upgraded measures that path)")
    if "iroh-upgraded" in args.cases and args.server_nat != "symmetric":
        ap.error("iroh-upgraded needs --server-nat symmetric (else iroh goes direct by itself)")
    if "stunnel" not in args.cases:
        args.cases.insert(0, "stunnel")
    rtts = [int(x) for x in args.rtts.split(",") if x]
    losses = [float(x) for x in args.losses.split(",") if x]
    work = Path(tempfile.mkdtemp(prefix="porthole-wan-"))
    print(f"wan: logs of every process in {work}", file=sys.stderr)
    bench.secrets(work)
    started = time.time()
    results = []
    for rtt in rtts:
        for loss in losses:
            print(f"wan: path {path_name(rtt, loss)}", file=sys.stderr, flush=True)
            pwork = work / f"rtt{rtt}-loss{loss:g}"
            pwork.mkdir()
            (pwork / "tokens.txt").write_text((work / "tokens.txt").read_text())
            os.chmod(pwork / "tokens.txt", 0o600)
            res = measure_path(pwork, rtt, loss, args)
            results.append(res)
            print(f"\n### {path_name(rtt, loss)}\n\n{table(res)}\n\ndelay-line drops: {res['delay_line_drops']}\n",
                  flush=True)
    checks = targets(results)
    check_md = "\n".join(f"- {'PASS' if ok else 'FAIL'}: {what} ({detail})" for what, ok, detail in checks)
    print(check_md)
    out = ROOT / "bench/out"
    out.mkdir(parents=True, exist_ok=True)
    (out / "wan-results.json").write_text(json.dumps(results, indent=2))
    print(f"wan: {len(results)} path(s) in {(time.time() - started) / 60:.0f} min", file=sys.stderr)
    if args.quick or args.no_docs:
        return
    png = ROOT / "docs/img/bench-wan.png"
    chart(results, png)
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    cpu = bench.cpu_model()
    body = "\n\n".join(f"**{path_name(r['rtt_ms'], r['loss'])}** (Mbit/s; tunnels as a ratio to stunnel; "
                       f"packets the delay lines failed to queue: {r['delay_line_drops']})\n\n{table(r)}"
                       for r in results)
    block = (f"Run of {stamp} on {os.cpu_count()} x {cpu}: {args.rate} Mbit/s bottleneck with a {args.queue_ms} ms "
             f"queue on each NAT uplink, offloads off, iperf3 {args.seconds} s, medians of {args.repeat} rounds; "
             f"kernel TCP congestion control: {kernel_cc()}.\n\n{body}\n\nTargets:\n\n{check_md}\n\n"
             f"![WAN throughput](img/bench-wan.png)")
    bench.replace_block(ROOT / "docs/BENCHMARKS.md", "wan", block)
    print(f"wan: wrote docs/BENCHMARKS.md and {png}", file=sys.stderr)


if __name__ == "__main__":
    main()
