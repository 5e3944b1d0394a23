//! deploy/container: the Containerfile builds with podman from the binaries
//! this workspace just built (laid out by deploy/container/build-context.sh,
//! as users do), and the image runs natkit-stun and natkit-turn with host
//! networking on loopback ports; `natkit stun` and `natkit turn` against
//! them succeed.
//!
//! No registry is reachable here: the image is FROM scratch and needs no
//! base. podman is pointed at runc with cgroupfs and no default ulimits
//! through a CONTAINERS_CONF file in a temp dir. The image and the
//! containers are removed on drop, whether the test passed or not.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use natkit_deploy_tests::net::{http_get, metric_value, wait_http_ok, PortBlock};
use natkit_deploy_tests::process::{run_with_timeout, Output};
use natkit_deploy_tests::relay::{creds, natkit_json, turn_check, START_LIMIT};
use natkit_deploy_tests::{bins, deploy_dir, TempDir};
use natkit_testkit::ready;

/// 21000-21099: this file's loopback ports.
const PORTS: PortBlock = PortBlock(21_000);
const PODMAN_LIMIT: Duration = Duration::from_secs(300);
const SECRET: &str = "container-test-secret";
/// Label on every container this test starts.
const LABEL: &str = "natkit-deploy-test";
/// The image this test builds (tagged with its PID).
const IMAGE_REPO: &str = "localhost/natkit-deploy-test";

/// podman with this test's CONTAINERS_CONF; removes what it made on drop.
struct Podman {
    conf: TempDir,
    image: String,
    containers: Vec<String>,
}

impl Podman {
    fn new() -> Podman {
        let conf = TempDir::new("natkit-deploy-podman");
        std::fs::write(
            conf.join("containers.conf"),
            "[containers]\ndefault_ulimits = []\n\n[engine]\nruntime = \"runc\"\ncgroup_manager = \"cgroupfs\"\n",
        )
        .unwrap();
        let p = Podman {
            conf,
            image: format!("{IMAGE_REPO}:{}", std::process::id()),
            containers: Vec::new(),
        };
        p.remove_leftovers();
        p
    }

    /// Containers and images of an earlier run that was killed before its
    /// Drop could run (they would hold this file's ports): found by this
    /// suite's label and image name only.
    fn remove_leftovers(&self) {
        let ps = self.cmd(&["ps", "-a", "-q", "--filter", &format!("label={LABEL}")]);
        for id in ps.stdout.split_whitespace() {
            let _ = self.cmd(&["rm", "-f", "-t", "0", id]);
        }
        let images = self.cmd(&[
            "images",
            "-q",
            "--filter",
            &format!("reference={IMAGE_REPO}"),
        ]);
        for id in images.stdout.split_whitespace() {
            let _ = self.cmd(&["rmi", "-f", id]);
        }
    }

    fn cmd(&self, args: &[&str]) -> Output {
        run_with_timeout(
            Command::new("podman")
                .env("CONTAINERS_CONF", self.conf.join("containers.conf"))
                .args(args),
            PODMAN_LIMIT,
        )
    }

    fn build(&self, context: &Path) {
        let file = deploy_dir().join("container/Containerfile");
        self.cmd(&[
            "build",
            "--pull=never",
            "-f",
            file.to_str().unwrap(),
            "-t",
            &self.image,
            context.to_str().unwrap(),
        ])
        .ok("podman build");
    }

    /// `podman run -d --network host [extra] IMAGE argv...`; its name.
    fn run(&mut self, name: &str, extra: &[&str], argv: &[&str]) -> String {
        let name = format!("natkit-deploy-test-{}-{name}", std::process::id());
        self.containers.push(name.clone());
        let mut args = vec![
            "run",
            "-d",
            "--pull=never",
            "--name",
            &name,
            "--label",
            LABEL,
            "--network",
            "host",
        ];
        args.extend_from_slice(extra);
        args.push(&self.image);
        args.extend_from_slice(argv);
        self.cmd(&args).ok("podman run");
        name
    }

    fn logs(&self, name: &str) -> String {
        let o = self.cmd(&["logs", name]);
        format!("{}{}", o.stdout, o.stderr)
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        for c in &self.containers {
            let _ = self.cmd(&["rm", "-f", "-t", "2", c]);
        }
        let _ = self.cmd(&["rmi", "-f", &self.image]);
    }
}

#[test]
fn image_builds_and_serves_stun_and_turn_on_loopback() {
    let ctx = TempDir::new("natkit-deploy-image");
    let out = run_with_timeout(
        Command::new("bash")
            .arg(deploy_dir().join("container/build-context.sh"))
            .arg(bins::dir())
            .arg(ctx.join("context")),
        PODMAN_LIMIT,
    );
    out.ok("build-context.sh");
    let mut podman = Podman::new();
    podman.build(&ctx.join("context"));

    // What the image promises: a non-root user, the config volume, ports.
    let inspect = podman
        .cmd(&[
            "image",
            "inspect",
            &podman.image,
            "--format",
            "{{.Config.User}}|{{.Config.Volumes}}|{{.Config.ExposedPorts}}",
        ])
        .ok("podman image inspect");
    let fields: Vec<&str> = inspect.stdout.trim().split('|').collect();
    assert!(
        !fields[0].is_empty() && !fields[0].starts_with("0") && !fields[0].starts_with("root"),
        "{inspect:?}"
    );
    assert!(fields[1].contains("/etc/natkit"), "{inspect:?}");
    assert!(fields[2].contains("3478/udp"), "{inspect:?}");

    // natkit-stun, from flags.
    let (stun, stun_metrics) = (PORTS.addr(0), PORTS.addr(1));
    let stun_name = podman.run(
        "stun",
        &[],
        &[
            "natkit-stun",
            "--listen",
            &stun.to_string(),
            "--metrics",
            &stun_metrics.to_string(),
            "--threads",
            "1",
        ],
    );
    // natkit-turn, from a config file on the /etc/natkit volume, read by the
    // image's non-root user.
    let (turn, turn_metrics) = (PORTS.addr(2), PORTS.addr(3));
    let conf = TempDir::new("natkit-deploy-turnconf");
    std::fs::write(
        conf.join("turn.toml"),
        format!(
            "listen = [\"{turn}\"]\nrelay-ip = [\"127.0.0.1\"]\nmin-port = {}\nmax-port = {}\n\
             auth-secret = [\"{SECRET}\"]\nmetrics = \"{turn_metrics}\"\nthreads = 1\n",
            PORTS.port(50),
            PORTS.port(69)
        ),
    )
    .unwrap();
    set_mode(conf.path(), 0o755);
    set_mode(&conf.join("turn.toml"), 0o644);
    let volume = format!("{}:/etc/natkit:ro", conf.path().display());
    let turn_name = podman.run(
        "turn",
        &["-v", &volume],
        &["natkit-turn", "--config", "/etc/natkit/turn.toml"],
    );

    for (name, listen, m) in [
        (&stun_name, stun, stun_metrics),
        (&turn_name, turn, turn_metrics),
    ] {
        let up = std::panic::catch_unwind(|| {
            ready::wait_binding_at(name, listen, START_LIMIT);
            wait_http_ok(m, "/metrics", START_LIMIT);
        });
        if up.is_err() {
            panic!("{name} did not come up; its log:\n{}", podman.logs(name));
        }
    }

    // The processes run as the image's user, not root.
    let top = podman
        .cmd(&["top", &turn_name, "user", "comm"])
        .ok("podman top");
    assert!(
        top.stdout
            .lines()
            .skip(1)
            .all(|l| !l.trim_start().starts_with("root")),
        "{}",
        top.stdout
    );

    // What the readiness probe counted, then the client's one request.
    let udp_success = r#"natkit_stun_messages_total{outcome="success",transport="udp"}"#;
    let (_, body) = http_get(stun_metrics, "/metrics").unwrap();
    let probes = metric_value(&body, udp_success).unwrap_or(0.0);
    let (ok, v, stderr) = natkit_json(&["stun", &stun.to_string()]);
    assert!(ok, "natkit stun failed: {v} {stderr}");
    assert_eq!(v["answered_from"], stun.to_string(), "{v:#}");
    let (_, body) = http_get(stun_metrics, "/metrics").unwrap();
    assert_eq!(
        metric_value(&body, udp_success),
        Some(probes + 1.0),
        "the container's natkit-stun should have answered the client once:\n{body}"
    );

    let (user, pass) = creds(SECRET, "container");
    let report = turn_check(turn, &user, &pass, 3);
    let relayed = report["allocations"][0]["relayed"][0].as_str().unwrap();
    let port: u16 = relayed.rsplit(':').next().unwrap().parse().unwrap();
    assert!(
        (PORTS.port(50)..=PORTS.port(69)).contains(&port),
        "{relayed}"
    );
    let (_, body) = http_get(turn_metrics, "/metrics").unwrap();
    assert_eq!(
        metric_value(
            &body,
            r#"natkit_turn_allocation_attempts_total{outcome="success"}"#
        ),
        Some(2.0),
        "{body}"
    );
}

fn set_mode(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}
