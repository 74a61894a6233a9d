//! The report as the human table `porthole status` prints.

use std::fmt::Write;

use porthole_engine::telemetry::{ClientStatus, ForwardStatus, PathStatus, ServerStatus};

use crate::Report;
use crate::report::RelayStatus;

/// Renders `r` for a terminal.
pub fn render(r: &Report) -> String {
    let mut out = String::new();
    let up = r.now.saturating_sub(r.started);
    let _ = writeln!(
        out,
        "porthole {} {} (pid {}), up {}",
        r.role,
        r.version,
        r.pid,
        duration(up)
    );
    if let Some(s) = &r.server {
        server(&mut out, s, r.now);
    }
    if let Some(c) = &r.client {
        client(&mut out, c, r.now);
    }
    if let Some(relay) = &r.relay {
        relay_table(&mut out, relay);
    }
    out
}

/// `1h02m`, `3m05s`, `12s`.
pub fn duration(secs: u64) -> String {
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    match (h, m) {
        (0, 0) => format!("{s}s"),
        (0, _) => format!("{m}m{s:02}s"),
        _ => format!("{h}h{m:02}m"),
    }
}

/// `1.5 MB`, with SI units as network tools print them.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1000.0 && unit < UNITS.len() - 1 {
        v /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

fn path(p: Option<&PathStatus>) -> (String, String) {
    match p {
        None => ("-".into(), "-".into()),
        Some(p) => (
            match &p.remote {
                Some(r) => format!("{} {r}", p.kind),
                None => p.kind.clone(),
            },
            p.rtt_ms.map_or("-".into(), |r| format!("{r:.1} ms")),
        ),
    }
}

/// Left-aligned columns, two spaces apart.
fn table(out: &mut String, header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let line = |out: &mut String, cells: &[String]| {
        let mut l = String::new();
        for (i, c) in cells.iter().enumerate() {
            let _ = write!(l, "{c:<w$}  ", w = widths[i]);
        }
        let _ = writeln!(out, "  {}", l.trim_end());
    };
    line(
        out,
        &header.iter().map(|h| h.to_string()).collect::<Vec<_>>(),
    );
    for row in rows {
        line(out, row);
    }
}

fn forwards(out: &mut String, fwds: &[ForwardStatus], with_listen: bool) {
    let rows: Vec<Vec<String>> = fwds
        .iter()
        .map(|f| {
            let mut row = Vec::new();
            if with_listen {
                row.push(f.listen.clone().unwrap_or_default());
            }
            row.extend([
                f.source.clone(),
                format!("{}/{}", f.tcp_open, f.tcp_total),
                f.udp_flows.to_string(),
                bytes(f.bytes_up),
                bytes(f.bytes_down),
            ]);
            row
        })
        .collect();
    let mut header = Vec::new();
    if with_listen {
        header.push("LISTEN");
    }
    header.extend(["SOURCE", "TCP OPEN/ALL", "UDP FLOWS", "UP", "DOWN"]);
    table(out, &header, &rows);
}

fn server(out: &mut String, s: &ServerStatus, now: u64) {
    let _ = writeln!(out, "\nsessions: {}", s.sessions.len());
    if !s.sessions.is_empty() {
        let rows: Vec<Vec<String>> = s
            .sessions
            .iter()
            .map(|x| {
                let (p, rtt) = path(x.path.as_ref());
                vec![
                    x.id.to_string(),
                    x.client.clone(),
                    x.peer.clone(),
                    p,
                    rtt,
                    duration(now.saturating_sub(x.connected_since)),
                    bytes(x.bytes_up),
                    bytes(x.bytes_down),
                    x.tcp_open.to_string(),
                    x.udp_flows.to_string(),
                ]
            })
            .collect();
        table(
            out,
            &[
                "ID", "CLIENT", "PEER", "PATH", "RTT", "FOR", "UP", "DOWN", "TCP", "UDP",
            ],
            &rows,
        );
        for x in &s.sessions {
            if !x.forwards.is_empty() {
                let _ = writeln!(out, "\nsession {} forwards:", x.id);
                forwards(out, &x.forwards, false);
            }
        }
    }
    let _ = writeln!(out, "\nrefused:");
    if s.refusals.is_empty() {
        let _ = writeln!(out, "  nothing");
    } else {
        let rows: Vec<Vec<String>> = s
            .refusals
            .iter()
            .map(|r| {
                vec![
                    r.kind.clone(),
                    r.reason.clone(),
                    r.count.to_string(),
                    format!("{} ago", duration(now.saturating_sub(r.last))),
                ]
            })
            .collect();
        table(out, &["KIND", "REASON", "COUNT", "LAST"], &rows);
    }
}

fn client(out: &mut String, c: &ClientStatus, now: u64) {
    let state = serde_json::to_value(&c.state)
        .ok()
        .and_then(|v| v.as_str().map(String::from))
        .unwrap_or_default();
    let mut line = format!("\ntunnel: {state}");
    if let Some(s) = &c.server {
        let _ = write!(line, " to {s}");
    }
    if let Some(since) = c.up_since {
        let _ = write!(line, " for {}", duration(now.saturating_sub(since)));
    }
    if let Some(r) = &c.reason {
        let _ = write!(line, " ({r})");
    }
    if let Some(ms) = c.next_attempt_in_ms {
        let _ = write!(line, "; next attempt in {:.1} s", ms as f64 / 1000.0);
    }
    let _ = writeln!(out, "{line}");
    let (p, rtt) = path(c.path.as_ref());
    let _ = writeln!(out, "path: {p}, rtt {rtt}; reconnects: {}", c.reconnects);
    if !c.rtt_history_ms.is_empty() {
        let min = c
            .rtt_history_ms
            .iter()
            .copied()
            .fold(f64::INFINITY, f64::min);
        let max = c.rtt_history_ms.iter().copied().fold(0.0, f64::max);
        let _ = writeln!(
            out,
            "rtt over the last {} samples: {min:.1}-{max:.1} ms",
            c.rtt_history_ms.len()
        );
    }
    let _ = writeln!(out, "\nforwards:");
    forwards(out, &c.forwards, true);
}

fn relay_table(out: &mut String, r: &RelayStatus) {
    let _ = writeln!(
        out,
        "\nclients connected: {} ({} accepted since start)\nrelayed: {} in, {} out\nQUIC address discovery connections: {}\nSTUN requests answered: {}",
        r.clients,
        r.accepts,
        bytes(r.bytes_in),
        bytes(r.bytes_out),
        r.qad_connections,
        r.stun_requests
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_read_well() {
        assert_eq!(bytes(999), "999 B");
        assert_eq!(bytes(1_500_000), "1.5 MB");
        assert_eq!(duration(3725), "1h02m");
        assert_eq!(duration(185), "3m05s");
        assert_eq!(duration(7), "7s");
    }
}
