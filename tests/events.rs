//! Webhook notifications through the real binary: a local receiver gets one event per push
//! and delete in distribution's envelope, filtered by repository; with the receiver down
//! across a registry crash, the events arrive once it is back, each once.

mod common;

use common::*;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What the receiver got: each event with the POST's Content-Type and Authorization.
type Got = Arc<Mutex<Vec<(Value, String, String)>>>;

/// A tiny HTTP server taking notification POSTs on 127.0.0.1:`port` (0: any).
struct Receiver {
    port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Receiver {
    fn start(port: u16, got: Got) -> Receiver {
        let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind the receiver");
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let (stop2, got2) = (stop.clone(), got.clone());
        let thread = std::thread::spawn(move || {
            while !stop2.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((conn, _)) => serve_one(conn, &got2),
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        Receiver {
            port,
            stop,
            thread: Some(thread),
        }
    }

    /// Stops accepting and closes the port.
    fn stop(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.take().unwrap().join().unwrap();
    }
}

fn serve_one(conn: std::net::TcpStream, got: &Got) {
    conn.set_nonblocking(false).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut r = BufReader::new(conn.try_clone().unwrap());
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    assert!(line.starts_with("POST /events "), "{line:?}");
    let (mut len, mut ctype, mut auth) = (0, String::new(), String::new());
    loop {
        let mut h = String::new();
        r.read_line(&mut h).unwrap();
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':').unwrap();
        match k.to_ascii_lowercase().as_str() {
            "content-length" => len = v.trim().parse().unwrap(),
            "content-type" => ctype = v.trim().to_owned(),
            "authorization" => auth = v.trim().to_owned(),
            _ => {}
        }
    }
    let mut body = vec![0; len];
    r.read_exact(&mut body).unwrap();
    let v: Value = serde_json::from_slice(&body).unwrap();
    for e in v["events"].as_array().unwrap() {
        got.lock()
            .unwrap()
            .push((e.clone(), ctype.clone(), auth.clone()));
    }
    let mut w = conn;
    let _ = w.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
}

/// A registry notifying the receiver at `port` of fleet/* changes, with `extra` config.
fn start_registry(dir: &Path, port: u16, extra: Value) -> Registry {
    let mut config = json!({
        "listen": "127.0.0.1:0",
        "notifications": [{
            "name": "agent",
            "url": format!("http://127.0.0.1:{port}/events"),
            "headers": {"Authorization": "Bearer agent-token"},
            "repositories": ["fleet/*"],
            "timeout": "2s",
            "maxBackoff": "1s",
        }],
    });
    for (k, v) in extra.as_object().unwrap() {
        config[k] = v.clone();
    }
    let cfg = dir.join("outpost.json");
    std::fs::write(&cfg, config.to_string()).unwrap();
    Registry::start_with(&dir.join("data"), &["--config", cfg.to_str().unwrap()])
}

/// The events received once there are `n` (panics with what came if not within 15 s).
fn wait_for(got: &Got, n: usize) -> Vec<(Value, String, String)> {
    let until = Instant::now() + bound(Duration::from_secs(15));
    loop {
        let g = got.lock().unwrap().clone();
        if g.len() >= n {
            return g;
        }
        assert!(Instant::now() < until, "{} of {n} events: {g:#?}", g.len());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `push_tagged`, answering the manifest's digest and size.
fn push(c: &Client, repo: &str, tag: &str, seed: u64) -> (String, usize) {
    let m = push_tagged(c, repo, tag, seed);
    (sha256(&m), m.len())
}

#[test]
fn one_event_per_push_and_delete_in_distributions_envelope() {
    let dir = TempDir::new("events-format");
    let got = Got::default();
    let receiver = Receiver::start(0, got.clone());
    let reg = start_registry(dir.path(), receiver.port, json!({}));
    let c = reg.client();
    let (d, size) = push(&c, "fleet/app", "v1", 1);
    push(&c, "other/app", "v1", 2); // not under fleet/*: not sent
    assert_eq!(c.delete("/v2/fleet/app/manifests/v1").status, 202);
    assert_eq!(
        c.delete(&format!("/v2/fleet/app/manifests/{d}")).status,
        202
    );
    let g = wait_for(&got, 3);
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(got.lock().unwrap().len(), 3, "{g:#?}");
    for (_, ctype, auth) in &g {
        assert_eq!(ctype, "application/vnd.docker.distribution.events.v1+json");
        assert_eq!(auth, "Bearer agent-token");
    }
    let (push, tag_del, man_del) = (&g[0].0, &g[1].0, &g[2].0);
    assert_eq!(push["action"], "push");
    let t = &push["target"];
    assert_eq!(t["repository"], "fleet/app");
    assert_eq!(t["digest"], d.as_str());
    assert_eq!(t["tag"], "v1");
    assert_eq!(t["mediaType"], OCI_MANIFEST);
    assert_eq!(
        (t["size"].as_u64(), t["length"].as_u64()),
        (Some(size as u64), Some(size as u64))
    );
    assert_eq!(
        t["url"],
        format!("http://{}/v2/fleet/app/manifests/{d}", reg.addr).as_str()
    );
    assert_eq!(push["actor"]["name"], "anonymous");
    assert_eq!(push["request"]["addr"], "127.0.0.1");
    assert_eq!(push["request"]["method"], "PUT");
    assert_eq!(push["source"]["addr"], reg.addr.to_string().as_str());
    assert!(push["timestamp"].as_str().unwrap().ends_with('Z'));
    let instance = push["source"]["instanceID"].as_str().unwrap();
    assert!(push["id"].as_str().unwrap().starts_with(instance));
    assert_eq!(tag_del["action"], "delete");
    assert_eq!(tag_del["target"]["tag"], "v1");
    assert_eq!(tag_del["request"]["method"], "DELETE");
    assert_eq!(man_del["action"], "delete");
    assert_eq!(man_del["target"]["digest"], d.as_str());
    let ids: std::collections::BTreeSet<&str> = g
        .iter()
        .map(|(e, _, _)| e["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 3);
    receiver.stop();
}

#[test]
fn events_wait_for_a_receiver_that_is_down_across_a_crash() {
    let dir = TempDir::new("events-down");
    let got = Got::default();
    let receiver = Receiver::start(0, got.clone());
    let port = receiver.port;
    let mut reg = start_registry(dir.path(), port, json!({}));
    let c = reg.client();
    push(&c, "fleet/app", "a", 1);
    wait_for(&got, 1);
    // The cursor past "a" becomes durable with the store's flush (within a second).
    std::thread::sleep(Duration::from_millis(1500));
    receiver.stop();
    push(&c, "fleet/app", "b", 2);
    push(&c, "fleet/app", "c", 3);
    std::thread::sleep(Duration::from_millis(1500)); // deliveries fail meanwhile
    reg.kill();
    reg = start_registry(dir.path(), port, json!({}));
    let c = reg.client();
    push(&c, "fleet/app", "d", 4);
    let receiver = Receiver::start(port, got.clone());
    let g = wait_for(&got, 4);
    std::thread::sleep(Duration::from_millis(700));
    let g2 = got.lock().unwrap().clone();
    // None lost, and none twice: "a" was acknowledged and its cursor durable before the
    // crash; "b" and "c" were never acknowledged, so they were not sent twice either. (A
    // crash between an acknowledged POST and the cursor's flush would send that batch again,
    // with the same ids.)
    assert_eq!(g2.len(), 4, "{g2:#?}");
    let tags: Vec<&str> = g
        .iter()
        .map(|(e, _, _)| e["target"]["tag"].as_str().unwrap())
        .collect();
    assert_eq!(tags, ["a", "b", "c", "d"]);
    let seqs: Vec<u64> = g
        .iter()
        .map(|(e, _, _)| {
            e["id"]
                .as_str()
                .unwrap()
                .rsplit('-')
                .next()
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    receiver.stop();
}

#[test]
fn records_the_audit_bound_dropped_before_delivery_are_logged_as_lost() {
    let dir = TempDir::new("events-lost");
    let got = Got::default();
    let receiver = Receiver::start(0, got.clone());
    let port = receiver.port;
    // Each push is two records (manifest.push, tag.set): the bound keeps the last two pushes.
    let reg = start_registry(dir.path(), port, json!({"audit": {"maxRecords": 4}}));
    let c = reg.client();
    push(&c, "fleet/app", "a", 1);
    wait_for(&got, 1);
    receiver.stop();
    for (i, tag) in ["b", "c", "d"].iter().enumerate() {
        push(&c, "fleet/app", tag, 2 + i as u64);
    }
    let receiver = Receiver::start(port, got.clone());
    let g = wait_for(&got, 3);
    let tags: Vec<&str> = g
        .iter()
        .map(|(e, _, _)| e["target"]["tag"].as_str().unwrap())
        .collect();
    assert_eq!(tags, ["a", "c", "d"]);
    reg.log_with("notifications to agent: 2 audit record(s) were dropped");
    receiver.stop();
}

#[test]
fn a_push_of_several_tags_is_one_event_each_and_a_redirect_is_not_a_delivery() {
    // An endpoint that answers every POST with a redirect to the real receiver: not followed
    // (it would turn the POST into a GET), and not taken as delivered.
    let dir = TempDir::new("events-redirect");
    let got = Got::default();
    let receiver = Receiver::start(0, got.clone());
    let redirector = TcpListener::bind("127.0.0.1:0").unwrap();
    let hop = redirector.local_addr().unwrap().port();
    let posts = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (posts2, target) = (posts.clone(), receiver.port);
    std::thread::spawn(move || {
        for conn in redirector.incoming() {
            let Ok(mut conn) = conn else { return };
            let mut r = BufReader::new(conn.try_clone().unwrap());
            let mut line = String::new();
            let _ = r.read_line(&mut line);
            if line.starts_with("POST ") {
                posts2.fetch_add(1, Ordering::SeqCst);
            }
            let _ = write!(
                conn,
                "HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:{target}/events\r\n\
                 Content-Length: 0\r\nConnection: close\r\n\r\n"
            );
        }
    });
    let reg = start_registry(dir.path(), hop, json!({}));
    let c = reg.client();
    let m = push_tagged(&c, "fleet/app", "v1", 5);
    let until = Instant::now() + bound(Duration::from_secs(15));
    while posts.load(Ordering::SeqCst) < 2 {
        assert!(Instant::now() < until, "the refused batch was not retried");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(got.lock().unwrap().is_empty(), "a redirect was followed");
    reg.log_with("answered 302");
    drop(reg);

    // The real receiver: a push of one manifest under two tags is two push events.
    let dir = TempDir::new("events-tags");
    let reg = start_registry(dir.path(), receiver.port, json!({}));
    let c = reg.client();
    push_tagged(&c, "fleet/app", "v1", 5);
    let d = sha256(&m);
    let r = c.req(
        "PUT",
        &format!("/v2/fleet/app/manifests/{d}?tag=blue&tag=green"),
        &[("Content-Type", OCI_MANIFEST)],
        Body::Bytes(&m),
    );
    assert_eq!(r.status, 201, "{r:?}");
    let g = wait_for(&got, 3);
    let tags: Vec<&str> = g[1..]
        .iter()
        .map(|(e, _, _)| e["target"]["tag"].as_str().unwrap())
        .collect();
    assert_eq!(tags, ["blue", "green"], "{g:#?}");
    assert_ne!(g[1].0["id"], g[2].0["id"]);
    assert!(g[1..]
        .iter()
        .all(|(e, _, _)| e["action"] == "push" && e["target"]["digest"] == d.as_str()));
    receiver.stop();
}
