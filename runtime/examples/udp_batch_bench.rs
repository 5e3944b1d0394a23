//! Loopback echo benchmark: batched (`recvmmsg`/`sendmmsg`) versus one system call per datagram
//! on the echo side. Not a test; run with
//!
//! ```text
//! cargo run --release -p natkit-runtime --example udp_batch_bench -- [SECONDS] [PAYLOAD]
//! ```
//!
//! A client thread keeps a bounded window of 20-byte-ish datagrams in flight to 127.0.0.1 and
//! counts the echoes; the echo thread answers either with `RecvBatch`/`SendBatch` or with
//! `recv_from`/`send_to`. Every loop is bounded by the duration; traffic stays on loopback.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use natkit_runtime::batch::{udp_socket, RecvBatch, SendBatch, UdpSocketOptions};

/// Datagrams the client keeps in flight.
const WINDOW: usize = 512;
const BATCH: usize = 64;

fn opts() -> UdpSocketOptions {
    UdpSocketOptions {
        recv_timeout: Some(Duration::from_millis(50)),
        ..UdpSocketOptions::default()
    }
}

fn echo_batched(sock: &UdpSocket, stop: &AtomicBool) -> io::Result<u64> {
    let mut rx = RecvBatch::new(BATCH, 2048);
    let mut tx = SendBatch::new(BATCH, 2048);
    let mut echoed = 0u64;
    while !stop.load(Ordering::Relaxed) {
        match rx.recv(sock) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
        for d in rx.iter() {
            let _ = tx.push_with(d.source, |buf| {
                buf[..d.data.len()].copy_from_slice(d.data);
                d.data.len()
            });
        }
        echoed += tx.flush(sock)?.sent as u64;
    }
    Ok(echoed)
}

fn echo_single(sock: &UdpSocket, stop: &AtomicBool) -> io::Result<u64> {
    let mut buf = [0u8; 2048];
    let mut echoed = 0u64;
    while !stop.load(Ordering::Relaxed) {
        match sock.recv_from(&mut buf) {
            Ok((n, from)) => {
                sock.send_to(&buf[..n], from)?;
                echoed += 1;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(echoed)
}

/// Drives the echo server at `server` for `secs`; returns echoes received per second.
fn client(server: SocketAddr, secs: f64, payload: usize) -> io::Result<f64> {
    let sock = udp_socket("127.0.0.1:0".parse().unwrap(), &opts())?;
    let mut rx = RecvBatch::new(BATCH, 2048);
    let mut tx = SendBatch::new(BATCH, 2048);
    let data = vec![0x5au8; payload];
    let start = Instant::now();
    let mut in_flight = 0usize;
    let mut received = 0u64;
    while start.elapsed().as_secs_f64() < secs {
        while in_flight < WINDOW {
            while !tx.is_full() && in_flight + tx.len() < WINDOW {
                let _ = tx.push(server, &data);
            }
            let stats = tx.flush(&sock)?;
            in_flight += stats.sent;
        }
        match rx.recv(&sock) {
            Ok(n) => {
                received += n as u64;
                in_flight = in_flight.saturating_sub(n);
            }
            // Echoes lost to a full buffer: forget them and refill the window.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => in_flight = 0,
            Err(e) => return Err(e),
        }
    }
    Ok(received as f64 / start.elapsed().as_secs_f64())
}

fn run(batched: bool, secs: f64, payload: usize) -> io::Result<f64> {
    let server = udp_socket("127.0.0.1:0".parse().unwrap(), &opts())?;
    let addr = server.local_addr()?;
    let stop = Arc::new(AtomicBool::new(false));
    let echo = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            if batched {
                echo_batched(&server, &stop)
            } else {
                echo_single(&server, &stop)
            }
        })
    };
    let rate = client(addr, secs, payload);
    stop.store(true, Ordering::Relaxed);
    let echoed = echo.join().expect("echo thread")?;
    let rate = rate?;
    println!(
        "{:<8} {:>10.0} echoes/s received by the client ({echoed} echoed by the server)",
        if batched { "batched" } else { "single" },
        rate
    );
    Ok(rate)
}

fn main() -> io::Result<()> {
    let mut args = std::env::args().skip(1);
    let secs: f64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(3.0);
    let payload: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(20);
    let secs = secs.clamp(0.1, 60.0);
    let payload = payload.clamp(1, 1400);
    println!("loopback echo, {payload}-byte datagrams, {secs} s each, window {WINDOW}");
    let single = run(false, secs, payload)?;
    let batched = run(true, secs, payload)?;
    println!("batched / single = {:.2}", batched / single);
    Ok(())
}
