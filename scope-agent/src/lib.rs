//! scope-agent: the library behind the `scope-agent` binary.
//!
//! The path of one event reads as the module names:
//! `probe` (patterns → resolved functions → attached uprobes) →
//! `capture` (ring buffer → correlator → [`capture::EventSink`]) →
//! `storage` (Arrow batches → Parquet segments) and `summary` (the
//! end-of-run table). `symbols` (ELF, DWARF, process maps) feeds `probe` and
//! knows nothing of eBPF; `session` runs one recording from start to end.
//!
//! Without the default `agent` feature only `symbols` is built (the fuzz
//! targets need nothing else).
#[cfg(feature = "agent")]
pub mod capture;
#[cfg(feature = "agent")]
pub mod cli;
#[cfg(feature = "agent")]
pub mod governor;
#[cfg(feature = "agent")]
pub mod listing;
#[cfg(feature = "agent")]
pub mod live;
#[cfg(feature = "agent")]
pub mod probe;
#[cfg(feature = "agent")]
pub mod read;
#[cfg(feature = "agent")]
pub mod sample;
#[cfg(feature = "agent")]
pub mod serve;
#[cfg(feature = "agent")]
pub mod session;
#[cfg(feature = "agent")]
pub mod status;
#[cfg(feature = "agent")]
pub mod storage;
#[cfg(feature = "agent")]
pub mod summary;
pub mod symbols;
#[cfg(feature = "agent")]
pub mod target;
#[cfg(feature = "agent")]
pub mod time;
#[cfg(feature = "agent")]
pub mod utc;
