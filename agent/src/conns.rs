//! Open TCP connections and the sockets that belong to them, so that syscalls a process makes
//! on a connection's fd become children of the connection's span.
//!
//! The kernel reports connections by socket address (`skaddr`) and 4-tuple; syscalls report
//! an fd. The link is made in userspace, lazily and only for processes that have an open
//! traced connection: `/proc/<pid>/fd/<fd>` names the socket inode, and
//! `/proc/<pid>/net/tcp{,6}` maps the inode to its 4-tuple. Results are cached per (pid, fd)
//! until the connection closes; fds that are not traced sockets are remembered too, and
//! forgotten when the process opens a new traced connection (the fd may have been reused).
use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::PathBuf,
};

use opentelemetry::trace::SpanContext;

/// Most connections followed at once; beyond it new connections get no children.
pub const MAX_CONNS: usize = 65_536;
/// Most (pid, fd) results cached; beyond it negative results are forgotten.
pub const MAX_FDS: usize = 131_072;

/// A connection's local and remote ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Tuple {
    pub local: SocketAddr,
    pub remote: SocketAddr,
}

impl Tuple {
    pub fn new(local: SocketAddr, remote: SocketAddr) -> Tuple {
        let canon = |a: SocketAddr| SocketAddr::new(a.ip().to_canonical(), a.port());
        Tuple {
            local: canon(local),
            remote: canon(remote),
        }
    }

    /// The ends of an exchange record's socket, as the kernel read them.
    pub fn of_exchange(d: &agent_common::ExchangeData) -> Option<Tuple> {
        if d.family == 0 || (d.sport == 0 && d.dport == 0) {
            return None;
        }
        Some(Tuple::new(
            SocketAddr::new(crate::wire::ip_addr(d.family, &d.saddr), d.sport),
            SocketAddr::new(crate::wire::ip_addr(d.family, &d.daddr), d.dport),
        ))
    }
}

/// Finds the 4-tuple of a process's socket fd.
pub trait FdResolver: Send {
    fn resolve(&mut self, pid: u32, fd: u64) -> Option<Tuple>;
    /// Whether the last `None` may be wrong soon (the resolver did not look everywhere it
    /// could): the caller then does not remember the fd as untraced.
    fn unsure(&self) -> bool {
        false
    }
}

/// The shortest time between two reads of one network namespace's socket tables: a read
/// formats every socket of the namespace (TIME_WAIT ones included), about 1 ms per
/// thousand, so reading them per lookup took a whole core at ~200 new connections/s.
pub const TABLE_REFRESH: std::time::Duration = std::time::Duration::from_millis(50);

/// Resolves through /proc: the fd's socket inode, then the inode's 4-tuple in a snapshot of
/// its network namespace's `net/tcp` and `net/tcp6`, read again when an inode is missing
/// from it (at most once per [`TABLE_REFRESH`]).
pub struct ProcFdResolver {
    pub proc_root: PathBuf,
    /// Per network namespace (its inode): when its tables were read, and inode -> ends.
    tables: HashMap<u64, (std::time::Instant, HashMap<u64, Tuple>)>,
    unsure: bool,
    /// Reads of the socket tables (for the tests and the counters).
    pub table_reads: u64,
}

impl Default for ProcFdResolver {
    fn default() -> Self {
        ProcFdResolver {
            proc_root: "/proc".into(),
            tables: HashMap::new(),
            unsure: false,
            table_reads: 0,
        }
    }
}

/// The number in a `/proc` link such as `socket:[123]` or `net:[4026531840]`.
fn link_number(path: &std::path::Path, prefix: &str) -> Option<u64> {
    let link = std::fs::read_link(path).ok()?;
    link.to_str()?
        .strip_prefix(prefix)?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// Most network namespaces whose socket tables are kept.
const MAX_NETNS_TABLES: usize = 256;

impl FdResolver for ProcFdResolver {
    fn resolve(&mut self, pid: u32, fd: u64) -> Option<Tuple> {
        self.unsure = false;
        let dir = self.proc_root.join(pid.to_string());
        let inode = link_number(&dir.join("fd").join(fd.to_string()), "socket:[")?;
        let netns = link_number(&dir.join("ns/net"), "net:[").unwrap_or(0);
        if let Some((_, t)) = self.tables.get(&netns) {
            if let Some(t) = t.get(&inode) {
                return Some(*t);
            }
        }
        let fresh = self
            .tables
            .get(&netns)
            .is_some_and(|(at, _)| at.elapsed() < TABLE_REFRESH);
        if fresh {
            // Read moments ago without it: maybe newer than the snapshot.
            self.unsure = true;
            return None;
        }
        let mut table = HashMap::new();
        for f in ["net/tcp", "net/tcp6"] {
            if let Ok(text) = std::fs::read_to_string(dir.join(f)) {
                inodes(&text, &mut table);
            }
        }
        self.table_reads += 1;
        let found = table.get(&inode).copied();
        if self.tables.len() >= MAX_NETNS_TABLES && !self.tables.contains_key(&netns) {
            self.tables.clear();
        }
        self.tables
            .insert(netns, (std::time::Instant::now(), table));
        found
    }

    fn unsure(&self) -> bool {
        self.unsure
    }
}

/// Adds every socket of a /proc/net/tcp or tcp6 text to `out` (inode -> ends).
fn inodes(text: &str, out: &mut HashMap<u64, Tuple>) {
    for line in text.lines().skip(1) {
        let mut f = line.split_whitespace();
        let (Some(local), Some(remote)) = (f.nth(1), f.next()) else {
            continue;
        };
        // After rem_address: st, tx:rx, tr:tm, retrnsmt, uid, timeout, inode.
        let Some(inode) = f.nth(6).and_then(|v| v.parse::<u64>().ok()) else {
            continue;
        };
        if let (Some(l), Some(r)) = (parse_proc_addr(local), parse_proc_addr(remote)) {
            out.insert(inode, Tuple::new(l, r));
        }
    }
}

/// Looks up a socket inode in the text of /proc/net/tcp or tcp6.
pub fn find_inode(text: &str, inode: u64) -> Option<Tuple> {
    let mut all = HashMap::new();
    inodes(text, &mut all);
    all.get(&inode).copied()
}

/// `0100007F:1F90` (IPv4) or 32 hex digits + port (IPv6): the address as the kernel's u32
/// words in host byte order, the port in hex.
fn parse_proc_addr(s: &str) -> Option<SocketAddr> {
    let (addr, port) = s.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |i: usize| -> Option<[u8; 4]> {
        Some(
            u32::from_str_radix(addr.get(i * 8..i * 8 + 8)?, 16)
                .ok()?
                .to_ne_bytes(),
        )
    };
    let ip = match addr.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(0)?)),
        32 => {
            let mut b = [0u8; 16];
            for i in 0..4 {
                b[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            IpAddr::V6(Ipv6Addr::from(b))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

struct Open {
    ctx: SpanContext,
    pid: u32,
    tuple: Tuple,
    fds: Vec<u64>,
}

enum FdState {
    Conn(u64),
    NotTraced,
}

/// The connection table.
pub struct Conns<R: FdResolver> {
    resolver: R,
    by_sk: HashMap<u64, Open>,
    by_tuple: HashMap<Tuple, u64>,
    fds: HashMap<(u32, u64), FdState>,
    open_per_pid: HashMap<u32, u32>,
    /// Connections not followed because the table was full.
    pub table_full: u64,
    /// fd -> connection facts forgotten because their table was full (looked up again
    /// through /proc when needed).
    pub fds_evicted: u64,
    /// fd lookups through the resolver.
    pub lookups: u64,
}

impl<R: FdResolver> Conns<R> {
    pub fn new(resolver: R) -> Conns<R> {
        Conns {
            resolver,
            by_sk: HashMap::new(),
            by_tuple: HashMap::new(),
            fds: HashMap::new(),
            open_per_pid: HashMap::new(),
            table_full: 0,
            fds_evicted: 0,
            lookups: 0,
        }
    }

    /// A connection was established (connect or accept) by `pid`, with span `ctx`.
    pub fn open(&mut self, skaddr: u64, pid: u32, tuple: Tuple, ctx: SpanContext) {
        if self.by_sk.contains_key(&skaddr) {
            self.close(skaddr);
        }
        if self.by_sk.len() >= MAX_CONNS {
            self.table_full += 1;
            return;
        }
        if pid != 0 {
            // An fd of this process that was not a traced socket may now be this one.
            self.fds
                .retain(|&(p, _), s| p != pid || !matches!(s, FdState::NotTraced));
            *self.open_per_pid.entry(pid).or_default() += 1;
        }
        self.by_tuple.insert(tuple, skaddr);
        self.by_sk.insert(
            skaddr,
            Open {
                ctx,
                pid,
                tuple,
                fds: Vec::new(),
            },
        );
    }

    /// The connection's span, if it is followed; forgets the connection.
    pub fn close(&mut self, skaddr: u64) -> Option<SpanContext> {
        let open = self.by_sk.remove(&skaddr)?;
        if self.by_tuple.get(&open.tuple) == Some(&skaddr) {
            self.by_tuple.remove(&open.tuple);
        }
        for fd in &open.fds {
            self.fds.remove(&(open.pid, *fd));
        }
        if let Some(n) = self.open_per_pid.get_mut(&open.pid) {
            *n -= 1;
            if *n == 0 {
                self.open_per_pid.remove(&open.pid);
                self.fds.retain(|&(p, _), _| p != open.pid);
            }
        }
        Some(open.ctx)
    }

    /// The span of the open connection behind `pid`'s `fd`, if any.
    pub fn parent_of_fd(&mut self, pid: u32, fd: u64) -> Option<SpanContext> {
        if !self.open_per_pid.contains_key(&pid) {
            return None;
        }
        match self.fds.get(&(pid, fd)) {
            Some(FdState::Conn(sk)) => return self.by_sk.get(sk).map(|o| o.ctx.clone()),
            Some(FdState::NotTraced) => return None,
            None => {}
        }
        self.lookups += 1;
        let sk = self
            .resolver
            .resolve(pid, fd)
            .and_then(|t| self.by_tuple.get(&t).copied());
        if self.fds.len() >= MAX_FDS {
            let before = self.fds.len();
            self.fds.retain(|_, s| matches!(s, FdState::Conn(_)));
            self.fds_evicted += (before - self.fds.len()) as u64;
        }
        match sk.and_then(|sk| self.by_sk.get_mut(&sk).map(|o| (sk, o))) {
            Some((sk, open)) => {
                open.fds.push(fd);
                let ctx = open.ctx.clone();
                self.fds.insert((pid, fd), FdState::Conn(sk));
                Some(ctx)
            }
            None => {
                if !self.resolver.unsure() {
                    self.fds.insert((pid, fd), FdState::NotTraced);
                }
                None
            }
        }
    }

    /// The 4-tuple of a followed connection.
    pub fn tuple_of(&self, skaddr: u64) -> Option<Tuple> {
        self.by_sk.get(&skaddr).map(|o| o.tuple)
    }

    /// The 4-tuple of `pid`'s socket `fd`, looked up through the resolver (/proc).
    pub fn resolve(&mut self, pid: u32, fd: u64) -> Option<Tuple> {
        self.lookups += 1;
        self.resolver.resolve(pid, fd)
    }

    pub fn open_count(&self) -> usize {
        self.by_sk.len()
    }

    /// Entries in each table (for `kspan_table_entries`).
    pub fn table_sizes(&self) -> [(&'static str, usize); 3] {
        [
            ("connections", self.by_sk.len()),
            ("fds", self.fds.len()),
            ("pids_with_connections", self.open_per_pid.len()),
        ]
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::{SpanId, TraceFlags, TraceId, TraceState};

    use super::*;

    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 31337 1 0000000000000000 100 0 0 10 0
   1: 0100007F:D431 0100007F:1F90 01 00000000:00000000 00:00000000 00000000     0        0 4242 1 0000000000000000 20 4 30 10 -1
";
    const TCP6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000001000000:1F90 00000000000000000000000001000000:B2A4 01 00000000:00000000 00:00000000 00000000     0        0 777 1 0000000000000000 20 4 1 10 -1
   1: 0000000000000000FFFF00000100007F:1F91 0000000000000000FFFF00000100007F:C000 01 00000000:00000000 00:00000000 00000000     0        0 778 1 0000000000000000 20 4 1 10 -1
";

    #[test]
    fn proc_net_tcp_parsing() {
        let t = find_inode(TCP, 4242).unwrap();
        assert_eq!(t.local, "127.0.0.1:54321".parse().unwrap());
        assert_eq!(t.remote, "127.0.0.1:8080".parse().unwrap());
        let t = find_inode(TCP6, 777).unwrap();
        assert_eq!(t.local, "[::1]:8080".parse().unwrap());
        assert_eq!(t.remote, "[::1]:45732".parse().unwrap());
        // v4-mapped v6 addresses compare equal to the v4 form the kernel reports for v4.
        let t = find_inode(TCP6, 778).unwrap();
        assert_eq!(t.local, "127.0.0.1:8081".parse().unwrap());
        assert_eq!(find_inode(TCP, 1), None);
        assert_eq!(find_inode("garbage\n1: zz:zz", 1), None);
    }

    /// A /proc with one process (pid 7) in network namespace 1.
    struct TempDir(PathBuf);
    impl TempDir {
        fn path(&self) -> &std::path::Path {
            &self.0
        }
    }
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn fake_proc(tcp: &str) -> TempDir {
        let root =
            TempDir(std::env::temp_dir().join(format!("kspan-fake-proc-{}", std::process::id())));
        let _ = std::fs::remove_dir_all(root.path());
        let p = root.path().join("7");
        std::fs::create_dir_all(p.join("fd")).unwrap();
        std::fs::create_dir_all(p.join("ns")).unwrap();
        std::fs::create_dir_all(p.join("net")).unwrap();
        std::os::unix::fs::symlink("socket:[4242]", p.join("fd/3")).unwrap();
        std::os::unix::fs::symlink("socket:[31337]", p.join("fd/4")).unwrap();
        std::os::unix::fs::symlink("socket:[999]", p.join("fd/5")).unwrap();
        std::os::unix::fs::symlink("/dev/null", p.join("fd/6")).unwrap();
        std::os::unix::fs::symlink("net:[1]", p.join("ns/net")).unwrap();
        std::fs::write(p.join("net/tcp"), tcp).unwrap();
        root
    }

    #[test]
    fn socket_tables_are_read_once_per_refresh_not_per_lookup() {
        let root = fake_proc(TCP);
        let mut r = ProcFdResolver {
            proc_root: root.path().into(),
            ..Default::default()
        };
        assert_eq!(
            r.resolve(7, 3).unwrap().remote,
            "127.0.0.1:8080".parse().unwrap()
        );
        assert_eq!(
            r.resolve(7, 4).unwrap().local,
            "127.0.0.1:8080".parse().unwrap()
        );
        assert_eq!(r.resolve(7, 6), None, "not a socket");
        assert!(!r.unsure());
        assert_eq!(r.table_reads, 1, "one read served both sockets");
        // A socket newer than the snapshot: not found yet, and said to be unsure.
        assert_eq!(r.resolve(7, 5), None);
        assert!(r.unsure());
        assert_eq!(r.table_reads, 1);
        let newer = format!(
            "{TCP}   2: 0100007F:9C40 0100007F:1F90 01 00000000:00000000 00:00000000 00000000     0        0 999 1 0000000000000000 20 4 30 10 -1\n"
        );
        std::fs::write(root.path().join("7/net/tcp"), newer).unwrap();
        std::thread::sleep(TABLE_REFRESH);
        assert_eq!(
            r.resolve(7, 5).unwrap().local,
            "127.0.0.1:40000".parse().unwrap()
        );
        assert_eq!(r.table_reads, 2);
    }

    struct Fixed(HashMap<(u32, u64), Tuple>, u32);
    impl FdResolver for Fixed {
        fn resolve(&mut self, pid: u32, fd: u64) -> Option<Tuple> {
            self.1 += 1;
            self.0.get(&(pid, fd)).copied()
        }
    }

    fn ctx(n: u8) -> SpanContext {
        SpanContext::new(
            TraceId::from_bytes([n; 16]),
            SpanId::from_bytes([n; 8]),
            TraceFlags::SAMPLED,
            false,
            TraceState::default(),
        )
    }

    #[test]
    fn fds_map_to_open_connections_only() {
        let a = Tuple::new(
            "127.0.0.1:5000".parse().unwrap(),
            "127.0.0.1:80".parse().unwrap(),
        );
        let mut m = HashMap::new();
        m.insert((10, 3), a);
        let mut c = Conns::new(Fixed(m, 0));
        // No open connection for pid 10: no lookup at all.
        assert!(c.parent_of_fd(10, 3).is_none());
        assert_eq!(c.resolver.1, 0);
        c.open(0xa, 10, a, ctx(1));
        assert_eq!(c.parent_of_fd(10, 3), Some(ctx(1)));
        assert_eq!(c.parent_of_fd(10, 3), Some(ctx(1)));
        assert_eq!(c.resolver.1, 1, "cached");
        // fd 4 is not a traced socket: looked up once, then remembered.
        assert!(c.parent_of_fd(10, 4).is_none());
        assert!(c.parent_of_fd(10, 4).is_none());
        assert_eq!(c.resolver.1, 2);
        // Other processes are not looked up.
        assert!(c.parent_of_fd(11, 3).is_none());
        assert_eq!(c.resolver.1, 2);
        assert_eq!(c.close(0xa), Some(ctx(1)));
        assert!(c.parent_of_fd(10, 3).is_none());
        assert_eq!(c.open_count(), 0);
        assert_eq!(c.close(0xa), None);
    }

    #[test]
    fn new_connection_forgets_negative_results() {
        let a = Tuple::new(
            "127.0.0.1:5000".parse().unwrap(),
            "127.0.0.1:80".parse().unwrap(),
        );
        let b = Tuple::new(
            "127.0.0.1:5001".parse().unwrap(),
            "127.0.0.1:80".parse().unwrap(),
        );
        let mut m = HashMap::new();
        m.insert((10, 3), a);
        let mut c = Conns::new(Fixed(m, 0));
        c.open(0xa, 10, a, ctx(1));
        assert!(c.parent_of_fd(10, 5).is_none());
        // fd 5 becomes a socket of a new connection.
        c.resolver.0.insert((10, 5), b);
        c.open(0xb, 10, b, ctx(2));
        assert_eq!(c.parent_of_fd(10, 5), Some(ctx(2)));
        assert_eq!(c.parent_of_fd(10, 3), Some(ctx(1)));
    }
}
