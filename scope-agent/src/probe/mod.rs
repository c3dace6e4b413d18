//! Probes: user patterns → resolved functions ([`plan`]) → attached uprobes
//! ([`attach`]). No rebuild of the target, no per-call symbol work: the plan
//! is made once per session and the kernel reports each function by cookie.

pub mod args;
pub mod attach;
pub mod go;
pub mod hooks;
pub mod plan;
pub mod sched;
pub mod usdt;
pub mod watch;
