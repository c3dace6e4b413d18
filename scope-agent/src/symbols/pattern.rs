//! User patterns `[MODULE:]GLOB`: which files and which functions to probe.
//!
//! C++ and Rust names contain `::`, so the module separator is the first
//! single `:` (one neither preceded nor followed by another `:`). Globs use
//! only `*` and `?`; every other character, including `[ ] { } < >`, matches
//! itself, so `std::vector<*>::push_back*` means what it says.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use wildmatch::WildMatch;

use super::FunctionSymbol;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    #[error("empty pattern")]
    Empty,
    #[error("pattern '{pattern}': no function name after the module")]
    EmptyFunction { pattern: String },
    #[error("pattern '{pattern}': no module name before ':'")]
    EmptyModule { pattern: String },
}

/// One `[MODULE:]GLOB` pattern, parsed once and matched many times.
#[derive(Clone)]
pub struct Pattern {
    /// The pattern as the user wrote it.
    pub raw: String,
    /// Glob over a module's file name; `None` selects the main executable.
    pub module: Option<String>,
    /// Glob over a function's demangled name or linkage name.
    pub name: String,
    module_glob: Option<WildMatch>,
    name_glob: WildMatch,
}

impl fmt::Debug for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pattern")
            .field("raw", &self.raw)
            .field("module", &self.module)
            .field("name", &self.name)
            .finish()
    }
}

impl PartialEq for Pattern {
    fn eq(&self, other: &Self) -> bool {
        self.raw == other.raw && self.module == other.module && self.name == other.name
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

impl FromStr for Pattern {
    type Err = PatternError;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        if raw.trim().is_empty() {
            return Err(PatternError::Empty);
        }
        let (module, name) = match module_separator(raw) {
            Some(i) => {
                let module = raw.get(..i).unwrap_or_default();
                let name = raw.get(i + 1..).unwrap_or_default();
                if module.is_empty() {
                    return Err(PatternError::EmptyModule {
                        pattern: raw.to_string(),
                    });
                }
                (Some(module.to_string()), name.to_string())
            }
            None => (None, raw.to_string()),
        };
        if name.is_empty() {
            return Err(PatternError::EmptyFunction {
                pattern: raw.to_string(),
            });
        }
        Ok(Pattern {
            raw: raw.to_string(),
            module_glob: module.as_deref().map(WildMatch::new),
            name_glob: WildMatch::new(&name),
            module,
            name,
        })
    }
}

/// Byte index of the first `:` that is not part of `::`.
fn module_separator(raw: &str) -> Option<usize> {
    let bytes = raw.as_bytes();
    (0..bytes.len()).find(|&i| {
        bytes.get(i) == Some(&b':')
            && (i == 0 || bytes.get(i - 1) != Some(&b':'))
            && bytes.get(i + 1) != Some(&b':')
    })
}

impl Pattern {
    /// Whether this pattern selects the file at `path`. Without a module
    /// part only the main executable is selected. A module glob matches the
    /// file name (or the whole path when it contains `/`); a bare library
    /// name without wildcards or dots, such as `libc`, also matches
    /// `libc.so` and `libc.so.*`, as bpftrace users expect.
    pub fn matches_module(&self, path: &Path, is_main: bool) -> bool {
        let (Some(module), Some(glob)) = (&self.module, &self.module_glob) else {
            return is_main;
        };
        if module.contains('/') {
            return glob.matches(&path.to_string_lossy());
        }
        let Some(base) = path.file_name().map(|n| n.to_string_lossy()) else {
            return false;
        };
        if glob.matches(&base) {
            return true;
        }
        if !module.contains(['*', '?', '.']) {
            return base
                .strip_prefix(module.as_str())
                .is_some_and(|rest| rest == ".so" || rest.starts_with(".so."));
        }
        false
    }

    /// Whether this pattern selects `f`: the glob matches its demangled name,
    /// its linkage name, or (for C++) its demangled name without the
    /// parameter list, so `ns::f*` and `std::vector<*>::push_back` both work.
    pub fn matches_function(&self, f: &FunctionSymbol) -> bool {
        if self.name_glob.matches(&f.name)
            || self.name_glob.matches(&f.symbol)
            || f.aliases.iter().any(|a| self.name_glob.matches(a))
        {
            return true;
        }
        self.matches_name(&f.name)
    }

    /// Whether the glob matches `name` (a demangled name), with or without
    /// its C++ parameter list.
    pub fn matches_name(&self, name: &str) -> bool {
        self.name_glob.matches(name)
            || without_parameters(name).is_some_and(|n| self.name_glob.matches(n))
    }
}

/// `ns::f<int>(int) const` → `ns::f<int>`; `None` when there is no
/// parameter list.
fn without_parameters(name: &str) -> Option<&str> {
    let mut angle = 0i32;
    let bytes = name.as_bytes();
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'<' => angle += 1,
            b'>' => angle -= 1,
            b'(' if angle <= 0 => {
                const ANONYMOUS: &str = "(anonymous namespace)";
                if name.get(i..)?.starts_with(ANONYMOUS) {
                    i += ANONYMOUS.len();
                    continue;
                }
                let head = name.get(..i)?;
                // `operator()(int)`: the first `()` belongs to the name.
                if head.ends_with("operator") && name.get(i..)?.starts_with("()") {
                    i += 2;
                    continue;
                }
                return if head.is_empty() { None } else { Some(head) };
            }
            _ => {}
        }
        i += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn parse(s: &str) -> Pattern {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn function(name: &str, symbol: &str) -> FunctionSymbol {
        FunctionSymbol {
            name: name.into(),
            symbol: symbol.into(),
            address: 0x1000,
            size: 16,
            file_offset: 0x1000,
            ..Default::default()
        }
    }

    #[test]
    fn splits_on_first_single_colon() {
        let cases: &[(&str, Option<&str>, &str)] = &[
            (
                "libpython3.11.so*:PyLong_*",
                Some("libpython3.11.so*"),
                "PyLong_*",
            ),
            ("grep_searcher::*", None, "grep_searcher::*"),
            (
                "std::vector<*>::push_back",
                None,
                "std::vector<*>::push_back",
            ),
            ("libfoo.so:ns::f*", Some("libfoo.so"), "ns::f*"),
            ("main", None, "main"),
            ("*", None, "*"),
            ("libc.so.6:malloc", Some("libc.so.6"), "malloc"),
            ("::f", None, "::f"),
            ("a:b:c", Some("a"), "b:c"),
        ];
        for &(raw, module, name) in cases {
            let p = parse(raw);
            assert_eq!(p.raw, raw);
            assert_eq!(p.module.as_deref(), module, "{raw}");
            assert_eq!(p.name, name, "{raw}");
        }
    }

    #[test]
    fn rejects_empty_parts() {
        assert_eq!("".parse::<Pattern>(), Err(PatternError::Empty));
        let e = "libc.so.6:".parse::<Pattern>().unwrap_err();
        assert!(e.to_string().contains("libc.so.6:"), "{e}");
        let e = ":malloc".parse::<Pattern>().unwrap_err();
        assert!(e.to_string().contains(":malloc"), "{e}");
    }

    #[test]
    fn module_matching() {
        let libc = PathBuf::from("/usr/lib/x86_64-linux-gnu/libc.so.6");
        let exe = PathBuf::from("/tmp/prog");
        let p = parse("malloc");
        assert!(p.matches_module(&exe, true));
        assert!(!p.matches_module(&libc, false));
        assert!(parse("libc.so*:malloc").matches_module(&libc, false));
        assert!(parse("libc:malloc").matches_module(&libc, false));
        assert!(!parse("lib:malloc").matches_module(&libc, false));
        assert!(!parse("libc.so:malloc").matches_module(&libc, false));
        assert!(parse("/usr/lib/*/libc.so.6:malloc").matches_module(&libc, false));
        assert!(parse("prog:main").matches_module(&exe, true));
        assert!(!parse("libc*:malloc").matches_module(&exe, true));
    }

    #[test]
    fn function_matching() {
        let rust = function("grep_searcher::searcher::Searcher::new", "_ZN...E");
        assert!(parse("grep_searcher::*").matches_function(&rust));
        assert!(!parse("grep_printer::*").matches_function(&rust));

        let cpp = function(
            "std::vector<int, std::allocator<int> >::push_back(int const&)",
            "_ZNSt6vectorIiSaIiEE9push_backERKi",
        );
        assert!(parse("std::vector<*>::push_back").matches_function(&cpp));
        assert!(parse("std::vector<*>::push_back(*)").matches_function(&cpp));
        assert!(parse("_ZNSt6vector*").matches_function(&cpp));
        assert!(!parse("std::vector<*>::pop_back").matches_function(&cpp));

        let brackets = function("f[1]", "f[1]");
        assert!(parse("f[1]").matches_function(&brackets));
        assert!(!parse("f[2]").matches_function(&brackets));

        let c = function("compute_sum", "compute_sum");
        assert!(parse("compute_*").matches_function(&c));
        assert!(parse("comp?te_sum").matches_function(&c));
        assert!(!parse("compute").matches_function(&c));
    }

    #[test]
    fn parameter_list_removal() {
        assert_eq!(without_parameters("f(int)"), Some("f"));
        assert_eq!(
            without_parameters("a::b<c<d>>::e(x) const"),
            Some("a::b<c<d>>::e")
        );
        assert_eq!(
            without_parameters("S::operator()(int)"),
            Some("S::operator()")
        );
        assert_eq!(without_parameters("plain"), None);
        assert_eq!(without_parameters("(anonymous)"), None);
        assert_eq!(
            without_parameters("(anonymous namespace)::f(int)"),
            Some("(anonymous namespace)::f")
        );
    }
}
