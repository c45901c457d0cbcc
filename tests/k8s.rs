//! Pod metadata from the Kubernetes API, against API responses served locally
//! (tests/data/k8s: a PodList for node-1 and a watch stream; written in the API's JSON shape,
//! since no cluster is reachable here to record from).
//!
//! `cargo test -p agent --test k8s` (no root needed).
use std::{collections::HashMap, sync::Arc, time::Duration};

use agent::k8s::{follow, PodCache};
use axum::{
    body::Body, extract::Query, http::StatusCode, response::Response, routing::get, Router,
};

const A: &str = "7a1f0c0e5b8d4b7f9d0c2a1e3f4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f1a2b";
const B: &str = "1111111111111111111111111111111111111111111111111111111111111111";
const C: &str = "2222222222222222222222222222222222222222222222222222222222222222";
const D: &str = "3333333333333333333333333333333333333333333333333333333333333333";

fn data(name: &str) -> String {
    std::fs::read_to_string(format!(
        "{}/../tests/data/k8s/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

async fn pods(Query(q): Query<HashMap<String, String>>) -> Response {
    // Only this node's pods may be asked for.
    if q.get("fieldSelector").map(String::as_str) != Some("spec.nodeName=node-1") {
        return Response::builder()
            .status(StatusCode::BAD_REQUEST)
            .body(Body::from(format!("unexpected query {q:?}")))
            .unwrap();
    }
    if q.get("watch").map(String::as_str) == Some("true") {
        assert_eq!(q.get("resourceVersion").map(String::as_str), Some("1003"));
        let events: Vec<Result<String, std::io::Error>> = data("watch-node-1.jsonl")
            .lines()
            .map(|l| Ok(format!("{l}\n")))
            .collect();
        // The events, then a watch that stays open.
        let stream = futures_util::stream::iter(events).chain(futures_util::stream::pending());
        return Response::new(Body::from_stream(stream));
    }
    Response::builder()
        .header("content-type", "application/json")
        .body(Body::from(data("pods-node-1.json")))
        .unwrap()
}

use futures_util::StreamExt;

#[tokio::test]
async fn pods_of_this_node_by_container_id() {
    agent::init_tls();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        axum::serve(listener, Router::new().route("/api/v1/pods", get(pods)))
            .await
            .unwrap()
    });
    let config = kube::Config::new(format!("http://127.0.0.1:{port}").parse().unwrap());
    let client = kube::Client::try_from(config).unwrap();
    let cache = Arc::new(PodCache::default());
    let task = tokio::spawn(follow(client, "node-1".into(), cache.clone()));
    // The list brings A, B, C; the watch adds D and deletes C's pod.
    let t0 = std::time::Instant::now();
    while !(cache.get(D).is_some() && cache.get(C).is_none()) {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "cache never caught up: {} entries",
            cache.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    task.abort();

    let a = cache.get(A).expect("checkout container");
    assert_eq!(a.pod_name, "checkout-7d9f8c6b5-x2k4p");
    assert_eq!(a.namespace, "shop");
    assert_eq!(a.node, "node-1");
    assert_eq!(a.container_name, "checkout");
    assert_eq!(a.workload, Some(("Deployment".into(), "checkout".into())));
    assert_eq!(a.workload_name(), Some("checkout"));
    let attrs: HashMap<String, String> = a
        .attributes()
        .into_iter()
        .map(|kv| (kv.key.to_string(), kv.value.to_string()))
        .collect();
    assert_eq!(attrs["k8s.deployment.name"], "checkout");
    assert_eq!(attrs["k8s.pod.uid"], "5f3c1a2e-8b4d-4c6e-9f0a-1b2c3d4e5f60");
    assert_eq!(attrs["k8s.pod.label.app"], "checkout");
    assert_eq!(cache.get(B).unwrap().container_name, "istio-proxy");
    let d = cache.get(D).unwrap();
    assert_eq!(d.workload, Some(("CronJob".into(), "report".into())));
    assert_eq!(cache.len(), 3);
}
