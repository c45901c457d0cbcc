//! Per-process OpenTelemetry resources, read from `/proc/<pid>` once and cached.
//!
//! An entry is re-read when the event's comm differs from the cached one (exec, or a pid
//! reused by another program) and, after `REVALIDATE_AFTER`, when the process start time in
//! `/proc/<pid>/stat` changed (pid reused by the same program).
use std::{
    collections::{BTreeMap, HashMap},
    path::Path,
    sync::Arc,
    time::Duration,
};

use agent_common::COMM_LEN;
use opentelemetry::KeyValue;
use opentelemetry_sdk::{resource::ResourceDetector, Resource};

use crate::wire::comm_str;

/// How long a cached entry is trusted before its start time is checked again.
pub const REVALIDATE_AFTER: Duration = Duration::from_secs(30);
/// Cache capacity; when full, the cache is cleared (the next events re-read /proc).
pub const MAX_PROCESSES: usize = 8192;

/// A traced process's resource. `id` is unique per (process, generation): the export stage
/// groups spans by it.
#[derive(Debug)]
pub struct ProcResource {
    pub id: u64,
    pub pid: u32,
    pub service_name: String,
    pub resource: Resource,
}

/// What is read from /proc for one process.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ProcFacts {
    pub exe_path: Option<String>,
    pub command: Option<String>,
    pub otel_service_name: Option<String>,
    pub container_id: Option<String>,
    pub start_time: Option<u64>,
    pub owner_uid: Option<u32>,
}

impl ProcFacts {
    pub fn read(proc_root: &Path, pid: u32) -> ProcFacts {
        let dir = proc_root.join(pid.to_string());
        let exe_path = std::fs::read_link(dir.join("exe")).ok().map(|p| {
            p.to_string_lossy()
                .trim_end_matches(" (deleted)")
                .to_string()
        });
        let command = std::fs::read(dir.join("cmdline")).ok().and_then(|b| {
            let first = b.split(|&c| c == 0).next()?;
            (!first.is_empty()).then(|| String::from_utf8_lossy(first).into_owned())
        });
        let otel_service_name = std::fs::read(dir.join("environ"))
            .ok()
            .and_then(|b| env_value(&b, "OTEL_SERVICE_NAME"));
        let container_id = std::fs::read_to_string(dir.join("cgroup"))
            .ok()
            .and_then(|t| container_id_from_cgroup(&t));
        let start_time = start_time(&dir);
        let owner_uid = std::fs::metadata(&dir)
            .ok()
            .map(|m| std::os::unix::fs::MetadataExt::uid(&m));
        ProcFacts {
            exe_path,
            command,
            otel_service_name,
            container_id,
            start_time,
            owner_uid,
        }
    }
}

/// Field 22 of /proc/<pid>/stat (start time in clock ticks since boot).
fn start_time(dir: &Path) -> Option<u64> {
    let stat = std::fs::read_to_string(dir.join("stat")).ok()?;
    // The comm (field 2) may hold spaces and parentheses: split after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Value of `key` in a NUL-separated environment block.
pub fn env_value(environ: &[u8], key: &str) -> Option<String> {
    environ.split(|&c| c == 0).find_map(|kv| {
        let kv = std::str::from_utf8(kv).ok()?;
        let v = kv.strip_prefix(key)?.strip_prefix('=')?;
        (!v.is_empty()).then(|| v.to_string())
    })
}

/// The container id in a /proc/<pid>/cgroup file: a 64-hex-digit path segment, possibly
/// wrapped as systemd scopes do (`docker-<id>.scope`, `cri-containerd-<id>.scope`,
/// `crio-<id>.scope`, `libpod-<id>.scope`) or written bare (cgroupfs drivers:
/// `/docker/<id>`, `/kubepods/burstable/pod<uid>/<id>`). cgroup v1 and v2 lines alike.
pub fn container_id_from_cgroup(text: &str) -> Option<String> {
    for line in text.lines() {
        let path = line.splitn(3, ':').nth(2).unwrap_or(line);
        for seg in path.rsplit('/') {
            let s = seg.strip_suffix(".scope").unwrap_or(seg);
            let s = s.rsplit(['-', ':']).next().unwrap_or(s);
            if s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Some(s.to_ascii_lowercase());
            }
        }
    }
    None
}

/// Attributes shared by every resource: host, OS, `OTEL_RESOURCE_ATTRIBUTES`, config.
#[derive(Debug, Clone)]
pub struct HostResource {
    pub attributes: Vec<KeyValue>,
}

impl HostResource {
    pub fn detect(config_attributes: &BTreeMap<String, String>) -> HostResource {
        let mut attributes = vec![KeyValue::new("os.type", "linux")];
        if let Some(h) = hostname() {
            attributes.push(KeyValue::new("host.name", h));
        }
        // OTEL_RESOURCE_ATTRIBUTES describes where kspan runs, not the traced process's
        // identity: its service.name is not applied to traced processes.
        let env = opentelemetry_sdk::resource::EnvResourceDetector::new().detect();
        for (k, v) in env.iter() {
            if k.as_str() != "service.name" {
                attributes.push(KeyValue::new(k.clone(), v.clone()));
            }
        }
        for (k, v) in config_attributes {
            attributes.push(KeyValue::new(k.clone(), v.clone()));
        }
        HostResource { attributes }
    }
}

fn hostname() -> Option<String> {
    let h = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    let h = h.trim();
    (!h.is_empty()).then(|| h.to_string())
}

struct Entry {
    comm: [u8; COMM_LEN],
    start_time: Option<u64>,
    /// When it was last checked (`clock::coarse_ns`).
    checked: u64,
    res: Arc<ProcResource>,
    /// In a container whose pod was not known yet: look again on the next event.
    pod_pending: Option<String>,
}

/// Cache of resources by pid.
pub struct ProcessCache {
    proc_root: std::path::PathBuf,
    host: HostResource,
    service_names: BTreeMap<String, String>,
    entries: HashMap<u32, Entry>,
    pods: Option<Arc<crate::k8s::PodCache>>,
    next_id: u64,
    /// Times /proc was read (for tests and metrics).
    pub reads: u64,
    /// Processes forgotten because the cache was full (re-read from /proc when seen again;
    /// a process that exited meanwhile keeps only its pid and comm).
    pub evicted: u64,
}

impl ProcessCache {
    pub fn new(host: HostResource, service_names: BTreeMap<String, String>) -> ProcessCache {
        ProcessCache::with_proc_root("/proc".into(), host, service_names)
    }

    pub fn with_proc_root(
        proc_root: std::path::PathBuf,
        host: HostResource,
        service_names: BTreeMap<String, String>,
    ) -> ProcessCache {
        ProcessCache {
            proc_root,
            host,
            service_names,
            entries: HashMap::new(),
            pods: None,
            next_id: 1,
            reads: 0,
            evicted: 0,
        }
    }

    /// Processes cached now.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Adds Kubernetes pod metadata to processes in containers of known pods.
    pub fn with_pods(mut self, pods: Option<Arc<crate::k8s::PodCache>>) -> ProcessCache {
        self.pods = pods;
        self
    }

    /// The resource of `pid`, whose task had `comm` when the event happened. pid 0: the
    /// owner is unknown (e.g. a listener older than kspan).
    pub fn get(&mut self, pid: u32, comm: &[u8; COMM_LEN]) -> Arc<ProcResource> {
        let now = crate::clock::coarse_ns();
        if let Some(e) = self.entries.get_mut(&pid) {
            let pod_arrived = match (&e.pod_pending, &self.pods) {
                (Some(cid), Some(p)) => p.get(cid).is_some(),
                _ => false,
            };
            if e.comm == *comm && !pod_arrived {
                if now.saturating_sub(e.checked) < REVALIDATE_AFTER.as_nanos() as u64 {
                    return e.res.clone();
                }
                let st = start_time(&self.proc_root.join(pid.to_string()));
                if st.is_none() || st == e.start_time {
                    e.checked = now;
                    return e.res.clone();
                }
            }
        }
        if self.entries.len() >= MAX_PROCESSES {
            self.evicted += self.entries.len() as u64;
            self.entries.clear();
        }
        let facts = if pid == 0 {
            ProcFacts::default()
        } else {
            self.reads += 1;
            ProcFacts::read(&self.proc_root, pid)
        };
        let pod = match (&facts.container_id, &self.pods) {
            (Some(cid), Some(p)) => p.get(cid),
            _ => None,
        };
        let pod_pending = match (&pod, &self.pods) {
            (None, Some(_)) => facts.container_id.clone(),
            _ => None,
        };
        let res = Arc::new(self.build(pid, comm, &facts, pod.as_deref()));
        self.entries.insert(
            pid,
            Entry {
                comm: *comm,
                start_time: facts.start_time,
                checked: now,
                res: res.clone(),
                pod_pending,
            },
        );
        res
    }

    fn build(
        &mut self,
        pid: u32,
        comm: &[u8; COMM_LEN],
        f: &ProcFacts,
        pod: Option<&crate::k8s::PodMeta>,
    ) -> ProcResource {
        let comm = comm_str(comm);
        let exe_name = f
            .exe_path
            .as_deref()
            .and_then(|p| p.rsplit('/').next())
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .unwrap_or_else(|| comm.clone());
        let service_name = if pid == 0 {
            "unknown_service".to_string()
        } else {
            self.service_names
                .get(&exe_name)
                .or_else(|| self.service_names.get(&comm))
                .cloned()
                .or_else(|| f.otel_service_name.clone())
                .or_else(|| pod.and_then(|p| p.workload_name()).map(str::to_string))
                .unwrap_or_else(|| exe_name.clone())
        };
        let mut attrs = self.host.attributes.clone();
        attrs.push(KeyValue::new("service.name", service_name.clone()));
        if pid != 0 {
            attrs.push(KeyValue::new("process.pid", i64::from(pid)));
            attrs.push(KeyValue::new("process.executable.name", exe_name));
            if let Some(p) = &f.exe_path {
                attrs.push(KeyValue::new("process.executable.path", p.clone()));
            }
            if let Some(c) = &f.command {
                attrs.push(KeyValue::new("process.command", c.clone()));
            }
            if let Some(uid) = f.owner_uid {
                attrs.push(KeyValue::new("process.user.id", i64::from(uid)));
            }
            if let Some(c) = &f.container_id {
                attrs.push(KeyValue::new("container.id", c.clone()));
            }
            if let Some(p) = pod {
                attrs.extend(p.attributes());
            }
        }
        let id = self.next_id;
        self.next_id += 1;
        ProcResource {
            id,
            pid,
            service_name,
            resource: Resource::builder_empty().with_attributes(attrs).build(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn comm(s: &str) -> [u8; COMM_LEN] {
        let mut c = [0u8; COMM_LEN];
        c[..s.len()].copy_from_slice(s.as_bytes());
        c
    }

    #[test]
    fn container_ids_from_real_cgroup_paths() {
        let id = "7a1f0c0e5b8d4b7f9d0c2a1e3f4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f1a2b";
        let samples = [
            // cgroup v2, containerd with the systemd driver (kubelet default)
            format!("0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1b2c3d4e_5f6a_7b8c_9d0e_1f2a3b4c5d6e.slice/cri-containerd-{id}.scope\n"),
            // cgroup v2, CRI-O
            format!("0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod11111111_2222_3333_4444_555555555555.slice/crio-{id}.scope\n"),
            // cgroup v2, Docker with systemd
            format!("0::/system.slice/docker-{id}.scope\n"),
            // cgroup v1, Docker with cgroupfs
            format!("12:pids:/docker/{id}\n11:memory:/docker/{id}\n0::/\n"),
            // cgroup v1, kubelet with cgroupfs
            format!("4:cpu,cpuacct:/kubepods/burstable/pod1b2c3d4e-5f6a-7b8c-9d0e-1f2a3b4c5d6e/{id}\n"),
            // podman
            format!("0::/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{id}.scope/container\n"),
            // containerd cgroupfs v2 with a namespace prefix
            format!("0::/system.slice/containerd.service/kubepods-pod1.slice:cri-containerd:{id}\n"),
        ];
        for s in &samples {
            assert_eq!(container_id_from_cgroup(s).as_deref(), Some(id), "{s}");
        }
        for none in [
            "0::/user.slice/user-0.slice/session-3.scope\n",
            "0::/\n",
            "0::/system.slice/ssh.service\n",
        ] {
            assert_eq!(container_id_from_cgroup(none), None, "{none}");
        }
    }

    #[test]
    fn environ_values() {
        let env = b"PATH=/bin\0OTEL_SERVICE_NAME=checkout\0OTEL_SERVICE_NAMES=x\0";
        assert_eq!(
            env_value(env, "OTEL_SERVICE_NAME").as_deref(),
            Some("checkout")
        );
        assert_eq!(
            env_value(b"OTEL_SERVICE_NAME=\0", "OTEL_SERVICE_NAME"),
            None
        );
        assert_eq!(env_value(b"", "PATH"), None);
    }

    fn attr(r: &ProcResource, k: &str) -> Option<String> {
        r.resource
            .get(&opentelemetry::Key::from(k.to_string()))
            .map(|v| v.to_string())
    }

    #[test]
    fn own_process_resource_and_caching() {
        let host = HostResource {
            attributes: vec![KeyValue::new("host.name", "h1")],
        };
        let mut names = BTreeMap::new();
        names.insert("renamed".to_string(), "by-config".to_string());
        let mut cache = ProcessCache::new(host, names);
        let pid = std::process::id();
        let my_comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap();
        let c = comm(my_comm.trim());
        let r = cache.get(pid, &c);
        assert_eq!(
            attr(&r, "process.pid").as_deref(),
            Some(pid.to_string().as_str())
        );
        assert_eq!(attr(&r, "host.name").as_deref(), Some("h1"));
        let exe = std::env::current_exe().unwrap();
        assert_eq!(
            attr(&r, "process.executable.path").as_deref(),
            Some(exe.to_str().unwrap())
        );
        assert_eq!(r.service_name, exe.file_name().unwrap().to_str().unwrap());
        // Cached: same resource, no second read.
        let again = cache.get(pid, &c);
        assert_eq!(again.id, r.id);
        assert_eq!(cache.reads, 1);
        // A different comm (exec or pid reuse): read again, new id.
        let other = cache.get(pid, &comm("renamed"));
        assert_ne!(other.id, r.id);
        assert_eq!(cache.reads, 2);
        // Unknown owner.
        let unknown = cache.get(0, &[0; COMM_LEN]);
        assert_eq!(unknown.service_name, "unknown_service");
        assert_eq!(attr(&unknown, "process.pid"), None);
    }

    #[test]
    fn pod_metadata_joins_when_the_pod_is_known() {
        let dir = std::env::temp_dir().join(format!("kspan-pod-{}", std::process::id()));
        let p = dir.join("77");
        std::fs::create_dir_all(&p).unwrap();
        let id = "7a1f0c0e5b8d4b7f9d0c2a1e3f4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f1a2b";
        std::fs::write(
            p.join("cgroup"),
            format!("0::/kubepods.slice/kubepods-burstable.slice/cri-containerd-{id}.scope\n"),
        )
        .unwrap();
        let pods = Arc::new(crate::k8s::PodCache::default());
        let mut cache = ProcessCache::with_proc_root(
            dir.clone(),
            HostResource { attributes: vec![] },
            BTreeMap::new(),
        )
        .with_pods(Some(pods.clone()));
        // The pod is not known yet: container.id only.
        let r = cache.get(77, &comm("checkout"));
        assert_eq!(attr(&r, "container.id").as_deref(), Some(id));
        assert_eq!(attr(&r, "k8s.pod.name"), None);
        assert_eq!(r.service_name, "checkout");
        let list: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../tests/data/k8s/pods-node-1.json"
            ))
            .unwrap(),
        )
        .unwrap();
        let pod: k8s_openapi::api::core::v1::Pod =
            serde_json::from_value(list["items"][0].clone()).unwrap();
        pods.upsert(&pod);
        // Next event: rebuilt with the pod's attributes; service.name from the Deployment.
        let r2 = cache.get(77, &comm("checkout"));
        assert_ne!(r2.id, r.id);
        assert_eq!(
            attr(&r2, "k8s.pod.name").as_deref(),
            Some("checkout-7d9f8c6b5-x2k4p")
        );
        assert_eq!(
            attr(&r2, "k8s.deployment.name").as_deref(),
            Some("checkout")
        );
        assert_eq!(attr(&r2, "k8s.namespace.name").as_deref(), Some("shop"));
        assert_eq!(r2.service_name, "checkout");
        // And cached from then on.
        assert_eq!(cache.get(77, &comm("checkout")).id, r2.id);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn service_name_precedence() {
        let dir = std::env::temp_dir().join(format!("kspan-proc-{}", std::process::id()));
        let p = dir.join("42");
        std::fs::create_dir_all(&p).unwrap();
        std::fs::write(p.join("environ"), b"A=1\0OTEL_SERVICE_NAME=from-env\0").unwrap();
        std::fs::write(p.join("cmdline"), b"/usr/bin/app\0--flag\0").unwrap();
        let mut names = BTreeMap::new();
        let host = HostResource { attributes: vec![] };
        let mut cache = ProcessCache::with_proc_root(dir.clone(), host.clone(), names.clone());
        let r = cache.get(42, &comm("app"));
        assert_eq!(r.service_name, "from-env");
        assert_eq!(attr(&r, "process.command").as_deref(), Some("/usr/bin/app"));
        names.insert("app".into(), "from-config".into());
        let mut cache = ProcessCache::with_proc_root(dir.clone(), host, names);
        assert_eq!(cache.get(42, &comm("app")).service_name, "from-config");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
