//! deploy/prometheus and deploy/grafana against the real thing.
//!
//! - `promtool check rules` accepts the rules file.
//! - A real Prometheus, started by the test on loopback with its own config
//!   and storage in a temp dir (killed by PID at the end), scrapes a
//!   natkit-turn and a natkit-stun every second and evaluates the rules
//!   while clients allocate and relay. Through its HTTP API the test finds
//!   the allocation gauge at the value the client held, and the relayed
//!   bytes and allocation counts the clients caused, to the byte.
//! - Every rule evaluates without error, and every recording rule yields
//!   series, and every metric the rules name exists.
//! - Every PromQL expression of the Grafana dashboard runs without error
//!   against that Prometheus, and every metric it names has series there
//!   (so a misspelt metric cannot pass as an empty panel).

use std::collections::BTreeSet;
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use natkit_deploy_tests::net::{http_get, metric_value, url_encode, wait_http_ok, PortBlock};
use natkit_deploy_tests::process::{run, Proc};
use natkit_deploy_tests::relay::{natkit_json, turn_check, Turn, START_LIMIT};
use natkit_deploy_tests::{bins, deploy_dir, TempDir};
use natkit_testkit::ready;
use serde_json::Value;

/// 21200-21299: this file's loopback ports.
const PORTS: PortBlock = PortBlock(21_200);
/// How long Prometheus may take to show what the clients did.
const SEEN_LIMIT: Duration = Duration::from_secs(60);
const BENCH_ALLOCATIONS: u64 = 4;

fn rules_path() -> String {
    deploy_dir()
        .join("prometheus/natkit-rules.yml")
        .display()
        .to_string()
}

#[test]
fn promtool_accepts_the_rules() {
    let out = run(
        "promtool",
        &["check", "rules", &rules_path()],
        Duration::from_secs(60),
    )
    .ok("promtool check rules");
    assert!(out.stdout.contains("SUCCESS"), "{}", out.stdout);
}

/// A Prometheus on loopback; killed by PID on drop (its temp dir with it).
struct Prometheus {
    addr: SocketAddr,
    _proc: Proc,
    _dir: TempDir,
}

impl Prometheus {
    fn start(turn_metrics: SocketAddr, stun_metrics: SocketAddr) -> Prometheus {
        let dir = TempDir::new("natkit-deploy-prometheus");
        let addr = PORTS.addr(10);
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {rules}\n\
             scrape_configs:\n  \
               - job_name: natkit-turn\n    static_configs:\n      - targets: ['{turn_metrics}']\n  \
               - job_name: natkit-stun\n    static_configs:\n      - targets: ['{stun_metrics}']\n",
            rules = rules_path()
        );
        std::fs::write(dir.join("prometheus.yml"), config).unwrap();
        let mut cmd = Command::new("prometheus");
        cmd.arg(format!(
            "--config.file={}",
            dir.join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address={addr}"))
        .arg("--storage.tsdb.retention.time=1h");
        let proc = Proc::spawn("prometheus", &mut cmd, &dir.join("prometheus.log"));
        let p = Prometheus {
            addr,
            _proc: proc,
            _dir: dir,
        };
        wait_http_ok(addr, "/-/ready", START_LIMIT);
        p
    }

    /// GET an API path; the JSON, which must say status "success".
    fn api(&self, path: &str) -> Value {
        let (code, body) = http_get(self.addr, path).expect("Prometheus API");
        let v: Value =
            serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"));
        assert!(
            code == 200 && v["status"] == "success",
            "{path}: {code} {body}"
        );
        v
    }

    /// An instant query; its result vector (or scalar) as JSON.
    fn query(&self, promql: &str) -> Value {
        self.api(&format!("/api/v1/query?query={}", url_encode(promql)))["data"]["result"].clone()
    }

    /// The single value of an instant query, if it has exactly one series.
    fn value(&self, promql: &str) -> Option<f64> {
        let r = self.query(promql);
        let a = r.as_array()?;
        (a.len() == 1).then(|| a[0]["value"][1].as_str()?.parse().ok())?
    }

    /// Waits until `promql` has the single value `want`.
    fn wait_value(&self, promql: &str, want: f64) {
        let end = Instant::now() + SEEN_LIMIT;
        let mut last = None;
        while Instant::now() < end {
            last = self.value(promql);
            if last == Some(want) {
                return;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        panic!(
            "{promql}: want {want}, last {last:?} ({})",
            self.query(promql)
        );
    }
}

/// The dashboard's PromQL expressions with Grafana's variables replaced the
/// way Grafana does for "All" (`.*`) and a 1-minute rate interval.
fn dashboard_queries() -> Vec<String> {
    let path = deploy_dir().join("grafana/natkit.json");
    let d: Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).expect("dashboard JSON");
    let mut out = Vec::new();
    fn walk(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                if let Some(Value::String(e)) = m.get("expr") {
                    out.push(e.clone());
                }
                m.values().for_each(|x| walk(x, out));
            }
            Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
            _ => {}
        }
    }
    walk(&d["panels"], &mut out);
    // Template variables: label_values(QUERY, label) is Grafana's; its
    // QUERY is PromQL.
    for var in d["templating"]["list"].as_array().unwrap() {
        if let Some(q) = var["definition"].as_str() {
            let inner = q
                .strip_prefix("label_values(")
                .and_then(|r| r.rsplit_once(','))
                .map(|(q, _)| q.to_string())
                .unwrap_or_else(|| panic!("unexpected variable query {q}"));
            out.push(inner);
        }
    }
    assert!(
        out.len() >= 10,
        "only {} expressions in the dashboard",
        out.len()
    );
    out.iter()
        .map(|e| {
            e.replace("$__rate_interval", "1m")
                .replace("$__interval", "15s")
                .replace("${turn_instance}", ".*")
                .replace("$turn_instance", ".*")
                .replace("${stun_instance}", ".*")
                .replace("$stun_instance", ".*")
        })
        .collect()
}

/// Metric names (natkit_* and recording rules natkit:*) in an expression.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let b = expr.as_bytes();
    let mut i = 0;
    while let Some(off) = expr[i..].find("natkit") {
        let start = i + off;
        let mut end = start;
        while end < b.len() && (b[end].is_ascii_alphanumeric() || b[end] == b'_' || b[end] == b':')
        {
            end += 1;
        }
        let before_ok = start == 0
            || !(b[start - 1].is_ascii_alphanumeric()
                || b[start - 1] == b'_'
                || b[start - 1] == b'"'
                || b[start - 1] == b'-');
        let token = &expr[start..end];
        if before_ok && (token.starts_with("natkit_") || token.starts_with("natkit:")) {
            names.insert(token.to_string());
        }
        i = end.max(start + 1);
    }
    names
}

#[test]
fn prometheus_scrapes_what_clients_do_and_the_dashboard_queries_run() {
    let logs = TempDir::new("natkit-deploy-observability");
    let (turn_listen, turn_metrics) = (PORTS.addr(0), PORTS.addr(1));
    let (stun_listen, stun_metrics) = (PORTS.addr(2), PORTS.addr(3));
    let mut turn = Turn::start(
        turn_listen,
        turn_metrics,
        (PORTS.port(50), PORTS.port(79)),
        &["--user", "bench:bench-pass", "--user", "alice:alice-pass"],
        &logs.join("turn.log"),
    );
    let mut stun = Proc::spawn(
        "natkit-stun",
        Command::new(bins::path("natkit-stun")).args([
            "--listen",
            &stun_listen.to_string(),
            "--metrics",
            &stun_metrics.to_string(),
            "--threads",
            "1",
        ]),
        &logs.join("stun.log"),
    );
    ready::wait_binding(stun.child(), "natkit-stun", stun_listen, START_LIMIT);
    ready::wait_binding_tcp(stun.child(), "natkit-stun", stun_listen, START_LIMIT);
    wait_http_ok(stun_metrics, "/metrics", START_LIMIT);
    // What the readiness probes counted, before any client.
    let stun_udp_success = r#"natkit_stun_messages_total{outcome="success",transport="udp"}"#;
    let (_, body) = http_get(stun_metrics, "/metrics").expect("natkit-stun's metrics");
    let probes = metric_value(&body, stun_udp_success).unwrap_or(0.0);
    let prom = Prometheus::start(turn_metrics, stun_metrics);
    prom.wait_value(r#"up{job="natkit-turn"}"#, 1.0);
    prom.wait_value(r#"up{job="natkit-stun"}"#, 1.0);

    // A client holds 4 allocations (2 pairs, each with a channel) for 8 s;
    // Prometheus sees the gauge at 4...
    let server = turn_listen.to_string();
    let allocations = BENCH_ALLOCATIONS.to_string();
    let mut bench = Proc::spawn(
        "natkit bench turn",
        Command::new(bins::path("natkit")).args([
            "bench",
            "turn",
            &server,
            "--user",
            "bench",
            "--password",
            "bench-pass",
            "--allocations",
            &allocations,
            "--peer-mode",
            "relay",
            "--hold",
            "8s",
        ]),
        &logs.join("bench.log"),
    );
    prom.wait_value(
        r#"natkit_turn_allocations{job="natkit-turn"}"#,
        BENCH_ALLOCATIONS as f64,
    );
    // ...while another relays 20 round trips over UDP and 5 over TCP, 100
    // bytes each, A -> B -> A: 2 x 100 bytes per round trip in each direction.
    turn_check(turn_listen, "alice", "alice-pass", 20);
    let (ok, v, stderr) = natkit_json(&[
        "turn",
        &server,
        "--user",
        "alice",
        "--password",
        "alice-pass",
        "--transport",
        "tcp",
        "--count",
        "5",
    ]);
    assert!(ok, "natkit turn over TCP: {v:#} {stderr}");
    // A STUN client, and a TCP connection to natkit-stun.
    let (ok, v, stderr) = natkit_json(&["stun", &stun_listen.to_string()]);
    assert!(ok, "natkit stun: {v} {stderr}");
    drop(TcpStream::connect(stun_listen).expect("TCP to natkit-stun"));

    let bytes = 2.0 * 100.0 * (20.0 + 5.0);
    prom.wait_value(
        r#"natkit_turn_relayed_bytes_total{job="natkit-turn",direction="to_peer"}"#,
        bytes,
    );
    prom.wait_value(
        r#"natkit_turn_relayed_bytes_total{job="natkit-turn",direction="to_client"}"#,
        bytes,
    );
    prom.wait_value(
        r#"natkit_turn_allocation_attempts_total{job="natkit-turn",outcome="success"}"#,
        (BENCH_ALLOCATIONS + 2 + 2) as f64,
    );
    // The hold ends: the bench deletes its allocations.
    let status = bench.wait(Duration::from_secs(60));
    assert!(status.success(), "natkit bench turn: {status}");
    prom.wait_value(r#"natkit_turn_allocations{job="natkit-turn"}"#, 0.0);
    prom.wait_value(
        r#"natkit_turn_allocations_closed_total{job="natkit-turn"}"#,
        (BENCH_ALLOCATIONS + 2 + 2) as f64,
    );
    // The STUN client's one Binding request, after the readiness probes'.
    prom.wait_value(
        r#"natkit_stun_messages_total{job="natkit-stun",transport="udp",outcome="success"}"#,
        probes + 1.0,
    );
    // The recording rules see it too.
    let end = Instant::now() + SEEN_LIMIT;
    while prom
        .value(r#"sum(natkit:turn_relayed_bytes:rate1m{direction="to_peer"})"#)
        .unwrap_or(0.0)
        <= 0.0
    {
        assert!(
            Instant::now() < end,
            "natkit:turn_relayed_bytes:rate1m stayed 0"
        );
        std::thread::sleep(Duration::from_millis(250));
    }

    // Every rule evaluated, none with an error; every recording rule has series.
    let rules = prom.api("/api/v1/rules");
    let mut count = 0;
    for g in rules["data"]["groups"].as_array().unwrap() {
        for r in g["rules"].as_array().unwrap() {
            count += 1;
            assert_eq!(
                r["health"], "ok",
                "rule {} failed: {}",
                r["name"], r["lastError"]
            );
            if r["type"] == "recording" {
                let name = r["name"].as_str().unwrap();
                let end = Instant::now() + SEEN_LIMIT;
                while prom.query(name).as_array().map_or(true, |a| a.is_empty()) {
                    assert!(
                        Instant::now() < end,
                        "recording rule {name} yields no series"
                    );
                    std::thread::sleep(Duration::from_millis(250));
                }
            }
        }
    }
    assert!(count >= 10, "only {count} rules loaded");

    // The dashboard.
    let names: BTreeSet<String> = prom.api("/api/v1/label/__name__/values")["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap().to_string())
        .collect();
    let rules_text = std::fs::read_to_string(rules_path()).unwrap();
    for m in metric_names(&rules_text) {
        assert!(
            names.contains(&m),
            "the rules use {m}, which Prometheus has no series of"
        );
    }
    for q in dashboard_queries() {
        prom.query(&q); // panics unless status is success
        for m in metric_names(&q) {
            assert!(
                names.contains(&m),
                "dashboard query {q:?} uses {m}, which Prometheus has no series of"
            );
        }
    }

    turn.stop();
}
