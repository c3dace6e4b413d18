//! Analysis over the store: findings computed from the data (never invented),
//! the AST map of the sources (or the binary's control-flow graph), empirical
//! complexity fits and predictions.
//!
//! - [`finding`]: the [`Finding`] every part produces and the `findings` table.

pub mod complexity;
pub mod finding;
pub mod predict;

pub use finding::{Evidence, Finding, Kind};
