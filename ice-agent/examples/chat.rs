//! A two-terminal chat: each side prints its description, you paste the
//! other's, and lines typed on one side appear on the other.
//!
//!   terminal 1: cargo run -p natkit-ice --example chat -- offer  [--stun IP:PORT]
//!   terminal 2: cargo run -p natkit-ice --example chat -- answer [--stun IP:PORT]
//!
//! Paste terminal 1's description into terminal 2 and terminal 2's into
//! terminal 1. `offer` is the controlling side (the QUIC client).

use std::net::SocketAddr;

use natkit_ice::{Description, Role, Session};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let role = match args.first().map(String::as_str) {
        Some("offer") => Role::Controlling,
        Some("answer") => Role::Controlled,
        _ => return Err("usage: chat offer|answer [--stun IP:PORT]".into()),
    };
    let mut builder = Session::builder().role(role).loopback(true);
    if let [_, flag, server] = args.as_slice() {
        if flag == "--stun" {
            builder = builder.stun_server(server.parse::<SocketAddr>()?);
        }
    }
    let session = builder.build().await?;
    eprintln!(
        "your description (paste it on the other side):\n{}\n",
        session.local_description().await
    );
    eprintln!("paste the other side's description:");
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let remote: Description = loop {
        let line = lines.next_line().await?.ok_or("stdin closed")?;
        match Description::parse_any(&line) {
            Ok(d) => break d,
            Err(_) if line.trim().is_empty() => continue,
            Err(e) => eprintln!("{e}; try again"),
        }
    };
    let conn = session.connect(remote).await?;
    eprintln!(
        "connected: {}",
        session.path().map(|p| p.to_string()).unwrap_or_default()
    );
    // QUIC announces a stream with its first data: the answer side sees
    // the chat once the offer side has typed a line.
    let (mut send, mut recv) = match role {
        Role::Controlling => conn.open_bi().await?,
        Role::Controlled => conn.accept_bi().await?,
    };
    let printer = tokio::spawn(async move {
        let mut out = tokio::io::stdout();
        let mut buf = vec![0u8; 4096];
        while let Ok(Some(n)) = recv.read(&mut buf).await {
            let _ = out.write_all(&buf[..n]).await;
            let _ = out.flush().await;
        }
    });
    while let Some(line) = lines.next_line().await? {
        send.write_all(format!("{line}\n").as_bytes()).await?;
    }
    send.finish()?;
    let _ = printer.await;
    session.close();
    session.wait_idle().await;
    Ok(())
}
