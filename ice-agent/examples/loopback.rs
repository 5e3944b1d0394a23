//! Two natkit-ice sessions in one process, connected over loopback: the
//! shortest complete use of the API.
//!
//!   cargo run -p natkit-ice --example loopback
//!   cargo run -p natkit-ice --example loopback -- --turn 127.0.0.1:3478 USER PASS
//!
//! With `--turn`, both sides use only relayed candidates from that TURN
//! server (UDP), forcing the relay path.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Instant;

use natkit_ice::{Error, Role, Session, TurnCredentials, TurnServer};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let turn = match args.as_slice() {
        [] => None,
        [flag, server, user, pass] if flag == "--turn" => {
            let addr: SocketAddr = server.parse()?;
            Some(TurnServer::udp(
                addr,
                TurnCredentials::new(user.as_str(), pass.as_str()),
            ))
        }
        _ => return Err("usage: loopback [--turn IP:PORT USER PASSWORD]".into()),
    };
    let build = |role| {
        let mut b = Session::builder()
            .bind([IpAddr::V4(Ipv4Addr::LOCALHOST)])
            .role(role);
        if let Some(t) = &turn {
            b = b.turn_server(t.clone()).relay_only(true);
        }
        b.build()
    };
    let alice = build(Role::Controlling).await?;
    let bob = build(Role::Controlled).await?;

    // Signalling: in a real app these strings travel over your own channel.
    let offer = alice.local_description().await.to_string();
    let answer = bob.local_description().await.to_string();
    println!("alice's description: {offer}");
    println!("bob's description:   {answer}");

    let t0 = Instant::now();
    let (a, b) = tokio::join!(alice.connect(answer.parse()?), bob.connect(offer.parse()?));
    let (a, b): (quinn::Connection, quinn::Connection) = (a?, b?);
    println!("connected in {:.1} ms", t0.elapsed().as_secs_f64() * 1e3);
    println!("alice: {}", alice.path().ok_or(Error::Closed)?);

    let (mut send, mut recv) = a.open_bi().await?;
    send.write_all(b"hello over natkit").await?;
    send.finish()?;
    let (mut bsend, mut brecv) = b.accept_bi().await?;
    let got = brecv.read_to_end(1024).await?;
    println!("bob received: {}", String::from_utf8_lossy(&got));
    bsend.write_all(b"hi alice").await?;
    bsend.finish()?;
    println!(
        "alice received: {}",
        String::from_utf8_lossy(&recv.read_to_end(1024).await?)
    );
    alice.close();
    bob.close();
    Ok(())
}
