#!/usr/bin/env python3
"""porthole benchmark harness (entry point: bench/run.sh).

Every case is measured in the same run as direct loopback, so results are ratios to a
ceiling measured minutes apart on the same (shared, noisy) machine. Cases:

  direct         iperf3 / echo reached directly (the ceiling)
  stunnel        stunnel TLS 1.3 relay, client + server (kernel TCP + TLS)
  rathole-tls    rathole with its TLS transport     (when it builds)
  rathole-noise  rathole with its Noise transport   (when it builds)
  iroh-direct    porthole, iroh mode, direct path
  iroh-relay     porthole, iroh mode, relay only through a local `porthole relay`
  manual         porthole, manual mode (quinn + punched loopback path)
  nodepass-tls0  porthole NodePass mode, tls=0
  nodepass-tls1  porthole NodePass mode, tls=1

Measures: TCP 1 and 8 streams (iperf3), UDP 1200-byte datagrams at fixed offered rates
(delivered rate, loss), 1000 sequential connect + first byte (median, p99), idle and peak
RSS of the tunnel processes, CPU seconds per GB moved.
"""

import argparse
import json
import os
import shutil
import signal
import statistics
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# PORTHOLE_BENCH_BIN: compare another build (A/B runs while tuning).
PORTHOLE = Path(os.environ.get("PORTHOLE_BENCH_BIN", ROOT / "target/release/porthole"))
# PORTHOLE_BENCH_ARGS: extra flags for porthole's server and client in the iroh cases
# (A/B of an option in one run, e.g. "--metrics 127.0.0.1:0").
EXTRA = os.environ.get("PORTHOLE_BENCH_ARGS", "").split()
LABTOOL = ROOT / "target/release/porthole-labtool"
RATHOLE = ROOT / "bench/out/bin/rathole"
TOKEN = "iABCDEFGHIJKLMNOPL"
CLK = os.sysconf("SC_CLK_TCK")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


class Proc:
    def __init__(self, name, argv, work, env=None):
        self.name = name
        self.log_path = work / f"{name}.log"
        self.log = open(self.log_path, "w")
        e = dict(os.environ)
        e.pop("RUST_LOG", None)
        e["NO_COLOR"] = "1"
        if env:
            e.update(env)
        self.p = subprocess.Popen([str(a) for a in argv], stdout=self.log, stderr=subprocess.STDOUT, env=e, cwd=work)

    def text(self):
        return self.log_path.read_text(errors="replace")

    def wait_for(self, needle, timeout=60):
        end = time.time() + timeout
        while time.time() < end:
            if needle in self.text():
                return
            if self.p.poll() is not None:
                break
            time.sleep(0.1)
        raise RuntimeError(f"{self.name}: no {needle!r} within {timeout}s:\n{self.text()[-3000:]}")

    def status(self, key):
        try:
            for line in open(f"/proc/{self.p.pid}/status"):
                if line.startswith(key + ":"):
                    return int(line.split()[1])
        except OSError:
            pass
        return 0

    def cpu_s(self):
        try:
            f = open(f"/proc/{self.p.pid}/stat").read().rsplit(")", 1)[1].split()
            return (int(f[11]) + int(f[12])) / CLK
        except OSError:
            return 0.0

    def stop(self):
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(5)
            except subprocess.TimeoutExpired:
                self.p.kill()
        self.log.close()


class Case:
    """A running tunnel: where iperf3 (TCP+UDP) and the echo service are reachable."""

    def __init__(self, name, work):
        self.name = name
        self.work = work
        self.procs = []
        self.iperf_port = None
        self.echo_port = None
        self.udp = True

    def spawn(self, name, argv, env=None):
        p = Proc(f"{self.name}-{name}", argv, self.work, env)
        self.procs.append(p)
        return p

    def tunnel_procs(self):
        # The iroh relay server is infrastructure, not one of the two tunnel ends.
        return [p for p in self.procs if not p.name.endswith("-relay")]

    def stop(self):
        for p in reversed(self.procs):
            p.stop()


def secrets(work):
    (work / "tokens.txt").write_text(TOKEN + "\n")
    os.chmod(work / "tokens.txt", 0o600)


def setup_direct(c, iperf, echo):
    c.iperf_port, c.echo_port = iperf, echo


def iroh_pair(c, iperf, echo, extra_server, extra_client, server_addr=True):
    port = free_port()
    s = c.spawn("server", [PORTHOLE, "server", "--auth-tokens-file", "tokens.txt", "--bind", f"127.0.0.1:{port}",
                           "--dns-server", "none", "--no-portmap", "--allowed-tcp", "127.0.0.0/8",
                           "--allowed-udp", "127.0.0.0/8", "-q"] + extra_server + EXTRA)
    s.wait_for("Ticket: ")
    ident = [l for l in s.text().splitlines() if l.startswith("EndpointId: ")][0].split()[1]
    c.iperf_port, c.echo_port = free_port(), free_port()
    args = [PORTHOLE, "client", "--server-node-id", ident, "--auth-token-file", "tokens.txt", "--dns-server", "none",
            "--no-portmap", "--source", f"tcp://127.0.0.1:{iperf}", "--listen", f"127.0.0.1:{c.iperf_port}",
            "--source", f"udp://127.0.0.1:{iperf}", "--listen", f"127.0.0.1:{c.iperf_port}",
            "--source", f"tcp://127.0.0.1:{echo}", "--listen", f"127.0.0.1:{c.echo_port}"] + extra_client + EXTRA
    if server_addr:
        args += ["--server-addr", f"127.0.0.1:{port}"]
    cl = c.spawn("client", args)
    cl.wait_for("tunnel up")


def setup_iroh_direct(c, iperf, echo):
    iroh_pair(c, iperf, echo, ["--relay-url", "none"], ["--relay-url", "none"])


def setup_iroh_relay(c, iperf, echo):
    rport = free_port()
    r = c.spawn("relay", [PORTHOLE, "relay", "--http-bind", f"127.0.0.1:{rport}", "-q"])
    r.wait_for("relay URL")
    url = f"http://127.0.0.1:{rport}"
    iroh_pair(c, iperf, echo, ["--relay-url", url, "--relay-only"], ["--relay-url", url, "--relay-only"], server_addr=False)
    time.sleep(1)
    last = [l for l in c.procs[-1].text().splitlines() if "path=" in l]
    if not last or "path=relay" not in last[-1]:
        raise RuntimeError("relay case is not on the relay path: " + (last[-1] if last else "no path line"))


def setup_manual(c, iperf, echo):
    c.iperf_port, c.echo_port = free_port(), free_port()
    common = ["--mode", "manual", "--stun-server", "none", "--bind", "127.0.0.1:0", "--offer-file", "offer.txt",
              "--answer-file", "answer.txt"]
    for f in ("offer.txt", "answer.txt"):
        (c.work / f).unlink(missing_ok=True)
    s = c.spawn("server", [PORTHOLE, "server", "--auth-tokens-file", "tokens.txt", "--allowed-tcp", "127.0.0.0/8",
                           "--allowed-udp", "127.0.0.0/8"] + common)
    cl = c.spawn("client", [PORTHOLE, "client", "--auth-token-file", "tokens.txt",
                            "--source", f"tcp://127.0.0.1:{iperf}", "--listen", f"127.0.0.1:{c.iperf_port}",
                            "--source", f"udp://127.0.0.1:{iperf}", "--listen", f"127.0.0.1:{c.iperf_port}",
                            "--source", f"tcp://127.0.0.1:{echo}", "--listen", f"127.0.0.1:{c.echo_port}"] + common)
    cl.wait_for("tunnel up")


def nodepass(c, iperf, echo, tls):
    c.iperf_port, c.echo_port = free_port(), free_port()
    for name, target, user in (("iperf", iperf, c.iperf_port), ("echo", echo, c.echo_port)):
        t = free_port()
        s = c.spawn(f"server-{name}", [PORTHOLE, "nodepass", f"server://k@127.0.0.1:{t}/127.0.0.1:{user}?tls={tls}&mode=1&log=warn"])
        time.sleep(0.3)
        cl = c.spawn(f"client-{name}", [PORTHOLE, "-v", "nodepass", f"client://k@127.0.0.1:{t}/127.0.0.1:{target}?mode=2&min=16&log=info"])
        cl.wait_for("control channel up")
    if tls == 1:
        for p in c.procs:
            if "client" in p.name:
                p.wait_for("peer verified", 30)


def setup_np0(c, iperf, echo):
    nodepass(c, iperf, echo, 0)


def setup_np1(c, iperf, echo):
    nodepass(c, iperf, echo, 1)


def setup_stunnel(c, iperf, echo):
    c.udp = False
    tls = c.work / "tls"
    if not (tls / "cert.pem").exists():
        subprocess.run([PORTHOLE, "generate-relay-cert", "--name", "127.0.0.1", "--out-dir", tls, "--force"],
                       check=True, capture_output=True)
    s1, s2 = free_port(), free_port()
    c.iperf_port, c.echo_port = free_port(), free_port()
    (c.work / "stunnel-server.conf").write_text(
        f"foreground = yes\npid =\n[iperf]\naccept = 127.0.0.1:{s1}\nconnect = 127.0.0.1:{iperf}\ncert = {tls}/cert.pem\n"
        f"key = {tls}/key.pem\nsslVersionMin = TLSv1.3\n[echo]\naccept = 127.0.0.1:{s2}\nconnect = 127.0.0.1:{echo}\n"
        f"cert = {tls}/cert.pem\nkey = {tls}/key.pem\nsslVersionMin = TLSv1.3\n")
    (c.work / "stunnel-client.conf").write_text(
        f"foreground = yes\npid =\n[iperf]\nclient = yes\naccept = 127.0.0.1:{c.iperf_port}\nconnect = 127.0.0.1:{s1}\n"
        f"sslVersionMin = TLSv1.3\n[echo]\nclient = yes\naccept = 127.0.0.1:{c.echo_port}\nconnect = 127.0.0.1:{s2}\n"
        f"sslVersionMin = TLSv1.3\n")
    c.spawn("server", ["stunnel4", c.work / "stunnel-server.conf"])
    c.spawn("client", ["stunnel4", c.work / "stunnel-client.conf"])
    time.sleep(1.0)


def rathole(c, iperf, echo, transport):
    if not RATHOLE.exists():
        raise RuntimeError("rathole not built")
    rp = free_port()
    c.iperf_port, c.echo_port = free_port(), free_port()
    if transport == "tls":
        tls = c.work / "tls"
        if not (tls / "cert.pem").exists():
            subprocess.run([PORTHOLE, "generate-relay-cert", "--name", "127.0.0.1", "--out-dir", tls, "--force"],
                           check=True, capture_output=True)
        subprocess.run(["openssl", "pkcs12", "-export", "-out", tls / "id.p12", "-inkey", tls / "key.pem",
                        "-in", tls / "cert.pem", "-passout", "pass:bench"], check=True, capture_output=True)
        st = f'[server.transport]\ntype = "tls"\n[server.transport.tls]\npkcs12 = "{tls}/id.p12"\npkcs12_password = "bench"\n'
        ct = f'[client.transport]\ntype = "tls"\n[client.transport.tls]\ntrusted_root = "{tls}/ca.pem"\nhostname = "127.0.0.1"\n'
    else:
        out = subprocess.run([RATHOLE, "--genkey"], check=True, capture_output=True, text=True).stdout
        priv = out.split("Private Key:")[1].split()[0]
        pub = out.split("Public Key:")[1].split()[0]
        st = f'[server.transport]\ntype = "noise"\n[server.transport.noise]\nlocal_private_key = "{priv}"\n'
        ct = f'[client.transport]\ntype = "noise"\n[client.transport.noise]\nremote_public_key = "{pub}"\n'
    services = [("iperf", "tcp", iperf, c.iperf_port), ("iperfu", "udp", iperf, c.iperf_port), ("echo", "tcp", echo, c.echo_port)]
    sconf = f'[server]\nbind_addr = "127.0.0.1:{rp}"\n' + st
    cconf = f'[client]\nremote_addr = "127.0.0.1:{rp}"\n' + ct
    for name, kind, target, user in services:
        sconf += f'[server.services.{name}]\ntype = "{kind}"\ntoken = "bench"\nbind_addr = "127.0.0.1:{user}"\n'
        cconf += f'[client.services.{name}]\ntype = "{kind}"\ntoken = "bench"\nlocal_addr = "127.0.0.1:{target}"\n'
    (c.work / f"rathole-{transport}-server.toml").write_text(sconf)
    (c.work / f"rathole-{transport}-client.toml").write_text(cconf)
    c.spawn("server", [RATHOLE, "-s", c.work / f"rathole-{transport}-server.toml"], env={"RUST_LOG": "warn"})
    time.sleep(0.5)
    c.spawn("client", [RATHOLE, "-c", c.work / f"rathole-{transport}-client.toml"], env={"RUST_LOG": "warn"})
    time.sleep(2.0)


def setup_rathole_tls(c, iperf, echo):
    rathole(c, iperf, echo, "tls")


def setup_rathole_noise(c, iperf, echo):
    rathole(c, iperf, echo, "noise")


CASES = {
    "direct": setup_direct,
    "stunnel": setup_stunnel,
    "rathole-tls": setup_rathole_tls,
    "rathole-noise": setup_rathole_noise,
    "iroh-direct": setup_iroh_direct,
    "iroh-relay": setup_iroh_relay,
    "manual": setup_manual,
    "nodepass-tls0": setup_np0,
    "nodepass-tls1": setup_np1,
}


def iperf(port, args, seconds, tries=2, wrapper=(), host="127.0.0.1"):
    """iperf3's `end` summary; `wrapper` runs the client under another command (perf stat,
    or `ip netns exec NS` in the WAN lab)."""
    # iperf3's server refuses a test while it still tears the previous one down; through
    # a tunnel that teardown ends later than the client's, so give it a moment.
    time.sleep(0.5)
    out = subprocess.run([*wrapper, "iperf3", "-c", host, "-p", str(port), "-t", str(seconds), "-J"] + args,
                         capture_output=True, text=True, timeout=seconds + 30)
    data = json.loads(out.stdout)
    if "error" in data:
        # Refused as busy anyway: the refusal is one byte and a close with unread input,
        # i.e. a TCP reset, which can overtake that byte in a tunnel (docs/ARCHITECTURE.md),
        # so the client may see the reset instead of "busy".
        busy = "busy" in data["error"] or "unable to receive control message" in data["error"]
        if busy and tries > 1:
            time.sleep(1)
            return iperf(port, args, seconds, tries - 1, wrapper, host)
        raise RuntimeError(data["error"])
    return data["end"]


def tcp(port, streams, seconds, wrapper=(), host="127.0.0.1", reverse=False):
    args = (["-P", str(streams)] if streams > 1 else []) + (["-R"] if reverse else [])
    end = iperf(port, args, seconds, wrapper=wrapper, host=host)
    return end["sum_received"]["bits_per_second"], end["sum_received"]["bytes"]


def udp(port, rate, seconds):
    end = iperf(port, ["-u", "-b", rate, "-l", "1200"], seconds)
    s = end["sum"]
    loss = s.get("lost_percent", 0.0)
    if not 0.0 <= loss <= 100.0:
        # iperf3 read sequence numbers out of misaligned data: datagram boundaries were lost.
        raise RuntimeError(f"boundaries lost: iperf3 loss {loss:.3g} %")
    return s["bits_per_second"] * (1 - loss / 100.0), loss


def connect_rate(port, count):
    out = subprocess.run([LABTOOL, "connect-rate", f"127.0.0.1:{port}", "--count", str(count)],
                         capture_output=True, text=True, timeout=300)
    d = json.loads(out.stdout)
    return d["median_us"], d["p99_us"]


def measure(c, seconds, rates, conns, repeat):
    r = {"case": c.name}
    procs = c.tunnel_procs()
    # Warm up, then idle memory.
    connect_rate(c.echo_port, 20)
    time.sleep(1)
    r["rss_idle_mib"] = max((p.status("VmRSS") for p in procs), default=0) / 1024
    # TCP: 1 and 8 streams alternately, `repeat` times each, medians reported. Single
    # samples on this shared host swing by +-20 %; alternating keeps a slow phase from
    # landing on one of the two only.
    runs = {1: [], 8: []}
    cpu, moved = {1: 0.0, 8: 0.0}, {1: 0, 8: 0}
    for _ in range(repeat):
        for streams in (1, 8):
            cpu0 = sum(p.cpu_s() for p in procs)
            bps, n = tcp(c.iperf_port, streams, seconds)
            cpu[streams] += sum(p.cpu_s() for p in procs) - cpu0
            moved[streams] += n
            runs[streams].append(bps)
    r["tcp1_gbps"] = statistics.median(runs[1]) / 1e9
    r["tcp8_gbps"] = statistics.median(runs[8]) / 1e9
    # Each 8-stream run against the 1-stream run just before it: a slow phase of the host
    # hits both of a pair, so the pairs' median ratio is steadier than a ratio of medians.
    ratios = [b / a for a, b in zip(runs[1], runs[8]) if a > 0]
    r["tcp8_vs_1"] = statistics.median(ratios) if ratios else 0.0
    r["tcp8_vs_1_pairs"] = [round(x, 3) for x in ratios]
    # CPU per GB of the tunnel ends: what the tunnel itself pays per byte, independent of
    # how fast the host happened to be.
    r["cpu_s_per_gb"] = cpu[1] / (moved[1] / 1e9) if procs and moved[1] else 0.0
    r["cpu8_s_per_gb"] = cpu[8] / (moved[8] / 1e9) if procs and moved[8] else 0.0
    for rate in rates:
        if c.udp:
            # A failed UDP test costs its cell, not the case's TCP figures: NodePass tls=0
            # has no datagram framing and can lose alignment at high rates (docs/NODEPASS.md).
            try:
                delivered, loss = udp(c.iperf_port, rate, seconds)
            except (RuntimeError, subprocess.TimeoutExpired, json.JSONDecodeError, KeyError) as e:
                print(f"bench: {c.name} UDP {rate} failed: {e}", flush=True)
                r[f"udp_{rate}_error"] = str(e)
                continue
            r[f"udp_{rate}_mbps"] = delivered / 1e6
            r[f"udp_{rate}_loss"] = loss
    r["conn_median_us"], r["conn_p99_us"] = connect_rate(c.echo_port, conns)
    r["rss_peak_mib"] = max((p.status("VmHWM") for p in procs), default=0) / 1024
    return r


def fmt_table(results, rates):
    d = next(r for r in results if r["case"] == "direct")
    head = ["case", "TCP 1 stream", "TCP 8 streams"] + [f"UDP {x} offered" for x in rates] + \
           ["connect+1st byte median / p99", "RSS idle / peak (MiB)", "CPU s/GB 1 / 8 streams"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['case']} | " + " | ".join(["n/a"] * (len(head) - 2)) + f" | {r['error'][:60]} |")
            continue
        cells = [r["case"],
                 f"{r['tcp1_gbps']:.2f} Gb/s ({100 * r['tcp1_gbps'] / d['tcp1_gbps']:.1f} %)",
                 f"{r['tcp8_gbps']:.2f} Gb/s ({100 * r['tcp8_gbps'] / d['tcp8_gbps']:.1f} %)"]
        for x in rates:
            if f"udp_{x}_error" in r:
                cells.append(f"failed ({r[f'udp_{x}_error'][:40]})")
            elif f"udp_{x}_mbps" in r:
                cells.append(f"{r[f'udp_{x}_mbps']:.0f} Mb/s ({100 * r[f'udp_{x}_mbps'] / d[f'udp_{x}_mbps']:.0f} %, loss {r[f'udp_{x}_loss']:.1f} %)")
            else:
                cells.append("n/a (TCP only)")
        over = r["conn_median_us"] - d["conn_median_us"]
        cells.append(f"{r['conn_median_us'] / 1000:.2f} / {r['conn_p99_us'] / 1000:.2f} ms (+{over / 1000:.2f} ms)")
        cells.append("-" if r["case"] == "direct" else f"{r['rss_idle_mib']:.1f} / {r['rss_peak_mib']:.1f}")
        cells.append("-" if r["case"] == "direct" else f"{r['cpu_s_per_gb']:.2f} / {r['cpu8_s_per_gb']:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def targets(results):
    by = {r["case"]: r for r in results if "error" not in r}
    checks = []
    if "iroh-direct" in by and "stunnel" in by:
        checks.append(("iroh direct, TCP 1 stream >= stunnel", by["iroh-direct"]["tcp1_gbps"] >= by["stunnel"]["tcp1_gbps"],
                       f"{by['iroh-direct']['tcp1_gbps']:.2f} vs {by['stunnel']['tcp1_gbps']:.2f} Gb/s"))
    if "iroh-direct" in by:
        checks.append(eight_vs_one(by["iroh-direct"]))
    if "iroh-relay" in by and "iroh-direct" in by:
        a, b = by["iroh-relay"]["tcp1_gbps"], by["iroh-direct"]["tcp1_gbps"]
        checks.append(("iroh relay-only >= 25 % of direct path", a >= 0.25 * b, f"{100 * a / b:.0f} %"))
    if "iroh-direct" in by and "direct" in by and "udp_200M_mbps" in by["iroh-direct"]:
        a, b = by["iroh-direct"]["udp_200M_mbps"], by["direct"]["udp_200M_mbps"]
        checks.append(("UDP 200 Mb/s delivered >= 90 % of direct", a >= 0.9 * b, f"{100 * a / b:.0f} %"))
    if "iroh-direct" in by and "direct" in by:
        over = by["iroh-direct"]["conn_median_us"] - by["direct"]["conn_median_us"]
        checks.append(("warm connect + first byte, median overhead < 0.5 ms", over < 500, f"+{over / 1000:.2f} ms"))
        idle = max(by[k]["rss_idle_mib"] for k in by if k.startswith(("iroh", "manual", "nodepass")))
        checks.append(("idle RSS < 20 MiB per process", idle < 20, f"max {idle:.1f} MiB"))
    return checks


# The case whose 8-vs-1 ratio is judged, and so measured with more pairs.
JUDGED = "iroh-direct"


def eight_vs_one(r):
    """8 streams no worse than 1, within a 5 % noise band: the median over rounds of each
    8-stream run's throughput against the 1-stream run just before it. The tunnel ends'
    CPU per GB for both is shown too (what the tunnel pays per byte, whatever the host's
    speed at the time)."""
    p = r["tcp8_vs_1_pairs"]
    detail = (f"{r['tcp8_vs_1']:.2f}x, median of {len(p)} pair{'s' if len(p) != 1 else ''} ({min(p, default=0):.2f}-{max(p, default=0):.2f}x); medians {r['tcp8_gbps']:.2f} vs "
              f"{r['tcp1_gbps']:.2f} Gb/s, CPU {r['cpu8_s_per_gb']:.2f} vs {r['cpu_s_per_gb']:.2f} s/GB")
    return ("iroh direct, 8 streams no worse than 1 (within a 5 % noise band)", r["tcp8_vs_1"] >= 0.95, detail)


def chart(results, png):
    rows = [r for r in results if "error" not in r]
    dat = png.with_suffix(".dat")
    with open(dat, "w") as f:
        for r in rows:
            f.write(f'"{r["case"]}" {r["tcp1_gbps"]:.3f} {r["tcp8_gbps"]:.3f}\n')
    script = f"""
set terminal pngcairo size 1000,520 font ",11"
set output "{png}"
set title "TCP throughput through each tunnel on loopback (same run; direct = ceiling)"
set ylabel "Gbit/s"
set logscale y 10
set style data histogram
set style histogram clustered gap 1
set style fill solid 0.8 border -1
set xtics rotate by -30
set key top right
plot "{dat}" using 2:xtic(1) title "1 stream", "" using 3 title "8 streams"
"""
    subprocess.run(["gnuplot"], input=script, text=True, check=True)
    dat.unlink()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="2 s tests, 200 connections, no docs update")
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--repeat", type=int, default=3, help="TCP runs per stream count (median reported)")
    ap.add_argument("--pairs", type=int, default=9,
                    help="TCP runs per stream count for iroh-direct, whose paired 8-vs-1 ratio is a target: "
                         "with three pairs the verdict is close to a coin toss on a noisy host")
    args = ap.parse_args()
    seconds = 2 if args.quick else args.seconds
    repeat = 1 if args.quick else max(1, args.repeat)
    pairs = 1 if args.quick else max(1, args.pairs)
    conns = 200 if args.quick else 1000
    rates = ["50M", "200M", "500M"]
    names = [n for n in args.cases.split(",") if n]
    if "direct" not in names:
        names.insert(0, "direct")
    work = Path(tempfile.mkdtemp(prefix="porthole-bench-"))
    print(f"bench: logs of every process in {work}", file=sys.stderr)
    secrets(work)
    iperf_port, echo_port = free_port(), free_port()
    services = [Proc("iperf3-server", ["iperf3", "-s", "-p", iperf_port], work),
                Proc("echo", [LABTOOL, "echo", "--tcp", f"127.0.0.1:{echo_port}"], work)]
    time.sleep(0.5)
    results = []
    try:
        for name in names:
            c = Case(name, work)
            print(f"bench: {name}...", file=sys.stderr, flush=True)
            try:
                CASES[name](c, iperf_port, echo_port)
                results.append(measure(c, seconds, rates, conns, pairs if name == JUDGED else repeat))
            except Exception as e:  # a reference peer that cannot run is reported, not fatal
                results.append({"case": name, "error": str(e).splitlines()[0] if str(e) else type(e).__name__})
                print(f"bench: {name} failed: {e}", file=sys.stderr)
            finally:
                c.stop()
                time.sleep(1)
    finally:
        for s in services:
            s.stop()
    table = fmt_table(results, rates)
    checks = targets(results)
    out = ROOT / "bench/out"
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    check_md = "\n".join(f"- {'PASS' if ok else 'FAIL'}: {what} ({detail})" for what, ok, detail in checks)
    print(table)
    print(check_md)
    if args.quick:
        return
    png = ROOT / "docs/img/bench-throughput.png"
    chart(results, png)
    doc = ROOT / "docs/BENCHMARKS.md"
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    block = (f"Run of {stamp} on {os.cpu_count()} x {cpu_model()}, {seconds} s per iperf3 test, TCP figures the median of {repeat} runs ({JUDGED}: {pairs}), {conns} connections.\n"
             f"Percentages are of the direct-loopback figure of the same run.\n\n{table}\n\nTargets:\n\n{check_md}\n\n"
             f"![TCP throughput](img/bench-throughput.png)")
    replace_block(doc, "results", block)
    print(f"bench: wrote {doc} and {png}", file=sys.stderr)


def cpu_model():
    """The CPU's name for the results header ("unknown CPU" where /proc/cpuinfo has none,
    e.g. on some ARM machines)."""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith(("model name", "Model", "cpu model")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def replace_block(doc, name, block):
    """Replaces what stands between `<!-- NAME:start -->` and `<!-- NAME:end -->` in `doc`."""
    text = doc.read_text()
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    if start not in text or end not in text:
        raise SystemExit(f"{doc} has no {start} ... {end} block to write the results into")
    i, j = text.index(start), text.index(end) + len(end)
    doc.write_text(text[:i] + f"{start}\n{block}\n{end}" + text[j:])


if __name__ == "__main__":
    main()
