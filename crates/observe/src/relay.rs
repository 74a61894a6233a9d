//! A relay's metrics: computed at scrape time from its counters.

use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::{Registry, Unit};

use crate::MetricsFn;
use crate::report::RelayStatus;

/// Reads a relay's counters.
pub type RelayStats = Arc<dyn Fn() -> RelayStatus + Send + Sync>;

struct RelayCollector(RelayStats);

impl std::fmt::Debug for RelayCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RelayCollector")
    }
}

impl Collector for RelayCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let s = (self.0)();
        let clients = ConstGauge::new(s.clients as i64);
        clients.encode(encoder.encode_descriptor(
            "porthole_relay_clients",
            "Peers connected to the relay now",
            None,
            clients.metric_type(),
        )?)?;
        let counters: [(&str, &str, Option<Unit>, u64); 5] = [
            (
                "porthole_relay_accepts",
                "Peer connections accepted",
                None,
                s.accepts,
            ),
            (
                "porthole_relay_received",
                "Bytes relayed, as received from peers",
                Some(Unit::Bytes),
                s.bytes_in,
            ),
            (
                "porthole_relay_sent",
                "Bytes relayed, as sent to peers",
                Some(Unit::Bytes),
                s.bytes_out,
            ),
            (
                "porthole_relay_qad_connections",
                "QUIC address discovery connections served",
                None,
                s.qad_connections,
            ),
            (
                "porthole_relay_stun_requests",
                "STUN binding requests answered",
                None,
                s.stun_requests,
            ),
        ];
        for (name, help, unit, value) in counters {
            let c = ConstCounter::new(value);
            c.encode(encoder.encode_descriptor(name, help, unit.as_ref(), c.metric_type())?)?;
        }
        Ok(())
    }
}

/// The relay's metrics, for the HTTP listener.
pub fn metrics(stats: RelayStats) -> MetricsFn {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(RelayCollector(stats)));
    Arc::new(move |out: &mut String| prometheus_client::encoding::text::encode(out, &registry))
}
