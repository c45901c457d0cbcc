//! Syscall and errno names (x86_64 numbering).
use std::str::FromStr;

/// Name of a syscall number, or `syscall_<nr>` when unknown.
pub fn syscall_name(nr: u32) -> std::borrow::Cow<'static, str> {
    match syscalls::Sysno::new(nr as usize) {
        Some(s) => s.name().into(),
        None => format!("syscall_{nr}").into(),
    }
}

/// Number of a syscall name.
pub fn syscall_number(name: &str) -> Option<u32> {
    syscalls::Sysno::from_str(name).ok().map(|s| s.id() as u32)
}

/// Name of a positive errno (`ENOENT`), or `E<n>` when unknown.
pub fn errno_name(errno: i32) -> std::borrow::Cow<'static, str> {
    match syscalls::Errno::new(errno).name() {
        Some(n) => n.into(),
        None => format!("E{errno}").into(),
    }
}

/// Number of an errno name (`ENOENT` -> 2); `EWOULDBLOCK` is `EAGAIN`.
pub fn errno_number(name: &str) -> Option<i32> {
    let name = name.trim();
    if name.eq_ignore_ascii_case("EWOULDBLOCK") {
        return Some(libc::EAGAIN);
    }
    (1..4096).find(|&e| {
        syscalls::Errno::new(e)
            .name()
            .is_some_and(|n| n.eq_ignore_ascii_case(name))
    })
}

/// Syscalls whose first argument is a file descriptor.
pub fn first_arg_is_fd(nr: u32) -> bool {
    use syscalls::Sysno::*;
    let Some(s) = syscalls::Sysno::new(nr as usize) else {
        return false;
    };
    matches!(
        s,
        read | write
            | pread64
            | pwrite64
            | readv
            | writev
            | preadv
            | pwritev
            | preadv2
            | pwritev2
            | close
            | fstat
            | lseek
            | ioctl
            | fsync
            | fdatasync
            | sendto
            | recvfrom
            | sendmsg
            | recvmsg
            | sendmmsg
            | recvmmsg
            | connect
            | accept
            | accept4
            | bind
            | listen
            | shutdown
            | getsockopt
            | setsockopt
            | getsockname
            | getpeername
            | fcntl
            | flock
            | sendfile
            | splice
            | epoll_wait
            | epoll_pwait
            | epoll_ctl
            | getdents64
            | ftruncate
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(syscall_name(0), "read");
        assert_eq!(syscall_name(257), "openat");
        assert_eq!(syscall_name(9999), "syscall_9999");
        assert_eq!(syscall_number("openat"), Some(257));
        assert_eq!(syscall_number("nope"), None);
        assert_eq!(errno_name(2), "ENOENT");
        assert_eq!(errno_name(111), "ECONNREFUSED");
        assert!(first_arg_is_fd(0));
        assert!(!first_arg_is_fd(257));
    }
}
