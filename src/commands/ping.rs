//! `porthole ping`: authenticates to the server like a client (no forwards) and reports,
//! once a second, the round-trip time of the path the connection uses and which path that
//! is, as `tailscale ping` does; `--until-direct` waits for hole punching to succeed.

use std::time::Duration;

use porthole_engine::client::CheckInError;
use porthole_engine::transport::Connection as _;
use porthole_transport_iroh::paths::PathKind;

use crate::cli::PingArgs;
use crate::config::resolve;
use crate::exit::Exit;

pub async fn run(args: PingArgs) -> Result<(), Exit> {
    let (count, until_direct) = (args.count, args.until_direct);
    let s = resolve::ping(&args.into_client()).map_err(Exit::usage)?;
    let resolve::ClientTransport::Iroh(t) = &s.transport else {
        return Err(anyhow::anyhow!("porthole ping works in iroh mode").into());
    };
    let (endpoint, connector) = super::client::iroh_connector(&s, t).await?;
    let id = t.server;
    let session = match porthole_engine::client::check_in(&connector, &s.engine_config()).await {
        Ok(session) => session,
        Err(CheckInError::Fatal(e)) => return Err(Exit::from(anyhow::Error::from(e))),
        Err(CheckInError::Retry(why)) => {
            endpoint.close().await;
            return Err(anyhow::anyhow!("no answer from {}: {why}", id.short()).into());
        }
    };
    let short = id.short();
    let mut went_direct = false;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    for _ in 0..count {
        tick.tick().await;
        match session.conn.path() {
            Some(p) => {
                let rtt = p.rtt.as_secs_f64() * 1000.0;
                let via = match &p.kind {
                    PathKind::Direct(a) => format!("direct {a}"),
                    PathKind::Relay(u) => format!("relay {u}"),
                    PathKind::Other(o) => o.clone(),
                };
                println!("pong from {short} via {via} in {rtt:.1} ms");
                if p.is_direct() {
                    went_direct = true;
                    if until_direct {
                        break;
                    }
                }
            }
            None => println!("no path to {short} right now"),
        }
    }
    session.conn.close(
        porthole_proto::close::CloseCode::Normal.as_u32(),
        b"ping done",
    );
    endpoint.close().await;
    if until_direct && !went_direct {
        return Err(anyhow::anyhow!(
            "no direct path to {short} after {count} ping(s): the relay carries the tunnel \
             (symmetric NATs or UDP blocked on a side; see docs/NAT-TRAVERSAL.md)"
        )
        .into());
    }
    Ok(())
}
