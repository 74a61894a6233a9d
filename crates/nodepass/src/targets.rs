//! The dialing side's targets: names resolved through a cache (`dns=`), the target to
//! try first (`lbs=`), failover to the next on error, and the source address (`dial=`).

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::net::{TcpSocket, TcpStream, UdpSocket};
use tracing::{debug, info};

use crate::tasks::Tasks;
use crate::wire::url::{HostPort, Params};

/// Dialing a target gives up after this long.
pub const DIAL_TIMEOUT: Duration = Duration::from_secs(5);
/// `lbs=1` probes every target this often (NodePass's report interval).
pub const PROBE_EVERY: Duration = Duration::from_secs(5);
/// `lbs=2` tries the primary target again after this long on a fallback.
pub const PRIMARY_RETRY: Duration = Duration::from_secs(300);

/// How the first target of a dial is chosen (`lbs=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// 0: each dial starts one target further.
    RoundRobin,
    /// 1: start at the target that connected fastest in the last probe.
    LowestLatency,
    /// 2: start at the first target; after a failover stay on the one that worked, and
    /// go back to the first after [`PRIMARY_RETRY`].
    Primary,
}

impl Strategy {
    pub fn from_lbs(lbs: u8) -> Self {
        match lbs {
            1 => Strategy::LowestLatency,
            2 => Strategy::Primary,
            _ => Strategy::RoundRobin,
        }
    }
}

/// Resolved names, each kept for the `dns=` time. IP literals never enter.
#[derive(Debug)]
pub struct DnsCache {
    ttl: Duration,
    entries: Mutex<HashMap<String, (Instant, Vec<SocketAddr>)>>,
}

impl DnsCache {
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            entries: Mutex::default(),
        }
    }

    /// The addresses of `host:port`, from the cache while fresh, else from `resolve`.
    pub async fn lookup<F, Fut>(&self, target: &str, resolve: F) -> io::Result<Vec<SocketAddr>>
    where
        F: FnOnce(String) -> Fut,
        Fut: Future<Output = io::Result<Vec<SocketAddr>>>,
    {
        if let Ok(a) = target.parse::<SocketAddr>() {
            return Ok(vec![a]);
        }
        let now = Instant::now();
        if let Some((at, addrs)) = self.lock().get(target)
            && now.duration_since(*at) < self.ttl
        {
            return Ok(addrs.clone());
        }
        let addrs = resolve(target.to_string()).await?;
        if !self.ttl.is_zero() && !addrs.is_empty() {
            self.lock().insert(target.to_string(), (now, addrs.clone()));
        }
        Ok(addrs)
    }

    /// Forgets `target` (its addresses stopped answering).
    pub fn forget(&self, target: &str) {
        self.lock().remove(target);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Instant, Vec<SocketAddr>)>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }
}

async fn system_resolve(target: String) -> io::Result<Vec<SocketAddr>> {
    Ok(tokio::net::lookup_host(target).await?.collect())
}

/// The dialing side's targets.
#[derive(Debug)]
pub struct Dialer {
    pub targets: Vec<HostPort>,
    pub from: Option<IpAddr>,
    pub proxy: bool,
    strategy: Strategy,
    /// Round robin: the next start. Lowest latency and primary: the current start.
    next: AtomicUsize,
    /// Primary: when the current start moved off the first target.
    fell_back: Mutex<Option<Instant>>,
    dns: DnsCache,
}

impl Dialer {
    pub fn new(targets: Vec<HostPort>, p: &Params) -> Self {
        Self {
            targets,
            from: p.dial,
            proxy: p.proxy,
            strategy: Strategy::from_lbs(p.lbs),
            next: AtomicUsize::new(0),
            fell_back: Mutex::new(None),
            dns: DnsCache::new(p.dns),
        }
    }

    /// Starts the `lbs=1` probes (with more than one target), ended with `tasks`.
    pub fn start_probes(self: &std::sync::Arc<Self>, tasks: &Tasks) {
        if self.strategy != Strategy::LowestLatency || self.targets.len() < 2 {
            return;
        }
        let this = self.clone();
        tasks.spawn(async move {
            let mut every = tokio::time::interval(PROBE_EVERY);
            loop {
                every.tick().await;
                this.probe().await;
            }
        });
    }

    /// Connects to every target once and starts further dials at the fastest.
    pub async fn probe(&self) -> Option<usize> {
        let probes = self.targets.iter().map(|t| async move {
            let started = Instant::now();
            let ok = tokio::time::timeout(DIAL_TIMEOUT, self.tcp_one(t)).await;
            matches!(ok, Ok(Ok(_))).then(|| started.elapsed())
        });
        let latencies = futures_util::future::join_all(probes).await;
        let best = best_target(&latencies)?;
        if self.next.swap(best, Ordering::Relaxed) != best {
            info!(
                "lbs=1: {} connects fastest ({:?})",
                self.targets[best], latencies[best]
            );
        }
        Some(best)
    }

    /// The targets in the order this dial tries them.
    fn order(&self) -> Vec<usize> {
        let n = self.targets.len();
        let start = match self.strategy {
            Strategy::RoundRobin => self.next.fetch_add(1, Ordering::Relaxed),
            Strategy::LowestLatency => self.next.load(Ordering::Relaxed),
            Strategy::Primary => {
                let mut fell = self.fell_back.lock().unwrap_or_else(|e| e.into_inner());
                if fell.is_some_and(|at| at.elapsed() >= PRIMARY_RETRY) {
                    *fell = None;
                    self.next.store(0, Ordering::Relaxed);
                }
                self.next.load(Ordering::Relaxed)
            }
        };
        (0..n).map(|i| (start + i) % n).collect()
    }

    /// A dial that worked on target `i` after `tries` failures: sticky strategies move.
    fn worked(&self, i: usize, tries: usize) {
        if tries == 0 || self.strategy == Strategy::RoundRobin {
            return;
        }
        self.next.store(i, Ordering::Relaxed);
        if self.strategy == Strategy::Primary {
            let mut fell = self.fell_back.lock().unwrap_or_else(|e| e.into_inner());
            *fell = (i != 0).then(Instant::now);
        }
        debug!("now starting at {}", self.targets[i]);
    }

    pub async fn tcp(&self) -> io::Result<(TcpStream, SocketAddr)> {
        let mut last = io::Error::new(io::ErrorKind::NotFound, "no target");
        for (tries, i) in self.order().into_iter().enumerate() {
            let t = &self.targets[i];
            match tokio::time::timeout(DIAL_TIMEOUT, self.tcp_one(t)).await {
                Ok(Ok(s)) => {
                    self.worked(i, tries);
                    return Ok(s);
                }
                Ok(Err(e)) => last = io::Error::new(e.kind(), format!("{t}: {e}")),
                Err(_) => {
                    last = io::Error::new(io::ErrorKind::TimedOut, format!("{t}: dial timed out"))
                }
            }
            self.dns.forget(&t.dial());
        }
        Err(last)
    }

    async fn tcp_one(&self, t: &HostPort) -> io::Result<(TcpStream, SocketAddr)> {
        let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
        for addr in self.dns.lookup(&t.dial(), system_resolve).await? {
            let socket = if addr.is_ipv4() {
                TcpSocket::new_v4()?
            } else {
                TcpSocket::new_v6()?
            };
            if let Some(ip) = self.from.filter(|ip| ip.is_ipv4() == addr.is_ipv4()) {
                socket.bind(SocketAddr::new(ip, 0))?;
            }
            match socket.connect(addr).await {
                Ok(s) => {
                    let _ = s.set_nodelay(true);
                    return Ok((s, addr));
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    pub async fn udp(&self) -> io::Result<UdpSocket> {
        let mut last = io::Error::new(io::ErrorKind::NotFound, "no target");
        for i in self.order() {
            let t = &self.targets[i];
            let addr = match self.dns.lookup(&t.dial(), system_resolve).await {
                Ok(a) => match a.first() {
                    Some(a) => *a,
                    None => continue,
                },
                Err(e) => {
                    last = e;
                    continue;
                }
            };
            let local: SocketAddr = match (self.from, addr) {
                (Some(ip), _) if ip.is_ipv4() == addr.is_ipv4() => SocketAddr::new(ip, 0),
                (_, SocketAddr::V4(_)) => ([0, 0, 0, 0], 0).into(),
                (_, SocketAddr::V6(_)) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
            };
            let s = UdpSocket::bind(local).await?;
            porthole_engine::udp::size_socket(&s);
            s.connect(addr).await?;
            return Ok(s);
        }
        Err(last)
    }
}

/// The index of the lowest latency, `None` when no target answered.
pub fn best_target(latencies: &[Option<Duration>]) -> Option<usize> {
    latencies
        .iter()
        .enumerate()
        .filter_map(|(i, l)| l.map(|l| (i, l)))
        .min_by_key(|&(_, l)| l)
        .map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;

    #[test]
    fn the_fastest_answering_target_is_best() {
        let ms = |m| Some(Duration::from_millis(m));
        assert_eq!(best_target(&[ms(9), None, ms(3), ms(4)]), Some(2));
        assert_eq!(best_target(&[None, None]), None);
        assert_eq!(best_target(&[]), None);
    }

    #[tokio::test]
    async fn names_are_kept_for_the_ttl_and_ip_literals_never() {
        let calls = AtomicU32::new(0);
        let resolve = |_: String| async {
            calls.fetch_add(1, Ordering::Relaxed);
            Ok(vec![SocketAddr::from(([127, 0, 0, 1], 80))])
        };
        let cache = DnsCache::new(Duration::from_millis(200));
        cache.lookup("example.test:80", resolve).await.unwrap();
        cache.lookup("example.test:80", resolve).await.unwrap();
        assert_eq!(calls.load(Ordering::Relaxed), 1, "cached within the TTL");
        tokio::time::sleep(Duration::from_millis(250)).await;
        cache.lookup("example.test:80", resolve).await.unwrap();
        assert_eq!(calls.load(Ordering::Relaxed), 2, "resolved again after it");
        cache.forget("example.test:80");
        cache.lookup("example.test:80", resolve).await.unwrap();
        assert_eq!(calls.load(Ordering::Relaxed), 3, "forgotten");
        cache.lookup("10.0.0.1:80", resolve).await.unwrap();
        assert_eq!(
            calls.load(Ordering::Relaxed),
            3,
            "IP literals are not resolved"
        );
        let none = DnsCache::new(Duration::ZERO);
        none.lookup("example.test:80", resolve).await.unwrap();
        none.lookup("example.test:80", resolve).await.unwrap();
        assert_eq!(calls.load(Ordering::Relaxed), 5, "dns=0 keeps nothing");
    }

    fn dialer(lbs: u8, n: usize) -> Dialer {
        let targets = (0..n)
            .map(|i| HostPort {
                host: "127.0.0.1".into(),
                port: 1000 + i as u16,
            })
            .collect();
        let p = Params {
            lbs,
            ..Params::default()
        };
        Dialer::new(targets, &p)
    }

    #[test]
    fn strategies_order_the_targets() {
        let rr = dialer(0, 3);
        assert_eq!(rr.order(), vec![0, 1, 2]);
        assert_eq!(rr.order(), vec![1, 2, 0]);
        let primary = dialer(2, 3);
        assert_eq!(primary.order(), vec![0, 1, 2]);
        primary.worked(1, 1);
        assert_eq!(primary.order(), vec![1, 2, 0], "sticks to the fallback");
        assert_eq!(primary.order(), vec![1, 2, 0]);
        *primary.fell_back.lock().unwrap() = Some(Instant::now() - PRIMARY_RETRY);
        assert_eq!(
            primary.order(),
            vec![0, 1, 2],
            "back to the primary in time"
        );
        let fastest = dialer(1, 3);
        fastest.next.store(2, Ordering::Relaxed);
        assert_eq!(fastest.order(), vec![2, 0, 1]);
        assert_eq!(fastest.order(), vec![2, 0, 1]);
    }
}
