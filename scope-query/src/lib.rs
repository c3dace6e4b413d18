//! scope's reading side: everything that answers questions from a store of
//! Parquet files (a local directory or an object-store URL) without root.

pub mod objstore;
