//! Whether the OS grants the UDP socket buffers porthole asks for.
//!
//! QUIC at Gbit/s and forwarded UDP (WireGuard, games) arrive in bursts; a socket buffer
//! smaller than a burst drops packets in the kernel, which QUIC then treats as congestion
//! and forwarded UDP simply loses. Operating systems cap the size a program may ask for
//! (Linux: `net.core.rmem_max` / `wmem_max`, 208 KiB on many distributions) and clamp a
//! larger request without an error, so the only way to know is to ask and read back.

use std::io;

use socket2::{Domain, Socket, Type};

use crate::udp::SOCKET_BUFFER;

/// Buffer sizes the OS granted a UDP socket, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    pub recv: usize,
    pub send: usize,
}

/// Asks a throwaway UDP socket for `wanted`-byte buffers and reads back what it got.
pub fn probe(wanted: usize) -> io::Result<Grant> {
    let s = Socket::new(Domain::IPV4, Type::DGRAM, None)?;
    s.set_recv_buffer_size(wanted)?;
    s.set_send_buffer_size(wanted)?;
    Ok(Grant {
        recv: usable(s.recv_buffer_size()?),
        send: usable(s.send_buffer_size()?),
    })
}

/// Linux reports twice the size it was asked for (half is its own bookkeeping).
fn usable(reported: usize) -> usize {
    if cfg!(target_os = "linux") {
        reported / 2
    } else {
        reported
    }
}

/// The warning to give when `grant` falls short of `wanted`, naming the cap and the fix.
pub fn cap_warning(wanted: usize, grant: Grant) -> Option<String> {
    if grant.recv >= wanted && grant.send >= wanted {
        return None;
    }
    let fix = if cfg!(target_os = "linux") {
        format!(
            "raise the caps with `sysctl -w net.core.rmem_max={wanted} net.core.wmem_max={wanted}` \
             (and a file in /etc/sysctl.d/ to keep them)"
        )
    } else if cfg!(target_os = "macos") || cfg!(target_os = "freebsd") {
        format!(
            "raise the cap with `sysctl -w kern.ipc.maxsockbuf={}`",
            wanted * 2
        )
    } else {
        "raise the OS limit on socket buffer sizes".to_string()
    };
    Some(format!(
        "the OS caps UDP socket buffers at {} KiB receive / {} KiB send (porthole asks for {} KiB): \
         bursts of QUIC packets and forwarded datagrams may be dropped at high rates; {fix}",
        grant.recv / 1024,
        grant.send / 1024,
        wanted / 1024
    ))
}

/// Logs a warning once if the OS caps UDP socket buffers below [`SOCKET_BUFFER`].
/// Call at the start of a command that moves traffic.
pub fn warn_if_capped() {
    match probe(SOCKET_BUFFER) {
        Ok(grant) => {
            if let Some(w) = cap_warning(SOCKET_BUFFER, grant) {
                tracing::warn!("{w}");
            }
        }
        Err(e) => tracing::debug!("cannot check UDP socket buffer limits: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_grant_needs_no_warning() {
        let g = Grant {
            recv: 4 << 20,
            send: 8 << 20,
        };
        assert_eq!(cap_warning(4 << 20, g), None);
    }

    #[test]
    fn a_short_grant_names_the_sizes_and_the_fix() {
        let g = Grant {
            recv: 208 << 10,
            send: 4 << 20,
        };
        let w = cap_warning(4 << 20, g).expect("capped receive buffer");
        assert!(w.contains("208 KiB receive"), "{w}");
        assert!(w.contains("4096 KiB"), "{w}");
        #[cfg(target_os = "linux")]
        assert!(w.contains("net.core.rmem_max=4194304"), "{w}");
    }

    /// On a real socket: a small request is granted, one above the OS cap is clamped to it.
    #[cfg(target_os = "linux")]
    #[test]
    fn the_probe_sees_the_kernel_cap() {
        let small = probe(64 << 10).unwrap();
        assert!(
            small.recv >= 64 << 10 && small.send >= 64 << 10,
            "{small:?}"
        );
        let read =
            |p: &str| -> usize { std::fs::read_to_string(p).unwrap().trim().parse().unwrap() };
        let (rmax, wmax) = (
            read("/proc/sys/net/core/rmem_max"),
            read("/proc/sys/net/core/wmem_max"),
        );
        let wanted = rmax.max(wmax) * 4;
        let big = probe(wanted).unwrap();
        assert_eq!(
            big,
            Grant {
                recv: rmax,
                send: wmax
            }
        );
        assert!(cap_warning(wanted, big).is_some());
    }
}
