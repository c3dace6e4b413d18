//! The process being profiled: a running one (`attach`) or one the agent
//! starts held at a gate before `exec` (`record`), so probes are live before
//! its first instruction. Also lists the files either one maps, as
//! [`ModuleCandidate`]s for the planner.

use std::ffi::{CString, OsString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::probe::plan::ModuleCandidate;
use crate::symbols::SymbolError;
use crate::symbols::maps::{needed_libraries, process_modules, resolve_command};

#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("{0}: command not found")]
    CommandNotFound(String),
    #[error("cannot start {command}: {source}")]
    Spawn { command: String, source: io::Error },
    #[error("cannot execute {command}: {source}")]
    Exec { command: String, source: io::Error },
    #[error(transparent)]
    Symbols(#[from] SymbolError),
    #[error("cannot watch pid {pid}: {source}")]
    Watch { pid: u32, source: io::Error },
}

/// Files a running process maps, readable and attachable through
/// `/proc/PID/map_files`, so no path the target controls is followed.
pub fn running_modules(pid: u32) -> Result<Vec<ModuleCandidate>, TargetError> {
    Ok(process_modules(pid)?
        .into_iter()
        .map(|m| ModuleCandidate {
            display_path: m.path,
            open_path: m.open_path.clone(),
            attach_path: m.open_path,
            is_main: m.is_main,
        })
        .collect())
}

/// Files a program about to be started will map: the executable, its ELF
/// interpreter and the libraries its DT_NEEDED entries name.
pub fn program_modules(exe: &Path) -> Vec<ModuleCandidate> {
    let mut out = vec![ModuleCandidate {
        display_path: exe.to_path_buf(),
        open_path: exe.to_path_buf(),
        attach_path: exe.to_path_buf(),
        is_main: true,
    }];
    for lib in needed_libraries(exe) {
        out.push(ModuleCandidate {
            display_path: lib.clone(),
            open_path: lib.clone(),
            attach_path: lib,
            is_main: false,
        });
    }
    out
}

/// Finds the program `argv[0]` names, as `execvp` would.
pub fn resolve_program(argv0: &OsString) -> Result<PathBuf, TargetError> {
    let name = argv0.to_string_lossy().into_owned();
    let path = resolve_command(&name).ok_or_else(|| TargetError::CommandNotFound(name.clone()))?;
    // The kernel is given this path for the uprobes: make it absolute.
    Ok(std::fs::canonicalize(&path).unwrap_or(path))
}

/// A child process forked and held before `exec` until [`GatedChild::release`].
pub struct GatedChild {
    pub pid: u32,
    gate: Option<OwnedFd>,
    exec_error: OwnedFd,
    command: String,
    reaped: Option<i32>,
    /// CPU time of the whole command (all its threads) once reaped, in
    /// user and in kernel mode, ns.
    user_sys_ns: Option<(u64, u64)>,
}

impl GatedChild {
    /// Forks; the child waits on a pipe, then execs `program` with `argv`.
    pub fn spawn(program: &Path, argv: &[OsString]) -> Result<Self, TargetError> {
        let command = argv
            .iter()
            .map(|a| a.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ");
        let spawn_err = |source| TargetError::Spawn {
            command: command.clone(),
            source,
        };
        let c_program = CString::new(program.as_os_str().as_bytes())
            .map_err(|_| spawn_err(io::Error::from_raw_os_error(libc::EINVAL)))?;
        let c_args: Vec<CString> = argv
            .iter()
            .map(|a| CString::new(a.as_bytes()))
            .collect::<Result<_, _>>()
            .map_err(|_| spawn_err(io::Error::from_raw_os_error(libc::EINVAL)))?;
        let mut c_argv: Vec<*const libc::c_char> = c_args.iter().map(|a| a.as_ptr()).collect();
        c_argv.push(std::ptr::null());

        let (gate_r, gate_w) = pipe().map_err(spawn_err)?;
        let (err_r, err_w) = pipe().map_err(spawn_err)?;

        // SAFETY: fork in a process that may have other threads; the child
        // only calls async-signal-safe functions (read, close, execv, write,
        // _exit) on memory prepared before the fork.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(spawn_err(io::Error::last_os_error()));
        }
        if pid == 0 {
            // Child.
            // SAFETY: async-signal-safe calls only, see above.
            unsafe {
                libc::close(gate_w.as_raw_fd());
                libc::close(err_r.as_raw_fd());
                let mut byte = 0u8;
                let n = libc::read(gate_r.as_raw_fd(), (&raw mut byte).cast(), 1);
                if n != 1 {
                    // The agent gave up (or died): never run unprobed.
                    libc::_exit(127);
                }
                libc::close(gate_r.as_raw_fd());
                libc::execv(c_program.as_ptr(), c_argv.as_ptr());
                let errno = *libc::__errno_location();
                let bytes = errno.to_ne_bytes();
                libc::write(err_w.as_raw_fd(), bytes.as_ptr().cast(), bytes.len());
                libc::_exit(127);
            }
        }
        drop(gate_r);
        drop(err_w);
        Ok(Self {
            pid: pid as u32,
            gate: Some(gate_w),
            exec_error: err_r,
            command,
            reaped: None,
            user_sys_ns: None,
        })
    }

    /// Lets the child exec. Returns an error if exec failed.
    pub fn release(&mut self) -> Result<(), TargetError> {
        if let Some(gate) = self.gate.take() {
            let byte = 1u8;
            // SAFETY: writing one byte from a live buffer to an open pipe.
            let n = unsafe { libc::write(gate.as_raw_fd(), (&raw const byte).cast(), 1) };
            if n != 1 {
                return Err(TargetError::Spawn {
                    command: self.command.clone(),
                    source: io::Error::last_os_error(),
                });
            }
        }
        // The error pipe is close-on-exec: EOF means exec succeeded.
        let mut buf = [0u8; 4];
        let mut got = 0;
        while got < 4 {
            // SAFETY: reading into the live remainder of `buf`.
            let n = unsafe {
                libc::read(
                    self.exec_error.as_raw_fd(),
                    buf[got..].as_mut_ptr().cast(),
                    4 - got,
                )
            };
            if n <= 0 {
                break;
            }
            got += n as usize;
        }
        if got == 4 {
            self.wait_blocking();
            return Err(TargetError::Exec {
                command: self.command.clone(),
                source: io::Error::from_raw_os_error(i32::from_ne_bytes(buf)),
            });
        }
        Ok(())
    }

    /// The exit code if the child has ended (128 + signal for a signal).
    pub fn try_wait(&mut self) -> Option<i32> {
        if self.reaped.is_none() {
            self.wait4(libc::WNOHANG);
        }
        self.reaped
    }

    pub fn wait_blocking(&mut self) -> i32 {
        loop {
            if let Some(code) = self.reaped {
                return code;
            }
            if !self.wait4(0) && io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
                return 127;
            }
        }
    }

    /// CPU time the command used, all threads, once it has been reaped, in
    /// user and in kernel mode (from `wait4`: what per-thread readings miss
    /// of threads that ended; uprobe handling is charged to the kernel
    /// side).
    pub fn user_sys_ns(&self) -> Option<(u64, u64)> {
        self.user_sys_ns
    }

    /// One `wait4`; whether it reaped the child (or found it reaped).
    fn wait4(&mut self, options: i32) -> bool {
        let mut status = 0;
        let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
        // SAFETY: wait4 on our own child with valid status and rusage
        // pointers we own.
        let r = unsafe { libc::wait4(self.pid as i32, &mut status, options, usage.as_mut_ptr()) };
        if r != self.pid as i32 {
            return false;
        }
        // SAFETY: wait4 reaped the child, so it filled the rusage.
        let usage = unsafe { usage.assume_init() };
        let tv = |t: libc::timeval| t.tv_sec as u64 * 1_000_000_000 + t.tv_usec as u64 * 1000;
        self.user_sys_ns = Some((tv(usage.ru_utime), tv(usage.ru_stime)));
        self.reaped = Some(decode_status(status));
        true
    }

    /// Ends a child that never got past the gate (setup failed).
    pub fn abort(&mut self) {
        // Closing the gate without a byte makes the child _exit(127).
        self.gate = None;
        self.wait_blocking();
    }
}

fn decode_status(status: i32) -> i32 {
    if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else if libc::WIFSIGNALED(status) {
        128 + libc::WTERMSIG(status)
    } else {
        1
    }
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two fds into a live array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both fds are new and owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Watches a process we did not start: becomes readable when it exits.
pub struct ProcessWatch {
    fd: OwnedFd,
}

impl ProcessWatch {
    pub fn open(pid: u32) -> Result<Self, TargetError> {
        // SAFETY: pidfd_open takes a pid and flags and returns a new fd.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
        if fd < 0 {
            let source = io::Error::last_os_error();
            if source.raw_os_error() == Some(libc::ESRCH) {
                return Err(TargetError::Symbols(SymbolError::NoSuchProcess { pid }));
            }
            return Err(TargetError::Watch { pid, source });
        }
        // SAFETY: a new fd owned by nobody else.
        Ok(Self {
            fd: unsafe { OwnedFd::from_raw_fd(fd as i32) },
        })
    }

    pub fn exited(&self) -> bool {
        let mut pfd = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, no wait.
        let r = unsafe { libc::poll(&mut pfd, 1, 0) };
        r > 0 && pfd.revents & (libc::POLLIN | libc::POLLHUP) != 0
    }
}
