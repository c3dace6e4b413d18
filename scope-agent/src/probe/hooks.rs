//! `--hooks tls,pg,net`: well-known library entry points, probed with
//! their arguments by signatures written here (these libraries ship
//! without DWARF, and their C APIs are stable): what a request crosses.
//!
//! - `pg`: libpq's PQexec, PQsendQuery, PQexecParams, PQsendQueryParams,
//!   PQprepare: the query text (a `char *`, read up to the string cap);
//!   parameter values are never read (only their count).
//! - `tls`: OpenSSL's SSL_read, SSL_write and their `_ex` forms: bytes (the
//!   return value, or `*written`'s pointer for `_ex`); the first N bytes of
//!   SSL_write's plaintext only with `--hook-payload N`.
//! - `net`: libc's connect, accept, accept4, send, recv, sendto, recvfrom:
//!   the socket and bytes (the return value), and for connect and sendto
//!   the peer's address (read at entry as a `struct sockaddr`, stored as
//!   "10.0.0.3:5432"), and accept's (written by the kernel as the call
//!   returns: its pointer kept per thread at the entry, the address read
//!   at the return); no payload.
//!
//! A hook's function that a module lacks (a static OpenSSL, a libpq without
//! its symbols) leaves its pattern waiting, and the end of the session says
//! which.

use crate::capture::args::{ArgLayout, ArgSlot, RegValue};
use scope_common::MAX_ARGS;

/// One group of hooks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    Tls,
    Pg,
    Net,
}

/// How a parameter is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum P {
    /// A pointer: its address.
    Ptr,
    I32,
    U32,
    /// `size_t`.
    Size,
    /// `ssize_t`.
    ISize,
    /// A NUL-terminated string read at entry (query text).
    Str,
    /// A buffer read as a string only with `--hook-payload`.
    Payload,
    /// A `struct sockaddr *` read at entry: the peer.
    Addr,
    /// A `struct sockaddr *` the function fills in, read at its return
    /// (accept's peer).
    OutAddr,
}

/// A hooked function: its module glob, name, parameters and return.
struct HookFn {
    hook: Hook,
    module: &'static str,
    name: &'static str,
    params: &'static [(&'static str, P)],
    ret: P,
}

const HOOKS: &[HookFn] = &[
    HookFn {
        hook: Hook::Pg,
        module: "libpq.so*",
        name: "PQexec",
        params: &[("conn", P::Ptr), ("query", P::Str)],
        ret: P::Ptr,
    },
    HookFn {
        hook: Hook::Pg,
        module: "libpq.so*",
        name: "PQsendQuery",
        params: &[("conn", P::Ptr), ("query", P::Str)],
        ret: P::I32,
    },
    HookFn {
        hook: Hook::Pg,
        module: "libpq.so*",
        name: "PQexecParams",
        params: &[("conn", P::Ptr), ("command", P::Str), ("nParams", P::I32)],
        ret: P::Ptr,
    },
    HookFn {
        hook: Hook::Pg,
        module: "libpq.so*",
        name: "PQsendQueryParams",
        params: &[("conn", P::Ptr), ("command", P::Str), ("nParams", P::I32)],
        ret: P::I32,
    },
    HookFn {
        hook: Hook::Pg,
        module: "libpq.so*",
        name: "PQprepare",
        params: &[
            ("conn", P::Ptr),
            ("stmtName", P::Str),
            ("query", P::Str),
            ("nParams", P::I32),
        ],
        ret: P::Ptr,
    },
    HookFn {
        hook: Hook::Tls,
        module: "libssl.so*",
        name: "SSL_read",
        params: &[("ssl", P::Ptr), ("buf", P::Ptr), ("num", P::I32)],
        ret: P::I32,
    },
    HookFn {
        hook: Hook::Tls,
        module: "libssl.so*",
        name: "SSL_write",
        params: &[("ssl", P::Ptr), ("buf", P::Payload), ("num", P::I32)],
        ret: P::I32,
    },
    HookFn {
        hook: Hook::Tls,
        module: "libssl.so*",
        name: "SSL_read_ex",
        params: &[
            ("ssl", P::Ptr),
            ("buf", P::Ptr),
            ("num", P::Size),
            ("readbytes", P::Ptr),
        ],
        ret: P::I32,
    },
    HookFn {
        hook: Hook::Tls,
        module: "libssl.so*",
        name: "SSL_write_ex",
        params: &[
            ("ssl", P::Ptr),
            ("buf", P::Payload),
            ("num", P::Size),
            ("written", P::Ptr),
        ],
        ret: P::I32,
    },
    HookFn {
        hook: Hook::Net,
        module: "libc.so*",
        name: "connect",
        params: &[("fd", P::I32), ("addr", P::Addr), ("addrlen", P::U32)],
        ret: P::I32,
    },
    HookFn {
        hook: Hook::Net,
        module: "libc.so*",
        name: "accept",
        params: &[("fd", P::I32), ("addr", P::OutAddr), ("addrlen", P::Ptr)],
        ret: P::I32,
    },
    HookFn {
        hook: Hook::Net,
        module: "libc.so*",
        name: "accept4",
        params: &[
            ("fd", P::I32),
            ("addr", P::OutAddr),
            ("addrlen", P::Ptr),
            ("flags", P::I32),
        ],
        ret: P::I32,
    },
    HookFn {
        hook: Hook::Net,
        module: "libc.so*",
        name: "send",
        params: &[
            ("fd", P::I32),
            ("buf", P::Ptr),
            ("len", P::Size),
            ("flags", P::I32),
        ],
        ret: P::ISize,
    },
    HookFn {
        hook: Hook::Net,
        module: "libc.so*",
        name: "recv",
        params: &[
            ("fd", P::I32),
            ("buf", P::Ptr),
            ("len", P::Size),
            ("flags", P::I32),
        ],
        ret: P::ISize,
    },
    HookFn {
        hook: Hook::Net,
        module: "libc.so*",
        name: "sendto",
        params: &[
            ("fd", P::I32),
            ("buf", P::Ptr),
            ("len", P::Size),
            ("flags", P::I32),
            ("dest_addr", P::Addr),
            ("addrlen", P::U32),
        ],
        ret: P::ISize,
    },
    HookFn {
        hook: Hook::Net,
        module: "libc.so*",
        name: "recvfrom",
        params: &[
            ("fd", P::I32),
            ("buf", P::Ptr),
            ("len", P::Size),
            ("flags", P::I32),
        ],
        ret: P::ISize,
    },
];

/// `tls,pg,net` → the hooks (each once).
pub fn parse_hooks(s: &str) -> Result<Vec<Hook>, String> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let h = match part {
            "tls" => Hook::Tls,
            "pg" => Hook::Pg,
            "net" => Hook::Net,
            other => {
                return Err(format!(
                    "--hooks {s}: unknown hook '{other}' (tls, pg, net)"
                ));
            }
        };
        if !out.contains(&h) {
            out.push(h);
        }
    }
    if out.is_empty() {
        return Err(format!("--hooks {s}: name at least one of tls, pg, net"));
    }
    Ok(out)
}

/// The `MODULE:FUNCTION` patterns of `hooks`.
pub fn patterns(hooks: &[Hook]) -> Vec<String> {
    HOOKS
        .iter()
        .filter(|f| hooks.contains(&f.hook))
        .map(|f| format!("{}:{}", f.module, f.name))
        .collect()
}

/// Whether `raw` is the pattern of a hook (`libssl.so*:SSL_read`, …).
pub fn is_hook_pattern(raw: &str) -> bool {
    HOOKS
        .iter()
        .any(|f| raw.strip_prefix(f.module).and_then(|r| r.strip_prefix(':')) == Some(f.name))
}

/// The argument layout of hooked function `name` (`None`: not a hook):
/// with `payload`, SSL_write's buffer is read as a string too.
pub fn layout(name: &str, payload: bool) -> Option<ArgLayout> {
    let f = HOOKS.iter().find(|f| f.name == name)?;
    let value = |p: P| match p {
        P::Ptr | P::Str | P::Payload | P::Size | P::Addr | P::OutAddr => RegValue::Unsigned(64),
        P::I32 => RegValue::Signed(32),
        P::U32 => RegValue::Unsigned(32),
        P::ISize => RegValue::Signed(64),
    };
    let mut slots = [ArgSlot::default(); MAX_ARGS];
    let mut strings = 0u8;
    let mut lengths = [0u8; MAX_ARGS];
    let mut addrs = 0u8;
    let mut ret_addr = 0u8;
    for (i, (_, p)) in f.params.iter().enumerate().take(MAX_ARGS) {
        slots[i] = ArgSlot {
            reg: i as u8,
            value: value(*p),
        };
        if *p == P::Str || (*p == P::Payload && payload) {
            strings |= 1 << i;
        }
        if *p == P::Addr {
            addrs |= 1 << i;
        }
        if *p == P::OutAddr {
            ret_addr = i as u8 + 1;
        }
        // A payload is a buffer of the next parameter's length.
        if *p == P::Payload {
            lengths[i] = i as u8 + 2;
        }
    }
    Some(ArgLayout {
        len: f.params.len().min(MAX_ARGS) as u8,
        slots,
        ret: value(f.ret),
        strings,
        lengths,
        addrs,
        ret_addr,
    })
}

/// Whether hooked function `name` starts a request when it returns > 0:
/// a connection accepted, or bytes read from one (see the correlator's
/// `Requests`).
pub fn starts_request(name: &str) -> bool {
    matches!(
        name,
        "accept" | "accept4" | "recv" | "recvfrom" | "SSL_read" | "SSL_read_ex"
    )
}

/// The parameter names of hooked function `name`, for `functions`.
pub fn param_names(name: &str) -> Option<Vec<String>> {
    HOOKS
        .iter()
        .find(|f| f.name == name)
        .map(|f| f.params.iter().map(|(n, _)| n.to_string()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hooks_parse_and_name_their_functions() {
        assert_eq!(
            parse_hooks("pg, tls,pg").unwrap(),
            vec![Hook::Pg, Hook::Tls]
        );
        assert!(parse_hooks("ftp").unwrap_err().contains("'ftp'"));
        assert!(parse_hooks(",").is_err());
        let p = patterns(&[Hook::Pg]);
        assert!(p.contains(&"libpq.so*:PQexec".to_string()));
        assert!(p.iter().all(|p| p.starts_with("libpq.so*:")));
        assert!(
            patterns(&[Hook::Tls, Hook::Pg, Hook::Net])
                .iter()
                .all(|p| is_hook_pattern(p))
        );
        assert!(!is_hook_pattern("libssl.so*:SSL_new"));
        assert!(!is_hook_pattern("libssl*:SSL_read"));
    }

    #[test]
    fn layouts_read_query_text_and_payload_only_when_asked() {
        let q = layout("PQexec", false).unwrap();
        assert_eq!(q.strings, 0b10);
        assert_eq!(layout("SSL_write", false).unwrap().strings, 0);
        assert_eq!(layout("SSL_write", true).unwrap().strings, 0b10);
        let s = layout("send", true).unwrap();
        assert_eq!((s.len, s.strings), (4, 0));
        assert_eq!(s.ret, RegValue::Signed(64));
        assert!(layout("malloc", true).is_none());
    }
}
