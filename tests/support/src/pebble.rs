//! pebble, the ACME test CA (RFC 8555), on loopback with real validation: pebble-challtestsrv
//! answers pebble's DNS queries with 127.0.0.1 for every name, so pebble's tls-alpn-01
//! validation (RFC 8737) connects to 127.0.0.1:`tls_port`, where the server under test
//! listens. Both daemons are killed by PID on drop. Debian's `pebble` package (installed by
//! scripts/deps/acme.sh) ships no certificates: the HTTPS listener's are made here.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{pem::PemObject, CertificateDer, ServerName};
use rustls::{ClientConnection, StreamOwned};

use crate::ports::free_port;
use crate::ready::wait_tcp;

/// How long pebble and its DNS may take to listen.
const START: Duration = Duration::from_secs(30);

/// A running pebble and its mock DNS.
#[derive(Debug)]
pub struct Pebble {
    children: Vec<Child>,
    /// The ACME directory URL.
    pub directory: String,
    /// PEM root of pebble's HTTPS listeners (the clients' `acme-ca-file`).
    pub listener_ca: PathBuf,
    management: SocketAddr,
}

impl Drop for Pebble {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn spawn(program: &str, args: &[&str], env: &[(&str, &str)], log: &Path) -> Child {
    let out = std::fs::File::create(log).unwrap();
    Command::new(program)
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap_or_else(|e| panic!("start {program} (scripts/deps/acme.sh installs it): {e}"))
}

impl Pebble {
    /// Starts pebble (files and logs in `dir`) validating tls-alpn-01 on 127.0.0.1:`tls_port`
    /// and issuing certificates valid for `validity` (whole seconds), and waits until both
    /// daemons listen.
    ///
    /// # Panics
    /// When a daemon cannot start or does not listen in time (both are killed first).
    pub fn start(dir: &Path, tls_port: u16, validity: Duration) -> Pebble {
        // The listener certificate, signed by a CA the ACME clients trust (`listener_ca`).
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let issuer = ca_params.self_signed(&ca_key).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
        let cert = params.signed_by(&key, &issuer, &ca_key).unwrap();
        let (ca, leaf, leaf_key) = (
            dir.join("pebble-listener-ca.pem"),
            dir.join("pebble-listener.pem"),
            dir.join("pebble-listener.key"),
        );
        std::fs::write(&ca, issuer.pem()).unwrap();
        std::fs::write(&leaf, cert.pem()).unwrap();
        std::fs::write(&leaf_key, key.serialize_pem()).unwrap();
        let (listen, management, http, dns, dns_mgmt) = (
            free_port(),
            free_port(),
            free_port(),
            free_port(),
            free_port(),
        );
        let config = dir.join("pebble-config.json");
        std::fs::write(
            &config,
            format!(
                r#"{{"pebble":{{"listenAddress":"127.0.0.1:{listen}","managementListenAddress":"127.0.0.1:{management}","certificate":"{}","privateKey":"{}","httpPort":{http},"tlsPort":{tls_port},"ocspResponderURL":"","externalAccountBindingRequired":false,"certificateValidityPeriod":{}}}}}"#,
                leaf.display(),
                leaf_key.display(),
                validity.as_secs()
            ),
        )
        .unwrap();
        let mut p = Pebble {
            children: Vec::new(),
            directory: format!("https://127.0.0.1:{listen}/dir"),
            listener_ca: ca,
            management: SocketAddr::from(([127, 0, 0, 1], management)),
        };
        let dns_addr = format!("127.0.0.1:{dns}");
        p.children.push(spawn(
            "pebble-challtestsrv",
            &[
                "-defaultIPv4",
                "127.0.0.1",
                "-defaultIPv6",
                "",
                "-dns01",
                &dns_addr,
                "-http01",
                "",
                "-https01",
                "",
                "-tlsalpn01",
                "",
                "-management",
                &format!("127.0.0.1:{dns_mgmt}"),
            ],
            &[],
            &dir.join("challtestsrv.log"),
        ));
        wait_tcp(
            SocketAddr::from(([127, 0, 0, 1], dns_mgmt)),
            "pebble-challtestsrv",
            START,
        );
        p.children.push(spawn(
            "pebble",
            &["-config", config.to_str().unwrap(), "-dnsserver", &dns_addr],
            // No random validation delay, no nonces refused on purpose: the tests wait on
            // issuance, and pebble's defaults only make that slower.
            &[("PEBBLE_VA_NOSLEEP", "1"), ("PEBBLE_WFE_NONCEREJECT", "0")],
            &dir.join("pebble.log"),
        ));
        wait_tcp(
            SocketAddr::from(([127, 0, 0, 1], listen)),
            "pebble's ACME listener",
            START,
        );
        wait_tcp(p.management, "pebble's management listener", START);
        p
    }

    /// The flags of a server (either: the keys are shared) that listens for TLS on
    /// 127.0.0.1:`tls_port` and takes its certificate for `domain` from this pebble, keeping
    /// its ACME state in `state`.
    pub fn server_args(&self, tls_port: u16, domain: &str, state: &Path) -> Vec<String> {
        [
            "--tls-listen",
            &format!("127.0.0.1:{tls_port}"),
            "--acme-domain",
            domain,
            "--acme-directory",
            &self.directory,
            "--acme-ca-file",
            self.listener_ca.to_str().expect("a UTF-8 path"),
            "--acme-state-dir",
            state.to_str().expect("a UTF-8 path"),
        ]
        .map(String::from)
        .to_vec()
    }

    /// The root pebble issues under (regenerated at every start), from its management
    /// endpoint: what a client of the issued certificates trusts.
    pub fn issuing_root(&self) -> CertificateDer<'static> {
        let ca = CertificateDer::from_pem_file(&self.listener_ca).unwrap();
        let config = crate::tls::client_config(ca);
        let conn =
            ClientConnection::new(Arc::new(config), ServerName::try_from("127.0.0.1").unwrap())
                .unwrap();
        let tcp = TcpStream::connect(self.management).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut s = StreamOwned::new(conn, tcp);
        let (code, body) = crate::http::get_on(&mut s, "127.0.0.1", "/roots/0")
            .unwrap_or_else(|e| panic!("GET pebble's root: {e}"));
        assert_eq!(code, 200, "GET pebble's root: {body}");
        CertificateDer::from_pem_slice(body.as_bytes())
            .unwrap_or_else(|e| panic!("pebble's root is not PEM ({e}): {body}"))
    }
}
