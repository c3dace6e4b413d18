//! scope's reading side: everything that answers questions from a store of
//! Parquet files (a local directory or an object-store URL), without root.
//!
//! - [`store`]: finds a store's tables and sessions, checks each file, and
//!   registers every table in DataFusion as DuckDB sees it.
//! - [`output`]: writes a result as a table, CSV, JSON or Parquet.
//! - [`report`]: per-function figures (`scope-agent report`); [`tree`]: the
//!   call tree aggregated by path (`scope-agent tree`).
//! - [`travel`]: time travel: a thread's stack at an instant (`stack`) and
//!   its calls in order (`timeline`).
//! - [`export`]: Perfetto, Chrome trace JSON, folded stacks, flame graph
//!   SVG, pprof and speedscope, streamed from calls in (tid, start) order.
//! - [`compact`]: the cold tier: a session's segments merged into large
//!   files sorted for time travel, swapped in atomically; retention.
//! - [`objstore`]: `s3://` locations configured like AWS tools, access
//!   checks with one-line errors, whole-file uploads.
//! - [`time`]: the `+1.5s` / absolute time arguments.
//! - [`diff`]: two recordings compared per function, with bootstrap
//!   intervals, and gates for CI.
//! - [`analysis`]: findings, the AST map, complexity fits and predictions.
//! - [`llm`]: `explain`: findings sent to Gemini, Vertex AI, an
//!   OpenAI-compatible server or Mock, and the answer checked against them.

pub mod analysis;
pub mod cols;
pub mod compact;
pub mod diff;
pub mod export;
pub mod llm;
pub mod objstore;
pub mod output;
pub mod report;
pub mod store;
pub mod time;
pub mod travel;
pub mod tree;

pub use store::{OpenOptions, SessionSel, Store};
