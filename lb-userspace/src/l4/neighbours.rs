//! Neighbour resolution over rtnetlink: the next hop of every real and the
//! gateways of the routes through the attached interfaces become
//! kernel-managed neighbour entries, so that `bpf_fib_lookup` finds them
//! before the first packet, and the kernel keeps them fresh.
//!
//! [`Netlink`] is the synchronous part: one `NETLINK_ROUTE` socket and the
//! three exchanges the control plane needs (a route lookup, a managed
//! neighbour replace, a route dump). [`Resolver`] runs a `Netlink` on a
//! thread of its own, so the caller (the publish path, under the control
//! lock) never waits on the kernel: [`Resolver::request`] only records what
//! to resolve; a newer request replaces one not yet started.
//!
//! A netlink socket belongs to the network namespace of the thread that
//! opened it. [`Netlink::open`] and [`Resolver::spawn`] must therefore run
//! in the namespace `lb` serves (the daemon's, or a test's namespace
//! thread); the resolver's thread keeps using the socket opened by the
//! caller, whatever namespace that thread is in later.

use std::{
    collections::HashSet,
    io,
    net::IpAddr,
    os::fd::AsRawFd,
    sync::{Arc, Condvar, Mutex, MutexGuard},
    thread,
    time::{Duration, Instant},
};

use log::warn;
use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP,
    NLM_F_REPLACE, NLM_F_REQUEST,
};
use netlink_packet_route::{
    link::{LinkAttribute, LinkMessage},
    neighbour::{NeighbourAttribute, NeighbourExtFlags, NeighbourMessage, NeighbourState},
    route::{RouteAddress, RouteAttribute, RouteFlags, RouteMessage, RouteType},
    AddressFamily, RouteNetlinkMessage,
};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

/// How long one receive may wait for the kernel.
const RECV_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one exchange (request and every part of its answer) may take.
const EXCHANGE_DEADLINE: Duration = Duration::from_secs(5);
/// Upper bound on the datagrams one answer (a dump) may span.
const MAX_DATAGRAMS: usize = 4096;
/// The main routing table, the one `ip route show` lists.
const RT_TABLE_MAIN: u32 = 254;

/// What went wrong resolving a neighbour; each message names the address
/// or device concerned and the kernel's reason.
#[derive(Debug, thiserror::Error)]
pub enum NeighbourError {
    #[error("cannot open a netlink (rtnetlink) socket: {error}")]
    Socket { error: io::Error },
    #[error("netlink {op}: {error}")]
    Transport { op: String, error: io::Error },
    #[error("netlink {op}: the kernel's answer cannot be read: {detail}")]
    Decode { op: String, detail: String },
    #[error("no route to {addr}: {error}")]
    NoRoute { addr: IpAddr, error: io::Error },
    #[error("{addr} is a local address of this host, not a neighbour")]
    Local { addr: IpAddr },
    #[error("the route to {addr} is of type {kind}, which leads to no neighbour")]
    NotUnicast { addr: IpAddr, kind: String },
    #[error("the route to {addr} names no output device")]
    NoDevice { addr: IpAddr },
    #[error("the route to {addr} names no source address")]
    NoSource { addr: IpAddr },
    #[error("interface `{name}` does not exist")]
    NoInterface { name: String },
    #[error("cannot install the managed neighbour {addr} on {dev}: {error}")]
    Neighbour {
        addr: IpAddr,
        dev: String,
        error: io::Error,
    },
}

/// Where packets to an address leave: the output interface and the
/// neighbour they are sent to (the route's gateway, or the address itself
/// when it is directly connected).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NextHop {
    pub ifindex: u32,
    pub address: IpAddr,
}

/// Why an exchange failed: the kernel refused (errno), or the socket did.
#[derive(Debug)]
enum Failure {
    Kernel(io::Error),
    Other(NeighbourError),
}

/// One rtnetlink socket in the namespace of the thread that opened it.
pub struct Netlink {
    socket: Socket,
    seq: u32,
}

impl Netlink {
    /// Opens a socket in the calling thread's network namespace.
    pub fn open() -> Result<Netlink, NeighbourError> {
        let socket_err = |error| NeighbourError::Socket { error };
        let mut socket = Socket::new(NETLINK_ROUTE).map_err(socket_err)?;
        socket.bind_auto().map_err(socket_err)?;
        socket.connect(&SocketAddr::new(0, 0)).map_err(socket_err)?;
        set_recv_timeout(&socket, RECV_TIMEOUT).map_err(socket_err)?;
        Ok(Netlink { socket, seq: 0 })
    }

    /// The route the kernel would use for `addr` (`ip route get ADDR`):
    /// output interface and next hop. A local address is refused.
    pub fn route_to(&mut self, addr: IpAddr) -> Result<NextHop, NeighbourError> {
        next_hop_of(addr, &self.route(addr)?)
    }

    /// The source address the kernel would give a packet to `addr` (the
    /// `src` of `ip route get ADDR`).
    pub fn route_source(&mut self, addr: IpAddr) -> Result<IpAddr, NeighbourError> {
        let route = self.route(addr)?;
        next_hop_of(addr, &route)?;
        route
            .attributes
            .iter()
            .find_map(|a| match a {
                RouteAttribute::PrefSource(s) => route_ip(s),
                _ => None,
            })
            .ok_or(NeighbourError::NoSource { addr })
    }

    fn route(&mut self, addr: IpAddr) -> Result<RouteMessage, NeighbourError> {
        let op = format!("route lookup of {addr}");
        let answer = self
            .exchange(&op, 0, RouteNetlinkMessage::GetRoute(route_get(addr)))
            .map_err(|f| match f {
                Failure::Kernel(error) => NeighbourError::NoRoute { addr, error },
                Failure::Other(e) => e,
            })?;
        let route = answer
            .into_iter()
            .find_map(|m| match m {
                RouteNetlinkMessage::NewRoute(r) => Some(r),
                _ => None,
            })
            .ok_or_else(|| NeighbourError::Decode {
                op,
                detail: "no route in the answer".into(),
            })?;
        Ok(route)
    }

    /// Creates or replaces a kernel-managed neighbour entry for `addr` on
    /// interface `ifindex`, as `ip neigh replace ADDR dev DEV managed`
    /// does: state NUD_NONE, extended flag NTF_EXT_MANAGED. The kernel then
    /// resolves it and keeps it resolved.
    pub fn replace_managed(&mut self, ifindex: u32, addr: IpAddr) -> Result<(), NeighbourError> {
        let op = format!("managed neighbour {addr} on interface {ifindex}");
        self.exchange(
            &op,
            NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
            RouteNetlinkMessage::NewNeighbour(managed_neighbour(ifindex, addr)),
        )
        .map(|_| ())
        .map_err(|f| match f {
            Failure::Kernel(error) => NeighbourError::Neighbour {
                addr,
                dev: self.device_label(ifindex),
                error,
            },
            Failure::Other(e) => e,
        })
    }

    /// Looks up the route to `addr` and installs a managed neighbour entry
    /// for its next hop. Returns the next hop.
    pub fn resolve(&mut self, addr: IpAddr) -> Result<NextHop, NeighbourError> {
        let nh = self.route_to(addr)?;
        self.replace_managed(nh.ifindex, nh.address)?;
        Ok(nh)
    }

    /// The gateways of the main table's IPv4 and IPv6 routes through
    /// interface `iface` (`ip -4/-6 route show dev IFACE`), each once.
    pub fn gateways(&mut self, iface: &str) -> Result<Vec<IpAddr>, NeighbourError> {
        let ifindex = self.interface_index(iface)?;
        let mut routes = Vec::new();
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            let op = format!("route dump ({family:?}) for {iface}");
            let mut m = RouteMessage::default();
            m.header.address_family = family;
            let answer = self
                .exchange(&op, NLM_F_DUMP, RouteNetlinkMessage::GetRoute(m))
                .map_err(|f| match f {
                    Failure::Kernel(error) => NeighbourError::Transport { op, error },
                    Failure::Other(e) => e,
                })?;
            routes.extend(answer.into_iter().filter_map(|m| match m {
                RouteNetlinkMessage::NewRoute(r) => Some(r),
                _ => None,
            }));
        }
        Ok(gateways_of(ifindex, &routes))
    }

    /// The index of interface `name` in this socket's namespace.
    pub fn interface_index(&mut self, name: &str) -> Result<u32, NeighbourError> {
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName(name.to_string()));
        let op = format!("link lookup of `{name}`");
        let answer = self
            .exchange(&op, 0, RouteNetlinkMessage::GetLink(m))
            .map_err(|f| match f {
                Failure::Kernel(e) if e.raw_os_error() == Some(libc::ENODEV) => {
                    NeighbourError::NoInterface { name: name.into() }
                }
                Failure::Kernel(error) => NeighbourError::Transport {
                    op: op.clone(),
                    error,
                },
                Failure::Other(e) => e,
            })?;
        answer
            .into_iter()
            .find_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(l.header.index),
                _ => None,
            })
            .ok_or_else(|| NeighbourError::Decode {
                op,
                detail: "no link in the answer".into(),
            })
    }

    /// The name of interface `index` in this socket's namespace.
    pub fn interface_name(&mut self, index: u32) -> Result<String, NeighbourError> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        let op = format!("link lookup of interface {index}");
        let answer = self
            .exchange(&op, 0, RouteNetlinkMessage::GetLink(m))
            .map_err(|f| match f {
                Failure::Kernel(error) => NeighbourError::Transport {
                    op: op.clone(),
                    error,
                },
                Failure::Other(e) => e,
            })?;
        answer
            .into_iter()
            .find_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => l.attributes.into_iter().find_map(|a| match a {
                    LinkAttribute::IfName(n) => Some(n),
                    _ => None,
                }),
                _ => None,
            })
            .ok_or_else(|| NeighbourError::Decode {
                op,
                detail: "no interface name in the answer".into(),
            })
    }

    /// `name (index)` for messages, or the index alone when the name is
    /// not to be had.
    fn device_label(&mut self, index: u32) -> String {
        match self.interface_name(index) {
            Ok(n) => format!("{n} (index {index})"),
            Err(_) => format!("interface {index}"),
        }
    }

    /// Sends one request and collects its answer: the messages up to the
    /// ACK, the end of a dump, or the one reply of a plain request.
    /// Answers to earlier requests (their sequence numbers) are skipped.
    fn exchange(
        &mut self,
        op: &str,
        flags: u16,
        msg: RouteNetlinkMessage,
    ) -> Result<Vec<RouteNetlinkMessage>, Failure> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let buf = encode(msg, NLM_F_REQUEST | flags, seq);
        let other = |e| Failure::Other(e);
        let transport = |error| {
            other(NeighbourError::Transport {
                op: op.to_string(),
                error,
            })
        };
        self.socket.send(&buf, 0).map_err(transport)?;
        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        let acked = flags & NLM_F_ACK != 0;
        let start = Instant::now();
        let mut out = Vec::new();
        for _ in 0..MAX_DATAGRAMS {
            if start.elapsed() > EXCHANGE_DEADLINE {
                break;
            }
            let (data, _) = match self.socket.recv_from_full() {
                Ok(d) => d,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    break
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(transport(e)),
            };
            let decode = |detail: String| {
                other(NeighbourError::Decode {
                    op: op.to_string(),
                    detail,
                })
            };
            for m in split(&data).map_err(decode)? {
                if m.header.sequence_number != seq {
                    continue;
                }
                match m.payload {
                    NetlinkPayload::Error(e) => {
                        return match e.code {
                            None => Ok(out),
                            Some(_) => Err(Failure::Kernel(e.to_io())),
                        };
                    }
                    NetlinkPayload::Done(d) => {
                        return if d.code == 0 {
                            Ok(out)
                        } else {
                            Err(Failure::Kernel(io::Error::from_raw_os_error(d.code.abs())))
                        };
                    }
                    NetlinkPayload::InnerMessage(inner) => {
                        out.push(inner);
                        if !dump && !acked {
                            return Ok(out);
                        }
                    }
                    _ => {}
                }
            }
        }
        Err(transport(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("no complete answer within {EXCHANGE_DEADLINE:?}"),
        )))
    }
}

fn set_recv_timeout(socket: &Socket, d: Duration) -> io::Result<()> {
    let tv = libc::timeval {
        tv_sec: d.as_secs() as libc::time_t,
        tv_usec: d.subsec_micros() as libc::suseconds_t,
    };
    // SAFETY: the fd is the open socket `socket` owns; `tv` is a valid
    // timeval whose size is passed.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&raw const tv).cast::<libc::c_void>(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn family(addr: IpAddr) -> AddressFamily {
    if addr.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    }
}

/// A netlink request, serialized.
fn encode(msg: RouteNetlinkMessage, flags: u16, seq: u32) -> Vec<u8> {
    let mut header = NetlinkHeader::default();
    header.flags = flags;
    header.sequence_number = seq;
    let mut m = NetlinkMessage::new(header, NetlinkPayload::from(msg));
    m.finalize();
    let mut buf = vec![0u8; m.header.length as usize];
    m.serialize(&mut buf);
    buf
}

/// The netlink messages of one datagram.
fn split(data: &[u8]) -> Result<Vec<NetlinkMessage<RouteNetlinkMessage>>, String> {
    let mut out = Vec::new();
    let mut off = 0;
    while data.len() - off >= 16 {
        let len = u32::from_ne_bytes(data[off..off + 4].try_into().expect("4 bytes")) as usize;
        if len < 16 || off + len > data.len() {
            return Err(format!(
                "message of {len} bytes at offset {off} in a datagram of {}",
                data.len()
            ));
        }
        let m = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&data[off..off + len])
            .map_err(|e| e.to_string())?;
        out.push(m);
        // NLMSG_ALIGN
        off += (len + 3) & !3;
    }
    Ok(out)
}

/// `RTM_GETROUTE` for one destination address.
fn route_get(addr: IpAddr) -> RouteMessage {
    let mut m = RouteMessage::default();
    m.header.address_family = family(addr);
    m.header.destination_prefix_length = if addr.is_ipv4() { 32 } else { 128 };
    m.attributes
        .push(RouteAttribute::Destination(RouteAddress::from(addr)));
    m
}

/// `RTM_NEWNEIGH` body of a managed entry (no link-layer address: the
/// kernel resolves it).
fn managed_neighbour(ifindex: u32, addr: IpAddr) -> NeighbourMessage {
    let mut m = NeighbourMessage::default();
    m.header.family = family(addr);
    m.header.ifindex = ifindex;
    m.header.state = NeighbourState::None;
    m.attributes
        .push(NeighbourAttribute::Destination(addr.into()));
    // NTF_MANAGED travels as NTF_EXT_MANAGED in the NDA_FLAGS_EXT
    // attribute (Linux 5.16 and later); the crate names it.
    m.attributes
        .push(NeighbourAttribute::ExtFlags(NeighbourExtFlags::Managed));
    m
}

fn route_ip(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

fn gateway_attr(attrs: &[RouteAttribute]) -> Option<IpAddr> {
    attrs.iter().find_map(|a| match a {
        RouteAttribute::Gateway(g) => route_ip(g),
        _ => None,
    })
}

/// The next hop of `addr` from the kernel's answer to a route lookup.
fn next_hop_of(addr: IpAddr, route: &RouteMessage) -> Result<NextHop, NeighbourError> {
    match route.header.kind {
        RouteType::Unicast => {}
        RouteType::Local => return Err(NeighbourError::Local { addr }),
        other => {
            return Err(NeighbourError::NotUnicast {
                addr,
                kind: format!("{other:?}").to_lowercase(),
            })
        }
    }
    let ifindex = route
        .attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Oif(i) => Some(*i),
            _ => None,
        })
        .ok_or(NeighbourError::NoDevice { addr })?;
    Ok(NextHop {
        ifindex,
        address: gateway_attr(&route.attributes).unwrap_or(addr),
    })
}

fn table_of(r: &RouteMessage) -> u32 {
    r.attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(r.header.table as u32)
}

/// The gateways of the main table's routes through `ifindex` (a
/// multipath route's next hops through it included), each once, in
/// dump order.
fn gateways_of(ifindex: u32, routes: &[RouteMessage]) -> Vec<IpAddr> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    let mut add = |g: IpAddr| {
        if seen.insert(g) {
            out.push(g);
        }
    };
    for r in routes {
        if table_of(r) != RT_TABLE_MAIN || r.header.flags.contains(RouteFlags::Cloned) {
            continue;
        }
        let oif = r.attributes.iter().find_map(|a| match a {
            RouteAttribute::Oif(i) => Some(*i),
            _ => None,
        });
        if oif == Some(ifindex) {
            if let Some(g) = gateway_attr(&r.attributes) {
                add(g);
            }
        }
        for a in &r.attributes {
            if let RouteAttribute::MultiPath(hops) = a {
                for h in hops.iter().filter(|h| h.interface_index == ifindex) {
                    if let Some(g) = gateway_attr(&h.attributes) {
                        add(g);
                    }
                }
            }
        }
    }
    out
}

/// What to resolve: the reals' addresses, and interfaces whose routes'
/// gateways are wanted too.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Targets {
    pub reals: Vec<IpAddr>,
    pub interfaces: Vec<String>,
}

#[derive(Default)]
struct State {
    pending: Option<Targets>,
    /// Generation of the latest request.
    requested: u64,
    /// Generation of the latest request fully processed.
    done: u64,
    stop: bool,
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Resolves neighbours on a thread of its own; see the module docs.
/// Dropping it stops the thread (after the target in progress).
pub struct Resolver {
    shared: Arc<Shared>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Resolver {
    /// Opens the netlink socket in the calling thread's network namespace
    /// (the one `lb` serves) and starts the resolver thread.
    pub fn spawn() -> Result<Resolver, NeighbourError> {
        let mut nl = Netlink::open()?;
        Resolver::spawn_with(move |t: &Targets, stop: &dyn Fn() -> bool| {
            resolve_targets(&mut nl, t, stop);
        })
        .map_err(|error| NeighbourError::Socket { error })
    }

    /// Starts the thread with `work` as the resolution step (tests give
    /// their own).
    fn spawn_with<F>(mut work: F) -> io::Result<Resolver>
    where
        F: FnMut(&Targets, &dyn Fn() -> bool) + Send + 'static,
    {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
        });
        let s = shared.clone();
        let thread = thread::Builder::new()
            .name("lb-neighbours".into())
            .spawn(move || loop {
                let (targets, generation) = {
                    let mut st = s.lock();
                    while st.pending.is_none() && !st.stop {
                        st = s
                            .changed
                            .wait(st)
                            .unwrap_or_else(std::sync::PoisonError::into_inner);
                    }
                    if st.stop {
                        return;
                    }
                    (st.pending.take().expect("pending"), st.requested)
                };
                let stop = || s.lock().stop;
                work(&targets, &stop);
                let mut st = s.lock();
                st.done = st.done.max(generation);
                s.changed.notify_all();
            })?;
        Ok(Resolver {
            shared,
            thread: Some(thread),
        })
    }

    /// Asks for `reals` and the gateways of `interfaces` to be resolved;
    /// returns at once. A request not yet started is replaced. Returns the
    /// request's generation, for [`Resolver::wait`].
    pub fn request(&self, reals: Vec<IpAddr>, interfaces: Vec<String>) -> u64 {
        let mut st = self.shared.lock();
        st.pending = Some(Targets { reals, interfaces });
        st.requested += 1;
        self.shared.changed.notify_all();
        st.requested
    }

    /// Waits up to `timeout` until request `generation` (or a later one
    /// that replaced it) was processed; false on timeout.
    pub fn wait(&self, generation: u64, timeout: Duration) -> bool {
        let st = self.shared.lock();
        let (st, _) = self
            .shared
            .changed
            .wait_timeout_while(st, timeout, |st| st.done < generation)
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        st.done >= generation
    }

    /// [`Resolver::request`], then [`Resolver::wait`].
    pub fn request_and_wait(
        &self,
        reals: Vec<IpAddr>,
        interfaces: Vec<String>,
        timeout: Duration,
    ) -> bool {
        let g = self.request(reals, interfaces);
        self.wait(g, timeout)
    }
}

impl Drop for Resolver {
    fn drop(&mut self) {
        self.shared.lock().stop = true;
        self.shared.changed.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Resolves each real, then the gateways of each interface, with one
/// warning per failure. Stops early when `stop` says so.
fn resolve_targets(nl: &mut Netlink, t: &Targets, stop: &dyn Fn() -> bool) {
    let mut reals = HashSet::new();
    for &addr in &t.reals {
        if stop() {
            return;
        }
        if reals.insert(addr) {
            if let Err(e) = nl.resolve(addr) {
                warn!("neighbour of real {addr}: {e}");
            }
        }
    }
    for iface in &t.interfaces {
        if stop() {
            return;
        }
        let gateways = match nl.gateways(iface) {
            Ok(g) => g,
            Err(e) => {
                warn!("gateways on {iface}: {e}");
                continue;
            }
        };
        for gw in gateways {
            if stop() {
                return;
            }
            if let Err(e) = nl.resolve(gw) {
                warn!("gateway {gw} on {iface}: {e}");
            }
        }
    }
}

/// The index of an interface by name, in the calling thread's namespace.
pub fn ifindex(iface: &str) -> anyhow::Result<u32> {
    use anyhow::Context;
    let c = std::ffi::CString::new(iface).context("interface name has a NUL byte")?;
    // SAFETY: `c` is a valid NUL-terminated string that outlives the call.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if idx == 0 {
        anyhow::bail!("interface `{iface}` does not exist");
    }
    Ok(idx)
}

#[cfg(test)]
mod tests {
    use std::{
        net::{Ipv4Addr, Ipv6Addr},
        sync::mpsc,
    };

    use netlink_packet_route::route::{RouteHeader, RouteNextHop, RouteProtocol, RouteScope};

    use super::*;

    const V4: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 20, 2));
    const GW4: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1));
    const GW6: IpAddr = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1));

    fn route(kind: RouteType, attrs: Vec<RouteAttribute>) -> RouteMessage {
        let mut m = RouteMessage::default();
        m.header = RouteHeader {
            address_family: AddressFamily::Inet,
            table: RouteHeader::RT_TABLE_MAIN,
            protocol: RouteProtocol::Boot,
            scope: RouteScope::Universe,
            kind,
            ..RouteHeader::default()
        };
        m.attributes = attrs;
        m
    }

    /// The route request is a plain `RTM_GETROUTE` (type 26) for a /32
    /// with `RTA_DST`, as `ip route get` sends.
    #[test]
    fn route_get_request_bytes() {
        let buf = encode(
            RouteNetlinkMessage::GetRoute(route_get(V4)),
            NLM_F_REQUEST,
            7,
        );
        // nlmsghdr (16) + rtmsg (12) + RTA_DST (8)
        assert_eq!(buf.len(), 36);
        assert_eq!(u32::from_ne_bytes(buf[0..4].try_into().unwrap()), 36);
        assert_eq!(u16::from_ne_bytes(buf[4..6].try_into().unwrap()), 26);
        assert_eq!(
            u16::from_ne_bytes(buf[6..8].try_into().unwrap()),
            NLM_F_REQUEST
        );
        assert_eq!(u32::from_ne_bytes(buf[8..12].try_into().unwrap()), 7);
        assert_eq!(buf[16], libc::AF_INET as u8);
        assert_eq!(buf[17], 32);
        // RTA_DST = 1, four bytes of address.
        assert_eq!(u16::from_ne_bytes(buf[30..32].try_into().unwrap()), 1);
        assert_eq!(&buf[32..36], &[198, 18, 20, 2]);
    }

    /// The neighbour request matches what `ip neigh replace ADDR dev DEV
    /// managed` sends (seen with strace): RTM_NEWNEIGH, REQUEST | ACK |
    /// REPLACE | CREATE, NUD_NONE, no ndm flags, NDA_DST and
    /// NDA_FLAGS_EXT = NTF_EXT_MANAGED.
    #[test]
    fn managed_neighbour_request_bytes() {
        let buf = encode(
            RouteNetlinkMessage::NewNeighbour(managed_neighbour(5, V4)),
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
            1,
        );
        assert_eq!(buf.len(), 44);
        assert_eq!(u16::from_ne_bytes(buf[4..6].try_into().unwrap()), 28); // RTM_NEWNEIGH
        assert_eq!(
            u16::from_ne_bytes(buf[6..8].try_into().unwrap()),
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE
        );
        // ndmsg: family, pad×3, ifindex, state (u16), flags, type
        assert_eq!(buf[16], libc::AF_INET as u8);
        assert_eq!(i32::from_ne_bytes(buf[20..24].try_into().unwrap()), 5);
        assert_eq!(u16::from_ne_bytes(buf[24..26].try_into().unwrap()), 0); // NUD_NONE
        assert_eq!(buf[26], 0);
        // NDA_DST (1) then NDA_FLAGS_EXT (15) = 1 (NTF_EXT_MANAGED)
        assert_eq!(u16::from_ne_bytes(buf[30..32].try_into().unwrap()), 1);
        assert_eq!(&buf[32..36], &[198, 18, 20, 2]);
        assert_eq!(u16::from_ne_bytes(buf[38..40].try_into().unwrap()), 15);
        assert_eq!(u32::from_ne_bytes(buf[40..44].try_into().unwrap()), 1);
    }

    #[test]
    fn next_hop_is_the_gateway_or_the_address() {
        let direct = route(RouteType::Unicast, vec![RouteAttribute::Oif(3)]);
        assert_eq!(
            next_hop_of(V4, &direct).unwrap(),
            NextHop {
                ifindex: 3,
                address: V4
            }
        );
        let via = route(
            RouteType::Unicast,
            vec![RouteAttribute::Gateway(GW4.into()), RouteAttribute::Oif(4)],
        );
        assert_eq!(
            next_hop_of(V4, &via).unwrap(),
            NextHop {
                ifindex: 4,
                address: GW4
            }
        );
    }

    #[test]
    fn local_and_odd_routes_are_refused() {
        let local = route(RouteType::Local, vec![RouteAttribute::Oif(1)]);
        let e = next_hop_of(V4, &local).unwrap_err();
        assert!(matches!(e, NeighbourError::Local { addr } if addr == V4));
        assert_eq!(
            e.to_string(),
            "198.18.20.2 is a local address of this host, not a neighbour"
        );
        let bh = route(RouteType::BlackHole, vec![RouteAttribute::Oif(1)]);
        let e = next_hop_of(V4, &bh).unwrap_err();
        assert!(matches!(e, NeighbourError::NotUnicast { .. }), "{e}");
        assert!(e.to_string().contains("blackhole"), "{e}");
        let nodev = route(RouteType::Unicast, vec![]);
        assert!(matches!(
            next_hop_of(V4, &nodev),
            Err(NeighbourError::NoDevice { .. })
        ));
    }

    #[test]
    fn gateways_of_an_interface() {
        let mut other_table = route(
            RouteType::Unicast,
            vec![
                RouteAttribute::Gateway(IpAddr::V4(Ipv4Addr::new(198, 18, 0, 9)).into()),
                RouteAttribute::Oif(2),
                RouteAttribute::Table(100),
            ],
        );
        other_table.header.table = 100;
        let mut v6 = route(
            RouteType::Unicast,
            vec![RouteAttribute::Gateway(GW6.into()), RouteAttribute::Oif(2)],
        );
        v6.header.address_family = AddressFamily::Inet6;
        let mut hop = RouteNextHop::default();
        hop.interface_index = 2;
        hop.attributes = vec![RouteAttribute::Gateway(
            IpAddr::V4(Ipv4Addr::new(198, 18, 0, 7)).into(),
        )];
        let mut elsewhere = RouteNextHop::default();
        elsewhere.interface_index = 3;
        elsewhere.attributes = vec![RouteAttribute::Gateway(
            IpAddr::V4(Ipv4Addr::new(198, 18, 1, 7)).into(),
        )];
        let routes = vec![
            // default via GW4 dev 2
            route(
                RouteType::Unicast,
                vec![RouteAttribute::Gateway(GW4.into()), RouteAttribute::Oif(2)],
            ),
            // the same gateway again, for another prefix
            route(
                RouteType::Unicast,
                vec![RouteAttribute::Gateway(GW4.into()), RouteAttribute::Oif(2)],
            ),
            // connected: no gateway
            route(RouteType::Unicast, vec![RouteAttribute::Oif(2)]),
            // through another interface
            route(
                RouteType::Unicast,
                vec![
                    RouteAttribute::Gateway(IpAddr::V4(Ipv4Addr::new(198, 18, 1, 1)).into()),
                    RouteAttribute::Oif(3),
                ],
            ),
            other_table,
            v6,
            route(
                RouteType::Unicast,
                vec![RouteAttribute::MultiPath(vec![hop, elsewhere])],
            ),
        ];
        assert_eq!(
            gateways_of(2, &routes),
            vec![GW4, GW6, IpAddr::V4(Ipv4Addr::new(198, 18, 0, 7))]
        );
        assert!(gateways_of(9, &routes).is_empty());
    }

    #[test]
    fn split_walks_aligned_messages_and_rejects_bad_lengths() {
        let a = encode(
            RouteNetlinkMessage::GetRoute(route_get(V4)),
            NLM_F_REQUEST,
            1,
        );
        let b = encode(
            RouteNetlinkMessage::GetRoute(route_get(GW6)),
            NLM_F_REQUEST,
            2,
        );
        let mut data = a.clone();
        data.extend_from_slice(&b);
        let ms = split(&data).unwrap();
        assert_eq!(ms.len(), 2);
        assert_eq!(ms[0].header.sequence_number, 1);
        assert_eq!(ms[1].header.sequence_number, 2);
        let mut bad = a;
        bad[0] = 200;
        assert!(split(&bad).is_err());
    }

    #[test]
    fn errors_name_what_failed() {
        let e = NeighbourError::Neighbour {
            addr: GW6,
            dev: "eth1 (index 4)".into(),
            error: io::Error::from_raw_os_error(libc::EINVAL),
        };
        let s = e.to_string();
        assert!(s.contains("2001:db8::1") && s.contains("eth1"), "{s}");
        let e = NeighbourError::NoRoute {
            addr: V4,
            error: io::Error::from_raw_os_error(libc::ENETUNREACH),
        };
        assert!(
            e.to_string().starts_with("no route to 198.18.20.2: "),
            "{e}"
        );
    }

    /// A request made while one is being worked on replaces any pending
    /// one: the worker sees the first and the latest, not those between;
    /// `wait` returns once the latest is done and times out otherwise.
    #[test]
    fn requests_coalesce() {
        let (started_tx, started_rx) = mpsc::channel::<Targets>();
        let (go_tx, go_rx) = mpsc::channel::<()>();
        let r = Resolver::spawn_with(move |t: &Targets, _stop: &dyn Fn() -> bool| {
            started_tx.send(t.clone()).unwrap();
            let _ = go_rx.recv_timeout(Duration::from_secs(10));
        })
        .unwrap();
        let g1 = r.request(vec![V4], vec![]);
        let first = started_rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(first.reals, vec![V4]);
        // The worker is busy with g1: these queue, each replacing the last.
        let _g2 = r.request(vec![GW4], vec![]);
        let g3 = r.request(vec![GW6], vec!["l0".into()]);
        assert!(!r.wait(g3, Duration::from_millis(50)));
        go_tx.send(()).unwrap();
        assert!(r.wait(g1, Duration::from_secs(5)));
        let second = started_rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(
            second,
            Targets {
                reals: vec![GW6],
                interfaces: vec!["l0".into()]
            }
        );
        go_tx.send(()).unwrap();
        assert!(r.wait(g3, Duration::from_secs(5)));
        // Nothing else was run.
        assert!(started_rx.recv_timeout(Duration::from_millis(100)).is_err());
        drop(r);
    }

    /// Dropping the resolver stops its thread, also while idle.
    #[test]
    fn drop_stops_the_thread() {
        let r = Resolver::spawn_with(|_: &Targets, _: &dyn Fn() -> bool| {}).unwrap();
        assert!(r.request_and_wait(vec![], vec![], Duration::from_secs(5)));
        let start = Instant::now();
        drop(r);
        assert!(start.elapsed() < Duration::from_secs(2));
    }
}
