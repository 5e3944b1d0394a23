//! Self-signed certificates for TLS listeners in tests.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rcgen::CertifiedKey;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

/// Writes `ck`'s certificate to `cert` and its private key to `key`, both
/// PEM (what the servers' `--cert` and `--key` read).
pub fn write_pem(ck: &CertifiedKey, cert: &Path, key: &Path) {
    std::fs::write(cert, ck.cert.pem()).unwrap_or_else(|e| panic!("write {}: {e}", cert.display()));
    std::fs::write(key, ck.key_pair.serialize_pem())
        .unwrap_or_else(|e| panic!("write {}: {e}", key.display()));
}

/// A fresh self-signed end-entity certificate for `names` (DNS names or IP
/// addresses), written to `cert` and `key` (PEM). Clients trust it by its
/// DER (`ck.cert.der()`).
pub fn self_signed(names: &[&str], cert: &Path, key: &Path) -> CertifiedKey {
    let names = names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
    let ck = rcgen::generate_simple_self_signed(names).expect("generate a certificate");
    write_pem(&ck, cert, key);
    ck
}

/// A fresh self-signed CA certificate for 127.0.0.1 and localhost, written
/// to `<dir>/<name>.pem` and its key to `<dir>/<name>.key`: the same file
/// serves the server as its certificate and clients as a `--ca` file (a CA
/// flag, because some verifiers refuse an end-entity certificate as a trust
/// anchor file). Returns (certificate path, key path).
pub fn self_signed_ca(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let key = rcgen::KeyPair::generate().expect("generate a key pair");
    let mut params = rcgen::CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()])
        .expect("certificate parameters");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let cert = params.self_signed(&key).expect("self-sign");
    let (c, k) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}.key")),
    );
    write_pem(
        &CertifiedKey {
            cert,
            key_pair: key,
        },
        &c,
        &k,
    );
    (c, k)
}

/// The flags of a server's TLS listener on `addr` serving `cert` and `key`:
/// `--tls-listen ADDR --cert CERT --key KEY` (both servers' shared keys).
pub fn listener_args(addr: SocketAddr, cert: &Path, key: &Path) -> Vec<String> {
    let path = |p: &Path| p.to_str().expect("a UTF-8 path").to_owned();
    vec![
        "--tls-listen".into(),
        addr.to_string(),
        "--cert".into(),
        path(cert),
        "--key".into(),
        path(key),
    ]
}

/// A rustls client configuration (ring provider, default protocol
/// versions) that trusts only `ca`.
pub fn client_config(ca: CertificateDer<'static>) -> ClientConfig {
    let mut roots = RootCertStore::empty();
    roots
        .add(ca)
        .expect("a certificate rustls accepts as a root");
    ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth()
}

/// A TLS client stream to `addr` for server name `name`, trusting only `ca`,
/// reads bounded by `read_timeout`. The handshake runs on first use, so a
/// refused certificate shows as a failed read or write.
///
/// # Panics
/// When TCP does not connect, or `name` is not a valid server name.
pub fn connect(
    addr: SocketAddr,
    ca: &CertifiedKey,
    name: &str,
    read_timeout: Duration,
) -> StreamOwned<ClientConnection, TcpStream> {
    connect_trusting(addr, ca.cert.der().clone(), name, read_timeout)
}

/// [`connect`] trusting the root `ca` (e.g. an ACME test CA's issuing root).
///
/// # Panics
/// When TCP does not connect, or `name` is not a valid server name.
pub fn connect_trusting(
    addr: SocketAddr,
    ca: CertificateDer<'static>,
    name: &str,
    read_timeout: Duration,
) -> StreamOwned<ClientConnection, TcpStream> {
    let config = client_config(ca);
    let name = ServerName::try_from(name.to_owned()).expect("a valid server name");
    let conn = ClientConnection::new(Arc::new(config), name).expect("a TLS client");
    let tcp = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    tcp.set_read_timeout(Some(read_timeout)).unwrap();
    StreamOwned::new(conn, tcp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TempDir;

    #[test]
    fn certificates_are_written_as_pem() {
        let dir = TempDir::new("natkit-testkit-tls");
        let (c, k) = (dir.join("a.pem"), dir.join("a.key"));
        let ck = self_signed(&["localhost"], &c, &k);
        let pem = std::fs::read_to_string(&c).unwrap();
        assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"), "{pem}");
        assert_eq!(pem, ck.cert.pem());
        assert!(std::fs::read_to_string(&k)
            .unwrap()
            .contains("PRIVATE KEY-----"));
        let (c, k) = self_signed_ca(dir.path(), "ca");
        assert_eq!(c, dir.join("ca.pem"));
        assert!(std::fs::read_to_string(c).unwrap().contains("CERTIFICATE"));
        assert!(k.is_file());
    }

    /// A TLS server on loopback presenting `ck`'s certificate to one
    /// client, which it sends one byte.
    fn one_shot_server(ck: &CertifiedKey) -> (SocketAddr, std::thread::JoinHandle<()>) {
        let (cert, key) = (ck.cert.der().clone(), ck.key_pair.serialize_der());
        use std::io::Write;
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let t = std::thread::spawn(move || {
            let (tcp, _) = l.accept().unwrap();
            tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let key = rustls::pki_types::PrivateKeyDer::try_from(key).unwrap();
            let config = rustls::ServerConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert], key)
            .unwrap();
            let conn = rustls::ServerConnection::new(Arc::new(config)).unwrap();
            let mut s = StreamOwned::new(conn, tcp);
            let _ = s.write_all(b"x").and_then(|_| s.flush());
        });
        (addr, t)
    }

    fn read_one(ca: &CertifiedKey, server: &CertifiedKey) -> bool {
        use std::io::Read;
        let (addr, t) = one_shot_server(server);
        let mut c = connect(addr, ca, "localhost", Duration::from_secs(5));
        let ok = c.read_exact(&mut [0u8; 1]).is_ok();
        drop(c);
        t.join().unwrap();
        ok
    }

    #[test]
    fn a_client_trusts_its_ca_only() {
        let gen = || rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let (a, b) = (gen(), gen());
        assert!(read_one(&a, &a));
        assert!(!read_one(&a, &b));
    }
}
