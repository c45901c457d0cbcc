//! The Kubernetes manifests: valid for the API (kubernetes-validate --strict, offline
//! schemas), consistent with the agent (its config parses, probes hit its endpoints).
//!
//! `cargo test -p agent --test deploy` (no root needed). kubernetes-validate comes from the
//! test venv (`KSPAN_SETUP_TEST=1 scripts/setup`).
use std::{path::PathBuf, process::Command};

mod common;

use common::{venv_bin, KSPAN};

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
