//! The demangler over arbitrary symbol names (a target's symbol table is
//! its author's to write): Rust legacy and v0, C++, anything else. Any
//! panic is a bug. Run with `cargo xtask fuzz --target demangle`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = scope_agent::symbols::demangle::demangle(s);
    }
});
