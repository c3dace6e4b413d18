//! Empty host-side library so `scope-agent` can name this package as a build
//! dependency (cargo then rebuilds the agent when the eBPF sources change).
#![no_std]
