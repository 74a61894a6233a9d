//! The metrics that describe the present (sessions by path, the tunnel's path and
//! RTT), computed at scrape time over the live tables.

use super::*;

/// Computes, at scrape time, the metrics that describe the present.
#[derive(Debug)]
pub(super) struct LiveCollector(pub(super) Weak<Inner>);

impl Collector for LiveCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let Some(inner) = self.0.upgrade() else {
            return Ok(());
        };
        let t = Telemetry(inner);
        let gauge = |v: i64| ConstGauge::new(v);
        match t.role() {
            Role::Server => {
                let mut by_path: BTreeMap<&'static str, i64> = BTreeMap::new();
                for s in lock(&t.0.sessions).values() {
                    *by_path.entry(path_name((s.path)().as_ref())).or_default() += 1;
                }
                let g = gauge(0);
                let mut family = encoder.encode_descriptor(
                    "sessions_active",
                    "Authenticated client connections now, by path (direct, relay)",
                    None,
                    g.metric_type(),
                )?;
                for path in ["direct", "relay", "unknown"] {
                    let v = by_path.get(path).copied().unwrap_or(0);
                    gauge(v).encode(family.encode_family(&PathLabels { path })?)?;
                }
                let open: usize = lock(&t.0.sessions)
                    .values()
                    .map(|s| lock(&s.forwards).len())
                    .sum();
                let g = gauge(open as i64);
                g.encode(encoder.encode_descriptor(
                    "forwards_active",
                    "Forwards open now, over all sessions",
                    None,
                    g.metric_type(),
                )?)?;
            }
            Role::Client => {
                let c = lock(&t.0.client);
                let path = c.session.as_ref().and_then(|s| (s.path)());
                let up = gauge(i64::from(c.state == TunnelState::Up));
                up.encode(encoder.encode_descriptor(
                    "tunnel_up",
                    "1 while the tunnel to the server is up",
                    None,
                    up.metric_type(),
                )?)?;
                let g = gauge(0);
                let mut family = encoder.encode_descriptor(
                    "tunnel_path",
                    "1 for the kind of path carrying the tunnel now",
                    None,
                    g.metric_type(),
                )?;
                let now = path.as_ref().map(|p| path_name(Some(p)));
                for name in ["direct", "relay"] {
                    gauge(i64::from(now == Some(name)))
                        .encode(family.encode_family(&PathLabels { path: name })?)?;
                }
                if let Some(rtt) = path.and_then(|p| p.rtt) {
                    let g = ConstGauge::new(rtt.as_secs_f64());
                    g.encode(encoder.encode_descriptor(
                        "tunnel_rtt",
                        "Round-trip time of the path carrying the tunnel",
                        Some(&prometheus_client::registry::Unit::Seconds),
                        g.metric_type(),
                    )?)?;
                }
            }
        }
        Ok(())
    }
}
