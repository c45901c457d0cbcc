//! Debian's nginx in the foreground, for tests and benchmarks: `/` answers 200 "ok", `/missing`
//! 404, `/fail` 500. Standard library only: the xtask benchmarks include this file too
//! (`#[path]`), so tests and benchmarks run the same server.
use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// nginx with a master and `workers` worker processes on 127.0.0.1:`port`; stopped (with its
/// workers) on drop.
pub struct Nginx {
    child: Child,
    dir: PathBuf,
}

impl Nginx {
    /// Starts it and waits (at most 10 s) until it listens.
    pub fn start(port: u16, workers: u32) -> std::io::Result<Nginx> {
        Nginx::with_locations(
            port,
            workers,
            "location / { return 200 \"ok\\n\"; } \
             location /missing { return 404; } location /fail { return 500; }",
            "",
        )
    }

    /// A reverse proxy to 127.0.0.1:`upstream`, over keep-alive connections.
    pub fn proxy(port: u16, workers: u32, upstream: u16) -> std::io::Result<Nginx> {
        Nginx::with_locations(
            port,
            workers,
            "location / { proxy_pass http://up; proxy_http_version 1.1; \
             proxy_set_header Connection \"\"; }",
            &format!("upstream up {{ server 127.0.0.1:{upstream}; keepalive 16; }}"),
        )
    }

    fn with_locations(
        port: u16,
        workers: u32,
        locations: &str,
        http_extra: &str,
    ) -> std::io::Result<Nginx> {
        let dir = std::env::temp_dir().join(format!("kspan-nginx-{}-{port}", std::process::id()));
        std::fs::create_dir_all(dir.join("logs"))?;
        let conf = dir.join("nginx.conf");
        std::fs::write(
            &conf,
            format!(
                "worker_processes {workers};\npid {d}/nginx.pid;\nerror_log {d}/logs/error.log;\n\
                 events {{ worker_connections 1024; }}\n\
                 http {{ access_log off; {http_extra} server {{ listen 127.0.0.1:{port}; \
                 {locations} }} }}\n",
                d = dir.display()
            ),
        )?;
        let child = Command::new("nginx")
            .arg("-c")
            .arg(&conf)
            .arg("-p")
            .arg(&dir)
            .args(["-g", "daemon off;"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| {
                std::io::Error::new(
                    e.kind(),
                    format!("nginx: {e} (KSPAN_SETUP_TEST=1 scripts/setup installs it)"),
                )
            })?;
        let n = Nginx { child, dir };
        let t0 = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if t0.elapsed() > Duration::from_secs(10) {
                return Err(std::io::Error::other(format!(
                    "nginx did not listen on {port}"
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(n)
    }

    /// The master's pid.
    pub fn master(&self) -> u32 {
        self.child.id()
    }

    /// The workers' pids.
    pub fn workers(&self) -> Vec<u32> {
        let m = self.child.id();
        std::fs::read_to_string(format!("/proc/{m}/task/{m}/children"))
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM: the master stops its workers too (SIGKILL would orphan them).
        // SAFETY: kill with a valid pid and signal.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
