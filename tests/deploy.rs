//! The Kubernetes manifests: valid for the API (kubernetes-validate --strict, offline
//! schemas), consistent with the agent (its config parses, probes hit its endpoints).
//!
//! `cargo test -p agent --test deploy` (no root needed). kubernetes-validate comes from the
//! test venv (`KSPAN_SETUP_TEST=1 scripts/setup`).
use std::{path::PathBuf, process::Command};

mod common;

use common::{cache_file, venv_bin, KSPAN};

const K8S_VERSION: &str = "1.30.0";

fn deploy_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes")
}

fn validate(file: &std::path::Path) -> (bool, String) {
    let out = Command::new(venv_bin("kubernetes-validate"))
        .args(["--strict", "-k", K8S_VERSION])
        .arg(file)
        .output()
        .expect("kubernetes-validate");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

fn manifests() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(deploy_dir())
        .expect("deploy/kubernetes")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    v.sort();
    v
}

fn docs(file: &std::path::Path) -> Vec<serde_norway::Value> {
    let text = std::fs::read_to_string(file).unwrap();
    text.split("\n---\n")
        .map(|d| serde_norway::from_str(d).unwrap_or_else(|e| panic!("{}: {e}", file.display())))
        .collect()
}

#[test]
fn every_manifest_validates_strictly() {
    let files = manifests();
    assert!(files.len() >= 6, "{files:?}");
    for f in &files {
        let (ok, text) = validate(f);
        assert!(ok, "{}: {text}", f.display());
    }
    // Strict mode catches an unknown field (so the pass above means something).
    let bad = std::env::temp_dir().join(format!("kspan-bad-ds-{}.yaml", std::process::id()));
    let ds = std::fs::read_to_string(deploy_dir().join("daemonset.yaml")).unwrap();
    std::fs::write(
        &bad,
        ds.replace("hostPID: true", "hostPID: true\n      hostPIDs: true"),
    )
    .unwrap();
    let (ok, text) = validate(&bad);
    assert!(!ok && text.contains("hostPIDs"), "{text}");
    let _ = std::fs::remove_file(bad);
}

#[test]
fn the_configmap_is_a_valid_agent_config() {
    let cm = &docs(&deploy_dir().join("configmap.yaml"))[0];
    let text = cm["data"]["kspan.yaml"].as_str().expect("data.kspan.yaml");
    let f = std::env::temp_dir().join(format!("kspan-cm-{}.yaml", std::process::id()));
    std::fs::write(&f, text).unwrap();
    let out = Command::new(KSPAN)
        .args(["run", "--print-config", "--config"])
        .arg(&f)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&f);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(printed.contains("addr: 0.0.0.0:9464"), "{printed}");
    assert!(
        printed.contains("target_spans_per_second: 200"),
        "{printed}"
    );
}

/// `sampling.budget.state_file` of the ConfigMap's config.
fn configmap_state_file() -> String {
    let cm = &docs(&deploy_dir().join("configmap.yaml"))[0];
    let text = cm["data"]["kspan.yaml"].as_str().expect("data.kspan.yaml");
    let cfg: serde_norway::Value = serde_norway::from_str(text).unwrap();
    cfg["sampling"]["budget"]["state_file"]
        .as_str()
        .expect("the ConfigMap keeps the budget's state")
        .to_string()
}

#[test]
fn daemonsets_match_the_agent() {
    for name in ["daemonset.yaml", "daemonset-privileged.yaml"] {
        let ds = &docs(&deploy_dir().join(name))[0];
        let spec = &ds["spec"]["template"]["spec"];
        assert_eq!(spec["hostPID"].as_bool(), Some(true), "{name}");
        let c = &spec["containers"][0];
        assert_eq!(c["args"][0].as_str(), Some("run"));
        assert_eq!(c["ports"][0]["containerPort"].as_u64(), Some(9464));
        assert_eq!(
            c["livenessProbe"]["httpGet"]["path"].as_str(),
            Some("/healthz")
        );
        assert_eq!(
            c["readinessProbe"]["httpGet"]["path"].as_str(),
            Some("/readyz")
        );
        let env = c["env"].as_sequence().unwrap();
        assert!(env.iter().any(|e| e["name"].as_str() == Some("NODE_NAME")
            && e["valueFrom"]["fieldRef"]["fieldPath"].as_str() == Some("spec.nodeName")));
        let mounts: Vec<&str> = c["volumeMounts"]
            .as_sequence()
            .unwrap()
            .iter()
            .filter_map(|m| m["mountPath"].as_str())
            .collect();
        for m in [
            "/sys/kernel/tracing",
            "/sys/kernel/btf",
            "/sys/fs/bpf",
            "/etc/kspan",
        ] {
            assert!(mounts.contains(&m), "{name}: {m} not mounted");
        }
        // The budget's state file is on a writable host mount (the root filesystem is
        // read-only), so its spend survives restarts.
        let state_dir = std::path::Path::new(&configmap_state_file())
            .parent()
            .unwrap()
            .to_str()
            .unwrap()
            .to_string();
        let state_mount = c["volumeMounts"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|m| m["mountPath"].as_str() == Some(state_dir.as_str()))
            .unwrap_or_else(|| panic!("{name}: {state_dir} not mounted"));
        assert_ne!(state_mount["readOnly"].as_bool(), Some(true), "{name}");
        let vol = spec["volumes"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|v| v["name"] == state_mount["name"])
            .unwrap();
        assert_eq!(vol["hostPath"]["path"].as_str(), Some(state_dir.as_str()));
        assert_eq!(
            c["securityContext"]["readOnlyRootFilesystem"].as_bool(),
            Some(true)
        );
        assert_eq!(spec["tolerations"][0]["operator"].as_str(), Some("Exists"));
    }
    let ds = &docs(&deploy_dir().join("daemonset.yaml"))[0];
    let sc = &ds["spec"]["template"]["spec"]["containers"][0]["securityContext"];
    assert_eq!(sc["privileged"].as_bool(), Some(false));
    let caps: Vec<&str> = sc["capabilities"]["add"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(|c| c.as_str())
        .collect();
    assert!(
        caps.contains(&"BPF") && caps.contains(&"PERFMON"),
        "{caps:?}"
    );
}

// ---- The Helm chart (deploy/helm/kspan) ----

fn chart_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/helm/kspan")
}

/// helm from the test cache (`KSPAN_SETUP_TEST=1 scripts/setup` installs it).
fn helm() -> String {
    cache_file("bin/helm")
}

/// `helm template kspan CHART -n kspan ARGS...`: (success, stdout, stderr).
fn helm_template(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(helm())
        .args(["template", "kspan"])
        .arg(chart_dir())
        .args(["--namespace", "kspan"])
        .args(args)
        .output()
        .expect("helm");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn rendered_docs(text: &str) -> Vec<serde_norway::Value> {
    text.split("\n---\n")
        .filter(|d| {
            d.lines()
                .any(|l| !l.trim().is_empty() && !l.starts_with('#'))
        })
        .map(|d| serde_norway::from_str(d).unwrap_or_else(|e| panic!("{e}: {d}")))
        .collect()
}

fn of_kind<'a>(docs: &'a [serde_norway::Value], kind: &str) -> &'a serde_norway::Value {
    docs.iter()
        .find(|d| d["kind"].as_str() == Some(kind))
        .unwrap_or_else(|| panic!("no {kind}"))
}

#[test]
fn chart_lints_strictly_and_names_the_agent_version() {
    let out = Command::new(helm())
        .args(["lint", "--strict"])
        .arg(chart_dir())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let chart: serde_norway::Value =
        serde_norway::from_str(&std::fs::read_to_string(chart_dir().join("Chart.yaml")).unwrap())
            .unwrap();
    assert_eq!(
        chart["appVersion"].as_str(),
        Some(env!("CARGO_PKG_VERSION"))
    );
}

/// Every profile (and the optional objects) renders to objects the Kubernetes API accepts,
/// checked offline with kubernetes-validate --strict; the ConfigMap is a config the agent
/// accepts; the DaemonSet differs between the profiles only where it should.
#[test]
fn chart_renders_valid_objects_for_each_profile() {
    let dir = std::env::temp_dir().join(format!("kspan-helm-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cases: [(&str, &[&str]); 3] = [
        ("default", &[]),
        ("privileged", &["--set", "securityProfile=privileged"]),
        (
            "everything",
            &[
                "--set",
                "priorityClassName=system-node-critical",
                "--set",
                "nodeSelector.kubernetes\\.io/os=linux",
                "--set",
                "exporter.existingSecret=otlp-credentials",
                "--set",
                "exporter.endpoint=",
                "--set",
                "extraEnv[0].name=OTEL_RESOURCE_ATTRIBUTES",
                "--set",
                "extraEnv[0].value=deployment.environment=prod",
                "--set",
                "serviceMonitor.enabled=true",
                "--set",
                "metricsPort=9555",
                "--set",
                "config.http.ignore_ports[0]=10250",
            ],
        ),
    ];
    for (name, args) in cases {
        let (ok, text, err) = helm_template(args);
        assert!(ok, "{name}: {err}");
        let docs = rendered_docs(&text);
        for (i, d) in docs.iter().enumerate() {
            // The Prometheus Operator's CRD has no schema in kubernetes-validate.
            if d["kind"].as_str() == Some("ServiceMonitor") {
                continue;
            }
            let f = dir.join(format!("{name}-{i}.yaml"));
            std::fs::write(&f, serde_norway::to_string(d).unwrap()).unwrap();
            let (valid, out) = validate(&f);
            assert!(
                valid,
                "{name} #{i} {}: {out}",
                d["kind"].as_str().unwrap_or("?")
            );
        }
        // The rendered ConfigMap is a config the agent accepts.
        let cm = of_kind(&docs, "ConfigMap");
        let cfg = dir.join(format!("{name}-kspan.yaml"));
        std::fs::write(&cfg, cm["data"]["kspan.yaml"].as_str().unwrap()).unwrap();
        let out = Command::new(KSPAN)
            .args(["run", "--print-config", "--config"])
            .arg(&cfg)
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let printed = String::from_utf8_lossy(&out.stdout);
        let ds = of_kind(&docs, "DaemonSet");
        let c = &ds["spec"]["template"]["spec"]["containers"][0];
        let sc = &c["securityContext"];
        match name {
            "privileged" => {
                assert_eq!(sc["privileged"].as_bool(), Some(true));
                assert!(sc["capabilities"].is_null());
            }
            _ => {
                assert_eq!(sc["privileged"].as_bool(), Some(false));
                assert_eq!(sc["capabilities"]["drop"][0].as_str(), Some("ALL"));
            }
        }
        if name == "everything" {
            let spec = &ds["spec"]["template"]["spec"];
            assert_eq!(
                spec["priorityClassName"].as_str(),
                Some("system-node-critical")
            );
            assert_eq!(
                spec["nodeSelector"]["kubernetes.io/os"].as_str(),
                Some("linux")
            );
            assert_eq!(
                c["envFrom"][0]["secretRef"]["name"].as_str(),
                Some("otlp-credentials")
            );
            assert!(c["env"]
                .as_sequence()
                .unwrap()
                .iter()
                .any(|e| e["name"].as_str() == Some("OTEL_RESOURCE_ATTRIBUTES")));
            // Request-span settings reach the agent.
            let printed_cfg: serde_norway::Value = serde_norway::from_str(&printed).unwrap();
            assert_eq!(
                printed_cfg["http"]["ignore_ports"][0].as_u64(),
                Some(10250),
                "{printed}"
            );
            // The endpoint comes from the Secret's variables: none in the config.
            assert!(printed.contains("addr: 0.0.0.0:9555"), "{printed}");
            assert!(!text.contains("otel-collector.observability"), "{text}");
            assert_eq!(c["ports"][0]["containerPort"].as_u64(), Some(9555));
            let sm = of_kind(&docs, "ServiceMonitor");
            assert_eq!(sm["spec"]["endpoints"][0]["port"].as_str(), Some("metrics"));
            let svc = of_kind(&docs, "Service");
            assert_eq!(
                svc["spec"]["selector"],
                ds["spec"]["selector"]["matchLabels"]
            );
            assert_eq!(
                ds["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"].as_str(),
                Some("9555")
            );
        } else {
            assert!(
                printed.contains("endpoint: http://otel-collector.observability:4317"),
                "{printed}"
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A wrong value is refused by the schema, naming the key.
#[test]
fn chart_refuses_bad_values() {
    for (set, key) in [
        ("securityProfile=root", "securityProfile"),
        ("exporter.protocol=kafka", "protocol"),
        ("exporter.endpoint=collector:4317", "endpoint"),
        ("metricsPort=70000", "metricsPort"),
        ("logLevel=loud", "logLevel"),
        ("sampler.rate=5", "sampler"),
        ("config.exporterr.kind=otlp", "exporterr"),
    ] {
        let (ok, _, err) = helm_template(&["--set", set]);
        assert!(!ok, "{set} accepted");
        assert!(err.contains(key), "{set}: {err}");
    }
}

/// The plain manifests in deploy/kubernetes are the chart rendered (scripts/manifests): one
/// source, so they cannot drift apart.
#[test]
fn plain_manifests_are_the_chart_rendered() {
    let out = Command::new(format!(
        "{}/../scripts/manifests",
        env!("CARGO_MANIFEST_DIR")
    ))
    .arg("--check")
    .env("HELM", helm())
    .output()
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
