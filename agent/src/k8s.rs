//! Kubernetes metadata for traced processes: the pods on this node (list + watch with the
//! field selector `spec.nodeName=$NODE_NAME`, through kube-rs), indexed by container id, so a
//! process whose cgroup names a container gets `k8s.*` resource attributes.
//!
//! Without `NODE_NAME` or a reachable API the agent runs without this enrichment and says so
//! once.
use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, RwLock},
    time::Duration,
};

use futures_util::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::{
    api::{ListParams, WatchEvent, WatchParams},
    Api, Client,
};
use opentelemetry::KeyValue;

/// What a container of a pod contributes to its processes' resources.
#[derive(Debug, Clone, PartialEq)]
pub struct PodMeta {
    pub pod_name: String,
    pub pod_uid: String,
    pub namespace: String,
    pub node: String,
    pub container_name: String,
    /// (kind, name) of the owning workload: Deployment (from its ReplicaSet), DaemonSet,
    /// StatefulSet, Job, CronJob (from its Job), ReplicaSet.
    pub workload: Option<(String, String)>,
    pub labels: BTreeMap<String, String>,
}

impl PodMeta {
    /// Resource attributes (semantic conventions).
    pub fn attributes(&self) -> Vec<KeyValue> {
        let mut v = vec![
            KeyValue::new("k8s.pod.name", self.pod_name.clone()),
            KeyValue::new("k8s.pod.uid", self.pod_uid.clone()),
            KeyValue::new("k8s.namespace.name", self.namespace.clone()),
            KeyValue::new("k8s.node.name", self.node.clone()),
            KeyValue::new("k8s.container.name", self.container_name.clone()),
        ];
        if let Some((kind, name)) = &self.workload {
            let key = match kind.as_str() {
                "Deployment" => "k8s.deployment.name",
                "DaemonSet" => "k8s.daemonset.name",
                "StatefulSet" => "k8s.statefulset.name",
                "Job" => "k8s.job.name",
                "CronJob" => "k8s.cronjob.name",
                _ => "k8s.replicaset.name",
            };
            v.push(KeyValue::new(key, name.clone()));
        }
        for (k, val) in &self.labels {
            v.push(KeyValue::new(format!("k8s.pod.label.{k}"), val.clone()));
        }
        v
    }

    /// The workload's name: `service.name` when the process sets none.
    pub fn workload_name(&self) -> Option<&str> {
        self.workload.as_ref().map(|(_, n)| n.as_str())
    }
}

/// Container id (64 hex) -> metadata, shared with the span builder.
#[derive(Debug, Default)]
pub struct PodCache {
    by_container: RwLock<HashMap<String, Arc<PodMeta>>>,
    /// pod uid -> its container ids, to forget them when the pod goes.
    by_pod: RwLock<HashMap<String, Vec<String>>>,
}

impl PodCache {
    pub fn get(&self, container_id: &str) -> Option<Arc<PodMeta>> {
        self.by_container.read().ok()?.get(container_id).cloned()
    }

    pub fn len(&self) -> usize {
        self.by_container.read().map(|m| m.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Adds or replaces a pod's containers.
    pub fn upsert(&self, pod: &Pod) {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        self.remove(&uid);
        let metas = pod_metas(pod);
        let (Ok(mut c), Ok(mut p)) = (self.by_container.write(), self.by_pod.write()) else {
            return;
        };
        let ids: Vec<String> = metas.iter().map(|(id, _)| id.clone()).collect();
        for (id, m) in metas {
            c.insert(id, Arc::new(m));
        }
        p.insert(uid, ids);
    }

    fn remove(&self, uid: &str) {
        let (Ok(mut c), Ok(mut p)) = (self.by_container.write(), self.by_pod.write()) else {
            return;
        };
        if let Some(ids) = p.remove(uid) {
            for id in ids {
                c.remove(&id);
            }
        }
    }

    fn replace_all(&self, pods: &[Pod]) {
        if let (Ok(mut c), Ok(mut p)) = (self.by_container.write(), self.by_pod.write()) {
            c.clear();
            p.clear();
        }
        for pod in pods {
            self.upsert(pod);
        }
    }
}

/// `containerd://<id>`, `cri-o://<id>`, `docker://<id>` -> `<id>`.
pub fn strip_runtime(id: &str) -> &str {
    id.split_once("://").map_or(id, |(_, rest)| rest)
}

/// A ReplicaSet made by a Deployment is named `<deployment>-<pod-template-hash>`.
fn workload_of(pod: &Pod) -> Option<(String, String)> {
    let owner = pod
        .metadata
        .owner_references
        .as_ref()?
        .iter()
        .find(|o| o.controller == Some(true))?;
    let hash = pod
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get("pod-template-hash"));
    match (owner.kind.as_str(), hash) {
        ("ReplicaSet", Some(h)) => match owner.name.strip_suffix(&format!("-{h}")) {
            Some(d) => Some(("Deployment".into(), d.to_string())),
            None => Some(("ReplicaSet".into(), owner.name.clone())),
        },
        ("Job", _) => {
            // A CronJob's Job is named `<cronjob>-<scheduled minute>`.
            let cron = owner
                .name
                .rsplit_once('-')
                .filter(|(_, n)| n.len() >= 8 && n.bytes().all(|b| b.is_ascii_digit()))
                .map(|(c, _)| c.to_string());
            match cron {
                Some(c) => Some(("CronJob".into(), c)),
                None => Some(("Job".into(), owner.name.clone())),
            }
        }
        (kind, _) => Some((kind.to_string(), owner.name.clone())),
    }
}

fn pod_metas(pod: &Pod) -> Vec<(String, PodMeta)> {
    let md = &pod.metadata;
    let Some(status) = &pod.status else {
        return Vec::new();
    };
    let statuses = status
        .container_statuses
        .iter()
        .flatten()
        .chain(status.init_container_statuses.iter().flatten());
    let workload = workload_of(pod);
    statuses
        .filter_map(|cs| {
            let id = strip_runtime(cs.container_id.as_deref()?).to_ascii_lowercase();
            (!id.is_empty()).then(|| {
                (
                    id,
                    PodMeta {
                        pod_name: md.name.clone().unwrap_or_default(),
                        pod_uid: md.uid.clone().unwrap_or_default(),
                        namespace: md.namespace.clone().unwrap_or_default(),
                        node: pod
                            .spec
                            .as_ref()
                            .and_then(|s| s.node_name.clone())
                            .unwrap_or_default(),
                        container_name: cs.name.clone(),
                        workload: workload.clone(),
                        labels: md.labels.clone().unwrap_or_default(),
                    },
                )
            })
        })
        .collect()
}

#[derive(Debug, thiserror::Error)]
pub enum K8sError {
    #[error("listing pods on node {node}: {source}")]
    List {
        node: String,
        #[source]
        source: kube::Error,
    },
}

/// Keeps `cache` in step with the pods on `node`: list, then watch from the list's version;
/// on any error or expiry, list again after a backoff. Runs until the task is dropped.
pub async fn follow(client: Client, node: String, cache: Arc<PodCache>) {
    let api: Api<Pod> = Api::all(client);
    let selector = format!("spec.nodeName={node}");
    let mut backoff = Duration::from_millis(500);
    let mut warned = false;
    loop {
        match api.list(&ListParams::default().fields(&selector)).await {
            Ok(list) => {
                cache.replace_all(&list.items);
                backoff = Duration::from_millis(500);
                if warned {
                    log::warn!(
                        "Kubernetes API reachable again: {} pods on {node}",
                        list.items.len()
                    );
                    warned = false;
                }
                let rv = list.metadata.resource_version.unwrap_or_default();
                let wp = WatchParams::default().fields(&selector).timeout(290);
                match api.watch(&wp, &rv).await {
                    Ok(stream) => {
                        let mut stream = stream.boxed();
                        loop {
                            match stream.try_next().await {
                                Ok(Some(WatchEvent::Added(p)))
                                | Ok(Some(WatchEvent::Modified(p))) => cache.upsert(&p),
                                Ok(Some(WatchEvent::Deleted(p))) => {
                                    cache.remove(p.metadata.uid.as_deref().unwrap_or(""))
                                }
                                Ok(Some(WatchEvent::Bookmark(_))) => {}
                                // Expired version or server error: relist.
                                Ok(Some(WatchEvent::Error(e))) => {
                                    log::debug!("pod watch: {e:?}");
                                    break;
                                }
                                Ok(None) => break,
                                Err(e) => {
                                    log::debug!("pod watch: {e}");
                                    break;
                                }
                            }
                        }
                    }
                    Err(e) => log::debug!("pod watch: {e}"),
                }
            }
            Err(e) => {
                if !warned {
                    log::warn!(
                        "{}; pod metadata is missing until the API answers (retrying)",
                        K8sError::List {
                            node: node.clone(),
                            source: e
                        }
                    );
                    warned = true;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
}

/// The client for the cluster kspan runs in, if any: needs `NODE_NAME` (the DaemonSet sets
/// it from the downward API) and a config (in-cluster service account or kubeconfig).
pub async fn connect() -> Option<(Client, String)> {
    let node = std::env::var("NODE_NAME").ok().filter(|n| !n.is_empty());
    let Some(node) = node else {
        log::info!("NODE_NAME is not set: running without Kubernetes pod metadata");
        return None;
    };
    let config = match kube::Config::infer().await {
        Ok(c) => c,
        Err(e) => {
            log::warn!("NODE_NAME is {node} but no Kubernetes config was found ({e}): running without pod metadata");
            return None;
        }
    };
    match Client::try_from(config) {
        Ok(c) => Some((c, node)),
        Err(e) => {
            log::warn!("cannot build a Kubernetes client ({e}): running without pod metadata");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_prefixes() {
        assert_eq!(strip_runtime("containerd://abc"), "abc");
        assert_eq!(strip_runtime("cri-o://abc"), "abc");
        assert_eq!(strip_runtime("docker://abc"), "abc");
        assert_eq!(strip_runtime("abc"), "abc");
    }
}
