//! deploy/kubernetes: `kubectl kustomize` renders the base and every overlay;
//! the rendered objects validate against the Kubernetes schemas with
//! `kubernetes-validate --strict`; and the wiring holds together.
//!
//! kubernetes-validate ships schemas for built-in kinds only: for the
//! Prometheus Operator's PodMonitor and ServiceMonitor (CRDs) it prints a
//! "Couldn't find schema" warning and skips them. The test accepts that
//! warning for monitoring.coreos.com kinds only (any other warning or error
//! fails) and checks those objects itself: their selectors must match a
//! workload's pods (or a Service that does) and the port they scrape must
//! exist by name.
//!
//! Also checked: terminationGracePeriodSeconds and liveness outlast the
//! TURN drain in the ConfigMap; readiness and liveness probe /healthz on the
//! metrics port; the REST secrets come from a Secret mounted as the file
//! `auth-secret-file` names (so a rotation can list two); each workload has
//! a PodDisruptionBudget; the no-host-network Service lists every relay
//! port; and each ConfigMap's config passes `--check-config` with the
//! environment and the volumes the workload gives it.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use natkit_deploy_tests::process::{run, run_with_timeout};
use natkit_deploy_tests::{bins, deploy_dir, TempDir};
use serde_json::Value;

const LIMIT: Duration = Duration::from_secs(120);

/// `kubectl kustomize DIR`, as YAML and as a list of objects.
fn render(dir: &str) -> (String, Vec<Value>) {
    let path = deploy_dir().join("kubernetes").join(dir);
    let out = run("kubectl", &["kustomize", path.to_str().unwrap()], LIMIT).ok("kubectl kustomize");
    // YAML to JSON with PyYAML, which kubernetes-validate depends on.
    let tmp = TempDir::new("natkit-deploy-k8s");
    std::fs::write(tmp.join("rendered.yaml"), &out.stdout).unwrap();
    let json = run(
        "python3",
        &[
            "-c",
            "import json, sys, yaml; print(json.dumps([d for d in yaml.safe_load_all(open(sys.argv[1])) if d]))",
            tmp.join("rendered.yaml").to_str().unwrap(),
        ],
        LIMIT,
    )
    .ok("YAML to JSON (python3 with PyYAML)");
    let objs: Vec<Value> = serde_json::from_str(&json.stdout).expect("JSON list");
    assert!(!objs.is_empty(), "{dir} rendered nothing");
    (out.stdout, objs)
}

fn validate(dir: &str, yaml: &str) {
    let tmp = TempDir::new("natkit-deploy-k8s-validate");
    let f = tmp.join(format!("{}.yaml", dir.replace('/', "-")));
    std::fs::write(&f, yaml).unwrap();
    let out = run_with_timeout(
        Command::new("kubernetes-validate")
            .args(["--strict", "--quiet"])
            .arg(&f),
        LIMIT,
    );
    let text = format!("{}{}", out.stdout, out.stderr);
    assert!(
        out.status.success(),
        "{dir}: kubernetes-validate failed:\n{text}"
    );
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let crd = line.starts_with("WARN")
            && line.contains("Couldn't find schema")
            && line.contains("monitoring.coreos.com/v1");
        assert!(crd, "{dir}: unexpected kubernetes-validate output: {line}");
    }
}

fn kind<'a>(objs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objs.iter().filter(|o| o["kind"] == kind).collect()
}

fn named<'a>(objs: &'a [Value], k: &str, name: &str) -> &'a Value {
    objs.iter()
        .find(|o| o["kind"] == k && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {k} {name}"))
}

/// Whether `selector` (a matchLabels map) selects `labels`.
fn selects(selector: &Value, labels: &Value) -> bool {
    selector
        .as_object()
        .is_some_and(|m| !m.is_empty() && m.iter().all(|(k, v)| &labels[k] == v))
}

/// The workload (Deployment or DaemonSet) named `name`.
fn workload<'a>(objs: &'a [Value], name: &str) -> &'a Value {
    objs.iter()
        .find(|o| {
            (o["kind"] == "Deployment" || o["kind"] == "DaemonSet") && o["metadata"]["name"] == name
        })
        .unwrap_or_else(|| panic!("no workload {name}"))
}

fn container(w: &Value) -> &Value {
    &w["spec"]["template"]["spec"]["containers"][0]
}

fn has_port(c: &Value, name: &str) -> Option<u64> {
    c["ports"].as_array()?.iter().find(|p| p["name"] == name)?["containerPort"].as_u64()
}

/// An integer key of a TOML text (`key = 30`).
fn toml_int(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once('=')?;
        (k.trim() == key).then(|| v.trim().parse().ok())?
    })
}

/// PodMonitor / ServiceMonitor: what kubernetes-validate cannot check.
fn check_monitors(objs: &[Value]) {
    let workloads: Vec<&Value> = objs
        .iter()
        .filter(|o| o["kind"] == "Deployment" || o["kind"] == "DaemonSet")
        .collect();
    for pm in kind(objs, "PodMonitor") {
        let sel = &pm["spec"]["selector"]["matchLabels"];
        let hits: Vec<_> = workloads
            .iter()
            .filter(|w| selects(sel, &w["spec"]["template"]["metadata"]["labels"]))
            .collect();
        assert!(
            !hits.is_empty(),
            "PodMonitor {} selects no pods",
            pm["metadata"]["name"]
        );
        for ep in pm["spec"]["podMetricsEndpoints"]
            .as_array()
            .expect("podMetricsEndpoints")
        {
            let port = ep["port"].as_str().expect("port name");
            for w in &hits {
                assert!(
                    has_port(container(w), port).is_some(),
                    "no port {port} in {}",
                    w["metadata"]["name"]
                );
            }
            assert_eq!(ep["path"], "/metrics");
        }
    }
    for sm in kind(objs, "ServiceMonitor") {
        let sel = &sm["spec"]["selector"]["matchLabels"];
        let svcs: Vec<_> = kind(objs, "Service")
            .into_iter()
            .filter(|s| selects(sel, &s["metadata"]["labels"]))
            .collect();
        assert!(
            !svcs.is_empty(),
            "ServiceMonitor {} selects no Service",
            sm["metadata"]["name"]
        );
        for ep in sm["spec"]["endpoints"].as_array().expect("endpoints") {
            let port = ep["port"].as_str().expect("port name");
            for s in &svcs {
                let sp = s["spec"]["ports"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|p| p["name"] == port)
                    .unwrap_or_else(|| {
                        panic!("Service {} has no port {port}", s["metadata"]["name"])
                    });
                let pods: Vec<_> = workloads
                    .iter()
                    .filter(|w| {
                        selects(
                            &s["spec"]["selector"],
                            &w["spec"]["template"]["metadata"]["labels"],
                        )
                    })
                    .collect();
                assert!(
                    !pods.is_empty(),
                    "Service {} selects no pods",
                    s["metadata"]["name"]
                );
                let target = sp["targetPort"].as_str().expect("named targetPort");
                assert!(pods
                    .iter()
                    .all(|w| has_port(container(w), target).is_some()));
            }
        }
    }
}

/// The probes, the drain, the Secret and the PDB of one workload.
fn check_workload(objs: &[Value], name: &str, config_key: &str) {
    let w = workload(objs, name);
    let pod = &w["spec"]["template"]["spec"];
    let c = container(w);
    let cm_name = pod["volumes"]
        .as_array()
        .and_then(|v| v.iter().find_map(|v| v["configMap"]["name"].as_str()))
        .expect("config from a ConfigMap volume");
    let cm = named(objs, "ConfigMap", cm_name);
    let toml = cm["data"][config_key]
        .as_str()
        .unwrap_or_else(|| panic!("{cm_name} lacks {config_key}"));
    let metrics = has_port(c, "metrics").expect("a port named metrics");
    for probe in ["readinessProbe", "livenessProbe"] {
        let p = &c[probe]["httpGet"];
        assert_eq!(p["path"], "/healthz", "{name} {probe}");
        assert_eq!(p["port"], "metrics", "{name} {probe}");
    }
    assert!(metrics > 0);
    if name == "natkit-turn" {
        // turn-relay/src/config.rs: drain-grace defaults to 30 s.
        let drain = toml_int(toml, "drain-grace").unwrap_or(30);
        let grace = pod["terminationGracePeriodSeconds"]
            .as_u64()
            .expect("terminationGracePeriodSeconds");
        assert!(
            grace > drain,
            "{name}: grace {grace} s must outlast drain-grace {drain} s"
        );
        let l = &c["livenessProbe"];
        let patience =
            l["periodSeconds"].as_u64().unwrap_or(10) * l["failureThreshold"].as_u64().unwrap_or(3);
        assert!(
            patience > drain,
            "{name}: liveness gives up after {patience} s, inside the {drain} s drain"
        );
        check_secret_file(w);
    }
    let labels = &w["spec"]["template"]["metadata"]["labels"];
    assert!(
        kind(objs, "PodDisruptionBudget")
            .iter()
            .any(|p| selects(&p["spec"]["selector"]["matchLabels"], labels)),
        "no PodDisruptionBudget for {name}"
    );
    check_config_in_pod(w, toml, config_key);
}

/// The volume named `name` of a workload's pod.
fn volume<'a>(w: &'a Value, name: &str) -> &'a Value {
    w["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .and_then(|v| v.iter().find(|v| v["name"] == name))
        .unwrap_or_else(|| panic!("no volume {name}"))
}

/// The files a Secret volume shows: its items' paths, or (without items)
/// nothing we can know from the manifest.
fn secret_files(vol: &Value) -> Vec<String> {
    vol["secret"]["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|i| i["path"].as_str().expect("item path").to_string())
        .collect()
}

/// natkit-turn's REST secrets: `NATKIT_TURN_AUTH_SECRET_FILE` names a file
/// of a Secret volume mounted without subPath (so kubelet updates it in
/// place), and no secret is in the environment (one variable cannot list
/// the old and the new secret of a rotation).
fn check_secret_file(w: &Value) {
    let c = container(w);
    let env = c["env"].as_array().expect("env");
    assert!(
        env.iter().all(|e| e["name"] != "NATKIT_TURN_AUTH_SECRET"),
        "a secret in the environment cannot be rotated: use the file"
    );
    let path = env
        .iter()
        .find(|e| e["name"] == "NATKIT_TURN_AUTH_SECRET_FILE")
        .and_then(|e| e["value"].as_str())
        .expect("NATKIT_TURN_AUTH_SECRET_FILE with a value");
    let mount = c["volumeMounts"]
        .as_array()
        .expect("volumeMounts")
        .iter()
        .find(|m| {
            let mp = m["mountPath"].as_str().unwrap().trim_end_matches('/');
            path.strip_prefix(mp).is_some_and(|r| r.starts_with('/'))
        })
        .unwrap_or_else(|| panic!("{path} is on no volume mount"));
    assert!(
        mount["subPath"].is_null(),
        "subPath mounts are never updated: {mount}"
    );
    let vol = volume(w, mount["name"].as_str().unwrap());
    assert!(
        vol["secret"]["secretName"].is_string(),
        "the auth-secret-file volume is a Secret: {vol}"
    );
    let rel = &path[mount["mountPath"]
        .as_str()
        .unwrap()
        .trim_end_matches('/')
        .len()
        + 1..];
    assert!(
        secret_files(vol).iter().any(|p| p == rel),
        "{path}: {rel} is not an item of {vol}"
    );
    let mode = vol["secret"]["defaultMode"].as_u64().unwrap_or(0o644);
    assert_eq!(
        mode & 0o007,
        0,
        "the secret file is readable by others: {mode:o}"
    );
    if mode & 0o077 != 0 {
        assert_eq!(
            w["spec"]["template"]["spec"]["securityContext"]["fsGroup"],
            w["spec"]["template"]["spec"]["securityContext"]["runAsGroup"],
            "group-readable secret: the fsGroup must be the process's group"
        );
    }
}

/// Runs the workload's command with `--check-config`, with its volumes in a
/// temp dir (the ConfigMap's config file, stand-in secrets in the Secret
/// volumes' files), and its environment, downward-API values replaced by
/// stand-ins (a documentation address, a CPU count).
fn check_config_in_pod(w: &Value, toml: &str, file: &str) {
    let c = container(w);
    let tmp = TempDir::new("natkit-deploy-k8s-config");
    // Mount path -> where it is in the temp dir.
    let mut mounts: Vec<(String, String)> = Vec::new();
    for (i, m) in c["volumeMounts"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        let mp = m["mountPath"]
            .as_str()
            .unwrap()
            .trim_end_matches('/')
            .to_string();
        let dir = tmp.join(format!("volume-{i}"));
        std::fs::create_dir_all(&dir).unwrap();
        let vol = volume(w, m["name"].as_str().unwrap());
        if vol["configMap"].is_object() {
            std::fs::write(dir.join(file), toml).unwrap();
        } else if vol["secret"].is_object() {
            for f in secret_files(vol) {
                std::fs::write(dir.join(&f), "k8s-test-secret\n").unwrap();
            }
        } else {
            panic!("volume {vol}: unknown kind");
        }
        mounts.push((mp, dir.display().to_string()));
    }
    // Longest mount path first, so nested mounts map to their own volume.
    mounts.sort_by_key(|(mp, _)| std::cmp::Reverse(mp.len()));
    let remap = |s: &str| -> String {
        for (mp, dir) in &mounts {
            if let Some(rest) = s.strip_prefix(mp.as_str()) {
                if rest.is_empty() || rest.starts_with('/') {
                    return format!("{dir}{rest}");
                }
            }
        }
        s.to_string()
    };
    let argv: Vec<String> = c["command"]
        .as_array()
        .expect("command")
        .iter()
        .map(|a| remap(a.as_str().unwrap()))
        .collect();
    let mut vars: Vec<(String, String)> = Vec::new();
    for e in c["env"].as_array().into_iter().flatten() {
        let name = e["name"].as_str().unwrap().to_string();
        let value = if let Some(v) = e["value"].as_str() {
            // Kubernetes expands $(VAR) from earlier variables; paths on
            // volumes move to the temp dir.
            remap(&vars.iter().fold(v.to_string(), |acc, (k, val)| {
                acc.replace(&format!("$({k})"), val)
            }))
        } else if e["valueFrom"]["fieldRef"].is_object() {
            "192.0.2.1".to_string()
        } else if e["valueFrom"]["secretKeyRef"].is_object() {
            "k8s-test-secret".to_string()
        } else if e["valueFrom"]["resourceFieldRef"].is_object() {
            "2".to_string()
        } else {
            panic!("env {name}: unknown source {e}");
        };
        vars.push((name, value));
    }
    let bin = bins::path(&argv[0]);
    let mut cmd = Command::new(&bin);
    cmd.args(&argv[1..])
        .arg("--check-config")
        .env_clear()
        .envs(vars.iter().map(|(k, v)| (k, v)));
    let out = run_with_timeout(&mut cmd, LIMIT);
    assert!(
        out.status.success(),
        "{} with {vars:?} and\n{toml}\nfails --check-config: {}",
        argv.join(" "),
        out.stderr
    );
}

fn check_all(dir: &str) -> Vec<Value> {
    let (yaml, objs) = render(dir);
    validate(dir, &yaml);
    check_monitors(&objs);
    check_workload(&objs, "natkit-turn", "turn.toml");
    check_workload(&objs, "natkit-stun", "stun.toml");
    for o in &objs {
        if o["kind"] != "Namespace" {
            assert_eq!(
                o["metadata"]["namespace"], "natkit",
                "{}",
                o["metadata"]["name"]
            );
        }
    }
    objs
}

fn assert_host_network_daemonset(objs: &[Value]) {
    let w = workload(objs, "natkit-turn");
    assert_eq!(w["kind"], "DaemonSet");
    assert_eq!(w["spec"]["template"]["spec"]["hostNetwork"], true);
}

#[test]
fn base_renders_and_validates() {
    let objs = check_all("base");
    assert_host_network_daemonset(&objs);
}

#[test]
fn production_overlay_renders_and_validates() {
    let objs = check_all("overlays/production");
    assert_host_network_daemonset(&objs);
    assert_eq!(kind(&objs, "PodMonitor").len(), 1);
    assert_eq!(kind(&objs, "ServiceMonitor").len(), 1);
    assert!(container(workload(&objs, "natkit-turn"))["image"]
        .as_str()
        .unwrap()
        .starts_with("registry.example.org/natkit:"));
}

#[test]
fn no_host_network_overlay_lists_every_relay_port() {
    let objs = check_all("overlays/no-host-network");
    let w = workload(&objs, "natkit-turn");
    assert_eq!(w["kind"], "Deployment");
    assert!(w["spec"]["template"]["spec"]["hostNetwork"] != true);
    assert!(kind(&objs, "DaemonSet").is_empty());
    assert_eq!(
        w["spec"]["replicas"], 1,
        "one relay per LoadBalancer Service"
    );
    let toml = named(&objs, "ConfigMap", "natkit-turn")["data"]["turn.toml"]
        .as_str()
        .unwrap();
    let (lo, hi) = (
        toml_int(toml, "min-port").unwrap(),
        toml_int(toml, "max-port").unwrap(),
    );
    assert!(hi - lo < 100, "keep the listed range small: {lo}-{hi}");
    let svc = named(&objs, "Service", "natkit-turn");
    assert_eq!(svc["spec"]["type"], "LoadBalancer");
    assert_eq!(svc["spec"]["externalTrafficPolicy"], "Local");
    let ports = svc["spec"]["ports"].as_array().unwrap();
    for p in lo..=hi {
        assert!(
            ports
                .iter()
                .any(|sp| sp["port"] == p && sp["targetPort"] == p && sp["protocol"] == "UDP"),
            "relay port {p} not in the Service"
        );
    }
    // The advertised address is the Service's.
    let ext = container(w)["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "NATKIT_TURN_EXTERNAL_IP")
        .expect("NATKIT_TURN_EXTERNAL_IP")["value"]
        .as_str()
        .unwrap();
    let lb = svc["spec"]["loadBalancerIP"]
        .as_str()
        .expect("loadBalancerIP");
    assert!(ext.starts_with(&format!("{lb}/")), "{ext} vs {lb}");
    let ns = named(&objs, "Namespace", "natkit");
    assert_eq!(
        ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"],
        "restricted"
    );
}

/// Every kustomization under deploy/kubernetes is rendered by one of the
/// tests above (a new overlay cannot go untested).
#[test]
fn every_overlay_is_tested() {
    let root = deploy_dir().join("kubernetes");
    let mut found = Vec::new();
    let mut stack = vec![root.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.file_name().is_some_and(|n| n == "kustomization.yaml") {
                let rel = p
                    .parent()
                    .unwrap()
                    .strip_prefix(&root)
                    .unwrap()
                    .to_path_buf();
                found.push(rel);
            }
        }
    }
    found.sort();
    let tested = [
        "base",
        "components/monitoring",
        "overlays/no-host-network",
        "overlays/production",
    ];
    let found: Vec<String> = found
        .iter()
        .map(|p| Path::new(p).display().to_string())
        .collect();
    assert_eq!(found, tested, "a kustomization without a test");
}
