//! DNS over TCP: the listener with its client limit, and each connection's
//! length-prefixed framing with an idle timeout.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::Semaphore,
    task::JoinSet,
};

use super::query::{current, handle, Shared, Stats, Transport};

/// Accepts TCP connections until the task is aborted.
pub async fn serve_tcp(
    listener: TcpListener,
    shared: Shared,
    stats: Arc<Stats>,
    idle: Duration,
    max_clients: usize,
) {
    let limit = Arc::new(Semaphore::new(max_clients));
    let mut conns = JoinSet::new();
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                log::warn!("dns: tcp accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        while conns.try_join_next().is_some() {}
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            log::debug!("dns: too many tcp clients, closing {peer}");
            drop(stream);
            continue;
        };
        let (shared, stats) = (shared.clone(), stats.clone());
        conns.spawn(async move {
            let _permit = permit;
            if let Err(e) = serve_conn(stream, peer, shared, stats, idle).await {
                log::debug!("dns: tcp {peer}: {e}");
            }
        });
    }
}

async fn serve_conn(
    mut s: TcpStream,
    peer: SocketAddr,
    shared: Shared,
    stats: Arc<Stats>,
    idle: Duration,
) -> std::io::Result<()> {
    let _ = s.set_nodelay(true);
    let mut buf = vec![0u8; 65535];
    loop {
        let mut len = [0u8; 2];
        match tokio::time::timeout(idle, s.read_exact(&mut len)).await {
            Err(_) => return Ok(()),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Ok(Err(e)) => return Err(e),
            Ok(Ok(_)) => {}
        }
        let n = u16::from_be_bytes(len) as usize;
        match tokio::time::timeout(idle, s.read_exact(&mut buf[..n])).await {
            Err(_) => return Ok(()),
            Ok(r) => {
                r?;
            }
        }
        let state = current(&shared);
        let Some(out) = handle(&state, &stats, &buf[..n], peer, Transport::Tcp) else {
            // Unparseable on a stream: the framing cannot be trusted, close.
            return Ok(());
        };
        let mut framed = Vec::with_capacity(out.len() + 2);
        framed.extend_from_slice(&(out.len() as u16).to_be_bytes());
        framed.extend_from_slice(&out);
        tokio::time::timeout(idle, s.write_all(&framed))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "write timeout"))??;
    }
}
