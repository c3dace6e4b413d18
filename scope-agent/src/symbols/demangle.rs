//! Turns linkage names into the names users write: Rust (legacy and v0,
//! without the `::h<hash>` suffix) and C++ (Itanium ABI). Anything else, and
//! anything that fails to demangle, is returned unchanged.
//!
//! `rustc_demangle` also accepts many C++ `_ZN...E` names, so a symbol is
//! treated as Rust only when it looks like Rust: a v0 `_R` prefix, or a
//! legacy name ending in the `17h<16 hex digits>E` hash segment.

use cpp_demangle::{DemangleOptions, Symbol as CppSymbol};

/// The readable name of `symbol`.
pub fn demangle(symbol: &str) -> String {
    if looks_like_rust(symbol)
        && let Ok(d) = rustc_demangle::try_demangle(symbol)
    {
        // The alternate format leaves out the hash (legacy) and the crate
        // disambiguators (v0).
        return format!("{d:#}");
    }
    if symbol.starts_with("_Z")
        && let Some(d) = demangle_cpp(symbol)
    {
        return d;
    }
    symbol.to_string()
}

fn demangle_cpp(symbol: &str) -> Option<String> {
    let parsed = CppSymbol::new(symbol.as_bytes()).ok()?;
    // Without the return type of template functions (`void ns::f<int>()`), so
    // every name starts with its scope and `ns::*` globs match it.
    let text = parsed
        .demangle(&DemangleOptions::default().no_return_type())
        .ok()?;
    if text.is_empty() { None } else { Some(text) }
}

/// True for Rust v0 names and Rust legacy names (with their hash segment).
fn looks_like_rust(symbol: &str) -> bool {
    if symbol.starts_with("_R") {
        return true;
    }
    if !symbol.starts_with("_ZN") {
        return false;
    }
    // LTO and other passes append suffixes such as `.llvm.1234`; the name
    // itself may contain dots (`std..rt`), so try each `E.` boundary.
    has_legacy_hash(symbol)
        || symbol
            .match_indices("E.")
            .any(|(i, _)| symbol.get(..=i).is_some_and(has_legacy_hash))
}

/// `...17h0123456789abcdefE`: the last path segment is `h` + 16 hex digits.
fn has_legacy_hash(base: &str) -> bool {
    let Some(rest) = base.strip_suffix('E') else {
        return false;
    };
    let Some(hash_segment) = rest.len().checked_sub(17).and_then(|i| rest.get(i..)) else {
        return false;
    };
    let Some(digits) = hash_segment.strip_prefix('h') else {
        return false;
    };
    let Some(prefix) = rest.get(..rest.len() - 17) else {
        return false;
    };
    digits.len() == 16 && digits.bytes().all(|b| b.is_ascii_hexdigit()) && prefix.ends_with("17")
}

#[cfg(test)]
mod tests {
    use super::demangle;

    #[test]
    fn rust_legacy_without_hash() {
        assert_eq!(demangle("_ZN3foo3bar17h0123456789abcdefE"), "foo::bar");
        assert_eq!(
            demangle(
                "_ZN4core3ptr85drop_in_place$LT$std..rt..lang_start$LT$$LP$$RP$$GT$..$u7b$$u7b$closure$u7d$$u7d$$GT$17h0f8a5d6e3a2b1c4dE"
            ),
            "core::ptr::drop_in_place<std::rt::lang_start<()>::{{closure}}>"
        );
        assert_eq!(
            demangle("_ZN3foo3bar17h0123456789abcdefE.llvm.4455"),
            "foo::bar"
        );
    }

    #[test]
    fn rust_v0() {
        assert_eq!(demangle("_RNvCs1234_7mycrate3foo"), "mycrate::foo");
        assert_eq!(
            demangle("_RNvMs_NtCs4fqI2P2rA04_11utf8_decode6decodeNtB4_7Decoder3new"),
            "<utf8_decode::decode::Decoder>::new"
        );
    }

    #[test]
    fn cpp() {
        let v = demangle("_ZNSt6vectorIiSaIiEE9push_backERKi");
        assert!(v.contains("std::vector<int"), "{v}");
        assert!(v.contains("push_back"), "{v}");
        assert_eq!(demangle("_ZN3foo3barEv"), "foo::bar()");
        assert_eq!(demangle("_Z3addii"), "add(int, int)");
        // A template function's return type is left out.
        assert_eq!(demangle("_ZN3geo4makeIiEEvT_"), "geo::make<int>(int)");
    }

    #[test]
    fn plain_and_garbage_unchanged() {
        for s in [
            "main",
            "",
            "_",
            "_Z",
            "_ZN",
            "_R",
            "_ZN3foo",
            "_ZNE17h0123456789abcdefE",
            "_ZZZZZZZZZZ",
            "_Z\u{fffd}\u{0}",
            "_RNvC",
            "17h0123456789abcdefE",
        ] {
            let _ = demangle(s);
        }
        assert_eq!(demangle("malloc"), "malloc");
        assert_eq!(demangle("_ZZZZZZZZZZ"), "_ZZZZZZZZZZ");
        assert_eq!(demangle("_ZN3foo"), "_ZN3foo");
    }

    #[test]
    fn cpp_name_looking_like_rust_prefix_goes_to_cpp() {
        // A C++ nested name with no Rust hash must not go through rustc-demangle
        // (which would print `foo::bar` without the parameter list).
        assert_eq!(demangle("_ZN3foo3barEi"), "foo::bar(int)");
    }
}
