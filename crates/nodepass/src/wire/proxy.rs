//! The PROXY protocol v1 line sent to a target when `proxy=1`, so the target sees the
//! user's address: `PROXY TCP4 <src> <dst> <sport> <dport>\r\n`.

use std::net::SocketAddr;

pub fn v1_line(src: SocketAddr, dst: SocketAddr) -> String {
    match (src, dst) {
        (SocketAddr::V4(s), SocketAddr::V4(d)) => {
            format!(
                "PROXY TCP4 {} {} {} {}\r\n",
                s.ip(),
                d.ip(),
                s.port(),
                d.port()
            )
        }
        _ => {
            let v6 = |a: SocketAddr| match a {
                SocketAddr::V4(v4) => v4.ip().to_ipv6_mapped(),
                SocketAddr::V6(v6) => *v6.ip(),
            };
            format!(
                "PROXY TCP6 {} {} {} {}\r\n",
                v6(src),
                v6(dst),
                src.port(),
                dst.port()
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines() {
        let s: SocketAddr = "192.0.2.7:55344".parse().unwrap();
        let d: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        assert_eq!(
            v1_line(s, d),
            "PROXY TCP4 192.0.2.7 127.0.0.1 55344 8080\r\n"
        );
        let d6: SocketAddr = "[::1]:80".parse().unwrap();
        assert_eq!(
            v1_line(s, d6),
            "PROXY TCP6 ::ffff:192.0.2.7 ::1 55344 80\r\n"
        );
    }
}
