//! Analysis over the store: findings computed from the data (never invented),
//! the AST map of the sources (or the binary's control-flow graph), empirical
//! complexity fits and predictions.
//!
//! - [`finding`]: the [`Finding`] every part produces and the `findings` table.
//! - [`ast`]: the AST map: loops, call sites and branches per function, from
//!   the sources (tree-sitter) or, without them, from the binary ([`cfg`]).

pub mod ast;
pub mod cfg;
pub mod finding;

pub use finding::{Evidence, Finding, Kind};
