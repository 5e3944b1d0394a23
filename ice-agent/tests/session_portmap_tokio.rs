//! The tokio Session's port mapping end to end on loopback: the simulated
//! gateway of `common/gateway.rs` behind real sockets on 127.83.51.1 (UDP
//! 5351 and 1900, HTTP on 5000), answering UPnP only, so the session's
//! driver carries SSDP from its base and the UPnP exchanges over TCP. No
//! peer: the mapped address (a documentation address the fake gateway
//! names) is only signalled, never sent to; from a loopback base the SSDP
//! search goes to the gateway only, never to the multicast group.

// The NAT models re-exported there are the other simulations'.
#[allow(unused_imports)]
mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::gateway::{Answer, SimGateway, HTTP_PORT};
use natkit_ice::portmap::Protocol;
use natkit_ice::{Session, SessionEvent};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const GW: Ipv4Addr = Ipv4Addr::new(127, 83, 51, 1);
const LO: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// Serve `gw` on GW's UDP ports 5351 and 1900 and TCP port 5000 until the
/// test ends.
async fn serve(gw: Arc<Mutex<SimGateway>>) {
    for port in [5351u16, 1900] {
        let sock = tokio::net::UdpSocket::bind((GW, port)).await.unwrap();
        let gw = gw.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 2048];
            while let Ok((n, from)) = sock.recv_from(&mut buf).await {
                let answers = gw
                    .lock()
                    .unwrap()
                    .udp(from, port, &buf[..n], Instant::now());
                for (_, a) in answers {
                    let _ = sock.send_to(&a, from).await;
                }
            }
        });
    }
    let tcp = tokio::net::TcpListener::bind((GW, HTTP_PORT))
        .await
        .unwrap();
    tokio::spawn(async move {
        while let Ok((mut conn, from)) = tcp.accept().await {
            let gw = gw.clone();
            tokio::spawn(async move {
                let mut req = Vec::new();
                let mut buf = [0u8; 4096];
                // Read until the request is whole (headers, then the body
                // Content-Length announces), as the simulated gateway wants.
                loop {
                    let Ok(n) = conn.read(&mut buf).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    req.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&req).to_string();
                    let Some((head, body)) = text.split_once("\r\n\r\n") else {
                        continue;
                    };
                    let len = head
                        .lines()
                        .find_map(|l| l.strip_prefix("Content-Length: "))
                        .and_then(|v| v.trim().parse::<usize>().ok())
                        .unwrap_or(0);
                    if body.len() >= len {
                        break;
                    }
                }
                let resp = gw.lock().unwrap().http(from.ip(), &req, Instant::now());
                if let Some(resp) = resp {
                    let _ = conn.write_all(&resp).await;
                }
            });
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_maps_with_upnp_over_its_own_sockets_and_deletes_on_close() {
    let mut g = SimGateway::new(&GW.to_string(), "192.0.2.99", Instant::now());
    g.pcp = Answer::Silent;
    g.natpmp = Answer::Silent;
    let gw = Arc::new(Mutex::new(g));
    serve(gw.clone()).await;

    let session = Session::builder()
        .bind([LO])
        .gateway(IpAddr::V4(GW))
        .build()
        .await
        .unwrap();
    let mut events = session.events();
    let mapping = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match events.recv().await {
                Some(SessionEvent::PortMapped(m)) => return m,
                Some(SessionEvent::PortMappingFailed(s)) => panic!("no mapping: {s:?}"),
                Some(_) => {}
                None => panic!("session gone"),
            }
        }
    })
    .await
    .expect("mapped within 5 s");
    assert_eq!(mapping.protocol, Protocol::Upnp);
    assert_eq!(mapping.internal, session.local_addrs()[0]);
    assert_eq!(
        mapping.external,
        SocketAddr::new("192.0.2.99".parse().unwrap(), mapping.internal.port())
    );
    assert_eq!(mapping.lifetime.map(|l| l.as_secs() >= 7000), Some(true));
    assert_eq!(session.port_mapping(), Some(mapping.clone()));
    // Signalled as srflx, type preference 105, once gathering is done.
    let d = session.local_description().await;
    let c = d
        .candidates
        .iter()
        .find(|c| c.addr == mapping.external)
        .expect("the mapped candidate is signalled");
    assert_eq!(c.priority >> 24, 105);
    assert_eq!(gw.lock().unwrap().mappings.len(), 1);

    session.close();
    session.wait_idle().await;
    let g = gw.lock().unwrap();
    assert!(g.mappings.is_empty(), "{:?}", g.mappings);
    assert_eq!(
        g.log.last().map(String::as_str),
        Some("upnp DeletePortMapping")
    );
}
