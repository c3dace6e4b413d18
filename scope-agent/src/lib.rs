//! scope-agent: the library behind the `scope-agent` binary.
//!
//! The path of one event reads as the module names:
//! `probe` (patterns → resolved functions → attached uprobes) →
//! `capture` (ring buffer → correlator → [`capture::EventSink`]) →
//! `storage` (Arrow batches → Parquet segments) and `summary` (the
//! end-of-run table). `symbols` (ELF, DWARF, process maps) feeds `probe` and
//! knows nothing of eBPF; `session` runs one recording from start to end.
pub mod capture;
pub mod cli;
pub mod governor;
pub mod listing;
pub mod live;
pub mod probe;
pub mod read;
pub mod session;
pub mod status;
pub mod storage;
pub mod summary;
pub mod symbols;
pub mod target;
pub mod time;
