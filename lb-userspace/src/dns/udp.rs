//! UDP workers: one blocking thread per socket, `recvmmsg`/`sendmmsg`
//! batches, answers through a per-worker response cache.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use super::{
    cache::ResponseCache,
    query::{bump, current, Shared, Stats, Transport},
};

/// Datagrams taken (and replies sent) per system call by a UDP worker.
const UDP_BATCH: usize = 32;
/// Largest UDP query read; longer datagrams are dropped (a query is a
/// question and at most an OPT record: far below this).
const MAX_UDP_QUERY: usize = 4096;

/// Serves one UDP socket on the calling thread until `stop` is set (checked
/// at least every `poll`): `recvmmsg` takes up to [`UDP_BATCH`] queries per
/// call, answers come from a per-worker [`ResponseCache`] when they can, and
/// `sendmmsg` sends the replies of a batch together.
#[allow(
    clippy::needless_pass_by_value,
    reason = "the worker thread owns its socket and handles for its whole life"
)]
pub fn serve_udp_blocking(
    sock: std::net::UdpSocket,
    shared: Shared,
    stats: Arc<Stats>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    poll: Duration,
) {
    use std::os::fd::AsRawFd;
    if let Err(e) = sock
        .set_nonblocking(false)
        .and_then(|()| sock.set_read_timeout(Some(poll)))
    {
        log::error!("dns: udp socket setup: {e}");
        return;
    }
    let fd = sock.as_raw_fd();
    let mut bufs = vec![[0u8; MAX_UDP_QUERY]; UDP_BATCH];
    let mut outs: Vec<Vec<u8>> = (0..UDP_BATCH).map(|_| Vec::with_capacity(1232)).collect();
    // SAFETY: all-zero is a valid value for these plain C structs.
    let mut addrs: Vec<libc::sockaddr_storage> = vec![unsafe { std::mem::zeroed() }; UDP_BATCH];
    // SAFETY: as above.
    let mut iovs: Vec<libc::iovec> = vec![unsafe { std::mem::zeroed() }; UDP_BATCH];
    // SAFETY: as above.
    let mut hdrs: Vec<libc::mmsghdr> = vec![unsafe { std::mem::zeroed() }; UDP_BATCH];
    // SAFETY: as above.
    let mut send_iovs: Vec<libc::iovec> = vec![unsafe { std::mem::zeroed() }; UDP_BATCH];
    // SAFETY: as above.
    let mut send_hdrs: Vec<libc::mmsghdr> = vec![unsafe { std::mem::zeroed() }; UDP_BATCH];
    let mut cache = ResponseCache::new();
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        for i in 0..UDP_BATCH {
            iovs[i] = libc::iovec {
                iov_base: bufs[i].as_mut_ptr().cast(),
                iov_len: MAX_UDP_QUERY,
            };
            let h = &mut hdrs[i].msg_hdr;
            h.msg_name = (&raw mut addrs[i]).cast();
            h.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_iov = &raw mut iovs[i];
            h.msg_iovlen = 1;
            h.msg_control = std::ptr::null_mut();
            h.msg_controllen = 0;
            h.msg_flags = 0;
            hdrs[i].msg_len = 0;
        }
        // SAFETY: every header points at live buffers of the stated sizes.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                hdrs.as_mut_ptr(),
                UDP_BATCH as libc::c_uint,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if !matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock
                    | std::io::ErrorKind::TimedOut
                    | std::io::ErrorKind::Interrupted
            ) {
                // ICMP errors from earlier sends surface here on Linux; go on.
                log::debug!("dns: udp recv: {e}");
            }
            continue;
        }
        let state = current(&shared);
        let mut k = 0;
        for i in 0..n as usize {
            let h = &hdrs[i].msg_hdr;
            if h.msg_flags & libc::MSG_TRUNC != 0 {
                bump(&stats.queries);
                bump(&stats.dropped);
                continue;
            }
            let Some(src) = sockaddr_to_std(&addrs[i]) else {
                continue;
            };
            let len = hdrs[i].msg_len as usize;
            if cache.handle(
                &state,
                &stats,
                &bufs[i][..len],
                src,
                Transport::Udp,
                &mut outs[k],
            ) {
                send_iovs[k] = libc::iovec {
                    iov_base: outs[k].as_mut_ptr().cast(),
                    iov_len: outs[k].len(),
                };
                let sh = &mut send_hdrs[k].msg_hdr;
                sh.msg_name = (&raw mut addrs[i]).cast();
                sh.msg_namelen = h.msg_namelen;
                sh.msg_iov = &raw mut send_iovs[k];
                sh.msg_iovlen = 1;
                sh.msg_control = std::ptr::null_mut();
                sh.msg_controllen = 0;
                sh.msg_flags = 0;
                k += 1;
            }
        }
        let mut sent = 0;
        while sent < k {
            // SAFETY: headers sent..k point at live replies and addresses.
            let r = unsafe {
                libc::sendmmsg(
                    fd,
                    send_hdrs[sent..].as_mut_ptr(),
                    (k - sent) as libc::c_uint,
                    0,
                )
            };
            if r < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                // This reply cannot go (e.g. an unreachable source); skip it.
                log::debug!("dns: udp send: {e}");
                sent += 1;
            } else {
                sent += r as usize;
            }
        }
    }
}

/// A `recvmmsg` source address as a [`SocketAddr`] (IPv4 or IPv6).
fn sockaddr_to_std(ss: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match ss.ss_family as libc::c_int {
        libc::AF_INET => {
            // SAFETY: the family says this storage holds a sockaddr_in.
            let a = unsafe {
                &*std::ptr::from_ref::<libc::sockaddr_storage>(ss).cast::<libc::sockaddr_in>()
            };
            Some(SocketAddr::new(
                std::net::Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)).into(),
                u16::from_be(a.sin_port),
            ))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says this storage holds a sockaddr_in6.
            let a = unsafe {
                &*std::ptr::from_ref::<libc::sockaddr_storage>(ss).cast::<libc::sockaddr_in6>()
            };
            Some(SocketAddr::V6(std::net::SocketAddrV6::new(
                std::net::Ipv6Addr::from(a.sin6_addr.s6_addr),
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}
