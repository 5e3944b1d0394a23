//! natkit-turn's front door through the binary, with the real peers: one TLS port shared with
//! nginx (web traffic forwarded as plain bytes with a PROXY v2 header, or passed through by
//! SNI with nginx's own certificate) while TURN allocates on the same port; haproxy
//! `send-proxy-v2` in front of the TCP and TLS listeners; and the secret file and certificate
//! rotated Kubernetes-style (a `..data` symlink swap) without a signal. Loopback only; nginx
//! and haproxy come from scripts/deps/front-doors.sh.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use natkit_proto::raw::method;
use natkit_proto::turn::client::{ClientError, Transport};
use natkit_testkit::{ready, tls};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConnection, StreamOwned};

type TlsClient = StreamOwned<ClientConnection, TcpStream>;

/// A daemon of the test (nginx, haproxy), killed by PID on drop.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Starts `program` with `args`, its output to `log`.
fn daemon(program: &str, args: &[&str], log: &Path) -> Daemon {
    let out = std::fs::File::create(log).unwrap();
    let child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap_or_else(|e| {
            panic!("start {program} (scripts/deps/front-doors.sh installs it): {e}")
        });
    Daemon(child)
}

/// nginx on loopback in one process, with the servers of `servers` (an `http {}` body).
fn nginx(dir: &Path, servers: &str) -> Daemon {
    let conf = dir.join("nginx.conf");
    let d = dir.display();
    std::fs::write(
        &conf,
        format!(
            "worker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/nginx-error.log info;\n\
             events {{ worker_connections 64; }}\n\
             http {{\n  access_log {d}/nginx-access.log;\n  default_type text/plain;\n{servers}\n}}\n"
        ),
    )
    .unwrap();
    daemon(
        "nginx",
        &[
            "-p",
            &d.to_string(),
            "-c",
            conf.to_str().unwrap(),
            "-e",
            &format!("{d}/nginx-error.log"),
            "-g",
            "daemon off; master_process off;",
        ],
        &dir.join("nginx.out"),
    )
}

/// A TLS client of `addr` for server name `name`, trusting only `ca`, offering `alpn`.
fn tls_client(
    addr: SocketAddr,
    ca: &CertificateDer<'static>,
    name: &str,
    alpn: &[&str],
) -> TlsClient {
    let mut cfg = tls::client_config(ca.clone());
    cfg.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    let conn = ClientConnection::new(
        Arc::new(cfg),
        ServerName::try_from(name.to_owned()).unwrap(),
    )
    .unwrap();
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(STEP)).unwrap();
    StreamOwned::new(conn, tcp)
}

/// `GET /` over `s`; the body of the answer.
fn get(mut s: impl Read + Write) -> String {
    s.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut out = Vec::new();
    // The answer is complete even if the close is not a clean TLS close_notify.
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP answer: {text:?}"));
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body.to_owned()
}

/// Certificate and key for `names` in `dir` as `<tag>.pem`/`<tag>.key`: (paths, DER).
fn cert(dir: &Path, tag: &str, names: &[&str]) -> (PathBuf, PathBuf, CertificateDer<'static>) {
    let (c, k) = (
        dir.join(format!("{tag}.pem")),
        dir.join(format!("{tag}.key")),
    );
    let ck = tls::self_signed(names, &c, &k);
    (c, k, ck.cert.der().clone())
}

fn tls_args(port: u16, cert: &Path, key: &Path) -> Vec<String> {
    tls::listener_args(loopback(port), cert, key)
}

fn start(extra: Vec<String>) -> Relay {
    Relay::start(&extra.iter().map(String::as_str).collect::<Vec<_>>())
}

/// One TLS port: an HTTPS GET (browser-like ALPN, or none at all) gets nginx's page, with a
/// PROXY v2 header telling nginx the client's real address and port; TURN allocates on the
/// same port, told apart by ALPN `stun.turn` or by its first bytes.
#[test]
fn web_and_turn_share_one_tls_port_with_nginx_behind() {
    let dir = TempDir::new("natkit-turn-share");
    let (plain, with_pp) = (free_port(), free_port());
    let _nginx = nginx(
        dir.path(),
        &format!(
            "server {{ listen 127.0.0.1:{plain}; location / {{ return 200 \"nginx page\\n\"; }} }}\n\
             server {{ listen 127.0.0.1:{with_pp} proxy_protocol;\n\
               location / {{ return 200 \"client=$proxy_protocol_addr:$proxy_protocol_port\\n\"; }} }}"
        ),
    );
    ready::wait_http_ok(loopback(plain), "/", START);
    ready::wait_tcp(loopback(with_pp), "nginx's PROXY protocol port", START);
    let (c, k, der) = cert(dir.path(), "turn", &["localhost"]);
    let port = free_port();
    let mut args = tls_args(port, &c, &k);
    args.extend(["--web-backend".into(), loopback(with_pp).to_string()]);
    args.extend(["--backend-proxy-protocol".into(), "true".into()]);
    let relay = start(args);
    relay.wait_tls(loopback(port));

    for alpn in [&["h2", "http/1.1"][..], &[]] {
        let s = tls_client(loopback(port), &der, "localhost", alpn);
        let me = s.sock.local_addr().unwrap();
        assert_eq!(
            get(s),
            format!("client={}:{}\n", me.ip(), me.port()),
            "ALPN {alpn:?}"
        );
    }
    for alpn in [&["stun.turn"][..], &[]] {
        let mut s = tls_client(loopback(port), &der, "localhost", alpn);
        let me = s.sock.local_addr().unwrap();
        let (mapped, _) = stream_allocate(&mut s, USER, PASS).expect("TURN over TLS allocates");
        assert_eq!(mapped, me, "ALPN {alpn:?}");
        let negotiated = s.conn.alpn_protocol().map(|p| p.to_vec());
        assert_eq!(negotiated, alpn.first().map(|p| p.as_bytes().to_vec()));
    }
    assert_eq!(
        relay.metric(r#"natkit_turn_connections_total{result="web",transport="tls"}"#),
        2.0
    );

    // The backend gone: the client's connection is closed and the operator's metric says why.
    drop(_nginx);
    let mut s = tls_client(loopback(port), &der, "localhost", &["http/1.1"]);
    let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n");
    let mut buf = [0u8; 64];
    assert!(matches!(s.read(&mut buf), Ok(0) | Err(_)));
    // Counted after the connection is closed: waited for, bounded.
    eventually("backend_failed counted", || {
        relay.metric(r#"natkit_turn_connections_total{result="backend_failed",transport="tls"}"#)
            == 1.0
    });
}

/// SNI pass-through: a name routed to nginx's TLS port reaches it untouched, so the client
/// sees nginx's own certificate; other names are terminated by natkit-turn and allocate.
#[test]
fn sni_passthrough_keeps_the_web_servers_certificate() {
    let dir = TempDir::new("natkit-turn-passthrough");
    let (wc, wk, web_der) = cert(dir.path(), "www", &["www.example.test"]);
    let tls_port = free_port();
    let _nginx = nginx(
        dir.path(),
        &format!(
            "server {{ listen 127.0.0.1:{tls_port} ssl; ssl_certificate {}; ssl_certificate_key {};\n\
               location / {{ return 200 \"nginx over its own TLS\\n\"; }} }}",
            wc.display(),
            wk.display()
        ),
    );
    ready::wait_tcp(loopback(tls_port), "nginx's TLS port", START);
    let (c, k, der) = cert(dir.path(), "turn", &["localhost"]);
    let port = free_port();
    let mut args = tls_args(port, &c, &k);
    args.extend([
        "--passthrough-server-name".into(),
        "www.example.test".into(),
    ]);
    args.extend([
        "--passthrough-backend".into(),
        loopback(tls_port).to_string(),
    ]);
    let relay = start(args);
    relay.wait_tls(loopback(port));

    let body = get(tls_client(
        loopback(port),
        &web_der,
        "www.example.test",
        &["http/1.1"],
    ));
    assert_eq!(body, "nginx over its own TLS\n");
    // natkit-turn's certificate does not name www.example.test: a client trusting only it
    // fails, which shows it was nginx that answered.
    let mut s = tls_client(loopback(port), &der, "www.example.test", &[]);
    assert!(s.write_all(b"x").and_then(|_| s.flush()).is_err() || s.read(&mut [0u8; 1]).is_err());
    let mut s = tls_client(loopback(port), &der, "localhost", &[]);
    stream_allocate(&mut s, USER, PASS).expect("TURN over TLS allocates");
    assert_eq!(
        relay.metric(r#"natkit_turn_connections_total{result="passthrough",transport="tls"}"#),
        2.0
    );
}

/// haproxy `send-proxy-v2` in front of the TCP and TLS listeners: the relay serves (and
/// reports as XOR-MAPPED-ADDRESS) the client's address from the header, not haproxy's. The
/// trusted proxy without a header is refused, and so is a header from anyone else.
#[test]
fn haproxy_send_proxy_v2_in_front_of_tcp_and_tls() {
    let dir = TempDir::new("natkit-turn-haproxy");
    let (c, k, der) = cert(dir.path(), "turn", &["localhost"]);
    let tls_port = free_port();
    let mut args = tls_args(tls_port, &c, &k);
    // haproxy connects from 127.0.0.2; the clients are on 127.0.0.1.
    args.extend(["--proxy-protocol-from".into(), "127.0.0.2/32".into()]);
    let relay = start(args);
    relay.wait_tls(loopback(tls_port));
    let (h_tcp, h_tls) = (free_port(), free_port());
    let conf = dir.join("haproxy.cfg");
    std::fs::write(
        &conf,
        format!(
            "defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n\
             frontend fd_tcp\n  bind 127.0.0.1:{h_tcp}\n  default_backend be_tcp\n\
             frontend fd_tls\n  bind 127.0.0.1:{h_tls}\n  default_backend be_tls\n\
             backend be_tcp\n  server turn {} send-proxy-v2 source 127.0.0.2\n\
             backend be_tls\n  server turn 127.0.0.1:{tls_port} send-proxy-v2 source 127.0.0.2\n",
            relay.addr
        ),
    )
    .unwrap();
    let mut haproxy = daemon(
        "haproxy",
        &["-f", conf.to_str().unwrap(), "-db"],
        &dir.join("haproxy.log"),
    );
    ready::wait_binding_tcp(&mut haproxy.0, "haproxy", loopback(h_tcp), START);

    let mut s = TcpStream::connect(loopback(h_tcp)).unwrap();
    s.set_read_timeout(Some(STEP)).unwrap();
    let me = s.local_addr().unwrap();
    let (mapped, _) = stream_allocate(&mut s, USER, PASS).expect("TURN over TCP through haproxy");
    assert_eq!(mapped, me);
    let mut s = tls_client(loopback(h_tls), &der, "localhost", &[]);
    let me = s.sock.local_addr().unwrap();
    let (mapped, _) = stream_allocate(&mut s, USER, PASS).expect("TURN over TLS through haproxy");
    assert_eq!(mapped, me);

    // Directly from a client (untrusted): served as itself; with a header: refused.
    let mut s = TcpStream::connect(relay.addr).unwrap();
    s.set_read_timeout(Some(STEP)).unwrap();
    let me = s.local_addr().unwrap();
    assert_eq!(stream_allocate(&mut s, USER, PASS).unwrap().0, me);
    let spoof = [
        &b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c"[..],
        &[203, 0, 113, 9, 127, 0, 0, 1, 0x30, 0x39, 0x0d, 0x96],
    ]
    .concat();
    let closed = |mut s: TcpStream, first: &[u8]| {
        s.set_read_timeout(Some(STEP)).unwrap();
        let _ = s.write_all(first);
        let _ = s.write_all(&raw_request(method::BINDING, [9; 12], |_| {}, None, false));
        matches!(s.read(&mut [0u8; 64]), Ok(0) | Err(_))
    };
    assert!(closed(TcpStream::connect(relay.addr).unwrap(), &spoof));
    // From the trusted proxy's address without a header: refused.
    let from_proxy = SocketAddr::from(([127, 0, 0, 2], 0));
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.bind(&from_proxy.into()).unwrap();
    sock.connect(&relay.addr.into()).unwrap();
    assert!(closed(sock.into(), &[]));
    eventually("both refusals counted", || {
        relay.metric(r#"natkit_turn_connections_total{result="proxy_refused",transport="tcp"}"#)
            == 2.0
    });
}

/// A Kubernetes Secret volume: `secret`, `cert.pem`, `key.pem` -> `..data/…`, and an update
/// re-points `..data` at a new directory.
struct SecretVolume {
    dir: PathBuf,
    version: u32,
}

impl SecretVolume {
    fn new(dir: &Path) -> SecretVolume {
        for f in ["secret", "cert.pem", "key.pem"] {
            std::os::unix::fs::symlink(format!("..data/{f}"), dir.join(f)).unwrap();
        }
        SecretVolume {
            dir: dir.to_owned(),
            version: 0,
        }
    }

    /// Publishes a new version atomically, as the kubelet does.
    fn publish(&mut self, secret: &str, cert: &str, key: &str) {
        self.version += 1;
        let v = self.dir.join(format!("..2026_{}", self.version));
        std::fs::create_dir(&v).unwrap();
        std::fs::write(v.join("secret"), secret).unwrap();
        std::fs::write(v.join("cert.pem"), cert).unwrap();
        std::fs::write(v.join("key.pem"), key).unwrap();
        let tmp = self.dir.join("..data_tmp");
        std::os::unix::fs::symlink(v.file_name().unwrap(), &tmp).unwrap();
        std::fs::rename(&tmp, self.dir.join("..data")).unwrap();
    }
}

/// Whether a TLS client trusting only `ca` completes a handshake with `addr`.
fn handshake_ok(addr: SocketAddr, ca: &CertificateDer<'static>) -> bool {
    let mut s = tls_client(addr, ca, "localhost", &[]);
    s.conn.complete_io(&mut s.sock).is_ok() && !s.conn.is_handshaking()
}

fn eventually(what: &str, mut ok: impl FnMut() -> bool) {
    let end = Instant::now() + STEP;
    while !ok() {
        assert!(Instant::now() < end, "{what} within {STEP:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The secret file and the certificate, rotated by a symlink swap and no signal: a credential
/// signed with the new secret allocates and new handshakes get the new certificate. A bad
/// new version keeps the running ones, and the log says why.
#[test]
fn a_rotated_secret_volume_is_loaded_without_a_signal() {
    let dir = TempDir::new("natkit-turn-watch");
    let vol_dir = dir.join("secret-volume");
    std::fs::create_dir(&vol_dir).unwrap();
    let mut vol = SecretVolume::new(&vol_dir);
    let gen =
        |n: &str| rcgen::generate_simple_self_signed(vec!["localhost".into(), n.into()]).unwrap();
    let (old, new) = (gen("old.test"), gen("new.test"));
    vol.publish(
        "old-secret-Qw3\n",
        &old.cert.pem(),
        &old.key_pair.serialize_pem(),
    );
    let (port, metrics, tls_port) = (free_port(), free_port(), free_port());
    let log = dir.join("turn.log");
    let mut args: Vec<String> = [
        "--listen",
        &loopback(port).to_string(),
        "--relay-ip",
        "127.0.0.1",
        "--metrics",
        &loopback(metrics).to_string(),
        "--auth-secret-file",
        vol_dir.join("secret").to_str().unwrap(),
        "--watch-interval",
        "1",
    ]
    .map(String::from)
    .to_vec();
    args.extend(tls_args(
        tls_port,
        &vol_dir.join("cert.pem"),
        &vol_dir.join("key.pem"),
    ));
    let relay = Relay::start_logged(args, port, metrics, &log, &[]);
    relay.wait_tls(loopback(tls_port));
    let allocates = |secret: &str| {
        let (u, p) = rest(secret, "erin");
        node(relay.addr, Transport::Udp, &u, &p)
            .allocated()
            .map(|_| ())
    };
    allocates("old-secret-Qw3").expect("the first secret");
    assert_eq!(
        allocates("new-secret-Zk8"),
        Err(ClientError::WrongCredentials)
    );
    assert!(handshake_ok(loopback(tls_port), old.cert.der()));

    vol.publish(
        "new-secret-Zk8\n",
        &new.cert.pem(),
        &new.key_pair.serialize_pem(),
    );
    eventually("the new secret verifies", || {
        allocates("new-secret-Zk8").is_ok()
    });
    eventually("the new certificate is served", || {
        handshake_ok(loopback(tls_port), new.cert.der())
    });
    assert_eq!(
        allocates("old-secret-Qw3"),
        Err(ClientError::WrongCredentials)
    );

    // A broken version: an empty secret list and a certificate that is not one.
    vol.publish("# nothing\n", "not a certificate\n", "not a key\n");
    eventually("the refusal is logged", || {
        let text = std::fs::read_to_string(&log).unwrap();
        text.contains("file change: configuration not reloaded") && text.contains("holds no secret")
    });
    allocates("new-secret-Zk8").expect("the running secret stays");
    assert!(handshake_ok(loopback(tls_port), new.cert.der()));
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        !text.contains("new-secret-Zk8") && !text.contains("old-secret-Qw3"),
        "{text}"
    );
}
