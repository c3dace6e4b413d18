//! The probe planner: user patterns + the target's modules → the functions to
//! probe, each with a function id (the BPF cookie) and a uprobe file offset.
//!
//! Symbols are read once per module here and never again during the session.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use crate::symbols::pattern::Pattern;
use crate::symbols::{FunctionSymbol, SkipCounts, SymbolError, load_module};

/// A file the target has mapped (or will map) that patterns may select.
#[derive(Debug, Clone)]
pub struct ModuleCandidate {
    /// The path users see and the `functions` table stores.
    pub display_path: PathBuf,
    /// What the agent opens to read the ELF (may be under /proc/PID/).
    pub open_path: PathBuf,
    /// What the kernel is given for the uprobe (may be under /proc/PID/).
    pub attach_path: PathBuf,
    pub is_main: bool,
}

/// Functions the default plan (no `-f`) leaves out: C runtime start-up and
/// tear-down code the user did not write.
const RUNTIME_FUNCTIONS: &[&str] = &[
    "_start",
    "_init",
    "_fini",
    "frame_dummy",
    "register_tm_clones",
    "deregister_tm_clones",
    "__do_global_dtors_aux",
    "__libc_csu_init",
    "__libc_csu_fini",
    "_dl_relocate_static_pie",
];

#[derive(Debug, Clone)]
pub struct PlannedFunction {
    pub function_id: u32,
    pub symbol: FunctionSymbol,
    /// Capture arguments and return value (`--args`, `--args-for`); set by
    /// [`super::args::select`].
    pub args: bool,
    /// For a function of a Go module: its entry and RET-site probes
    /// (`probe::go`); it gets no return probe.
    pub go: Option<super::go::GoProbes>,
}

#[derive(Debug, Clone)]
pub struct ModulePlan {
    pub candidate: ModuleCandidate,
    pub build_id: Option<String>,
    pub has_debug_info: bool,
    /// Linked by the Go toolchain: entry + RET-site probes, per-goroutine
    /// stacks, no return probes.
    pub go: bool,
    pub functions: Vec<PlannedFunction>,
}

#[derive(Debug, Default)]
pub struct Plan {
    pub modules: Vec<ModulePlan>,
    /// Functions that could not be probed (size 0, PLT stubs, aliases...).
    pub skipped: SkipCounts,
    /// With no pattern: how many functions the main executable has in all,
    /// when more than the limit (only the first `limit` are probed).
    pub truncated_from: Option<usize>,
    /// Modules matched by a pattern whose symbols could not be read.
    pub warnings: Vec<String>,
}

impl Plan {
    pub fn function_count(&self) -> usize {
        self.modules.iter().map(|m| m.functions.len()).sum()
    }

    pub fn functions(&self) -> impl Iterator<Item = (&ModulePlan, &PlannedFunction)> {
        self.modules
            .iter()
            .flat_map(|m| m.functions.iter().map(move |f| (m, f)))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("no functions matched '{pattern}' in {modules}")]
    NoMatch { pattern: String, modules: String },
    #[error("no module matched '{module}' (pattern '{pattern}'); mapped files: {available}")]
    NoModule {
        pattern: String,
        module: String,
        available: String,
    },
    #[error(transparent)]
    Symbols(#[from] SymbolError),
}

/// Resolves `patterns` against `candidates`. With no pattern, every function
/// of the main executable is probed (C runtime start-up code left out), up
/// to `default_limit`.
pub fn build_plan(
    candidates: &[ModuleCandidate],
    patterns: &[Pattern],
    default_limit: usize,
) -> Result<Plan, PlanError> {
    let mut plan = Plan::default();
    let default_mode = patterns.is_empty();
    let default_pattern: Vec<Pattern> = if default_mode {
        vec!["*".parse().map_err(|_| PlanError::NoMatch {
            pattern: "*".into(),
            modules: String::new(),
        })?]
    } else {
        Vec::new()
    };
    let patterns = if default_mode {
        &default_pattern
    } else {
        patterns
    };

    let mut matched = vec![false; patterns.len()];
    let mut module_matched = vec![false; patterns.len()];
    let mut searched: Vec<Vec<String>> = vec![Vec::new(); patterns.len()];
    let mut next_id: u32 = 1;

    for candidate in candidates {
        let selecting: Vec<usize> = (0..patterns.len())
            .filter(|&i| patterns[i].matches_module(&candidate.display_path, candidate.is_main))
            .collect();
        if selecting.is_empty() {
            continue;
        }
        for &i in &selecting {
            module_matched[i] = true;
            searched[i].push(candidate.display_path.display().to_string());
        }
        let symbols = match load_module(&candidate.open_path, &candidate.display_path) {
            Ok(s) => s,
            Err(e) => {
                // A module chosen by name must be readable; one of many
                // matched by a glob may be skipped with a warning.
                let named_alone = selecting
                    .iter()
                    .any(|&i| patterns[i].module.as_deref().is_none_or(|m| !has_glob(m)));
                if named_alone || candidate.is_main {
                    return Err(e.into());
                }
                plan.warnings.push(e.to_string());
                continue;
            }
        };
        plan.warnings.extend(symbols.warnings.iter().cloned());
        // Only meaningful when probing "everything": with explicit patterns
        // we cannot tell whether an unprobeable symbol would have matched.
        // A bare `*` would have matched every unprobeable symbol too.
        if default_mode || selecting.iter().any(|&i| patterns[i].name == "*") {
            add_skips(&mut plan.skipped, &symbols.skipped);
        }
        let mut seen = HashSet::new();
        let mut functions = Vec::new();
        for f in &symbols.functions {
            if default_mode && RUNTIME_FUNCTIONS.contains(&f.symbol.as_str()) {
                continue;
            }
            // Go binaries carry the whole runtime: by default only the
            // user's `main` package is probed.
            if default_mode && symbols.go && !f.name.starts_with("main.") {
                continue;
            }
            // `_start` is jumped to with argc where a return address would
            // be: a return probe would overwrite argc. It never returns.
            if f.symbol == "_start" {
                if selecting.iter().any(|&i| patterns[i].matches_function(f)) {
                    plan.skipped.not_executable += 1;
                }
                continue;
            }
            let mut hit = false;
            for &i in &selecting {
                if patterns[i].matches_function(f) {
                    matched[i] = true;
                    hit = true;
                }
            }
            if hit && seen.insert(f.address) {
                functions.push(f.clone());
            }
        }
        if default_mode && functions.len() > default_limit {
            plan.truncated_from = Some(functions.len());
            functions.truncate(default_limit);
        }
        if functions.is_empty() {
            continue;
        }
        let functions = functions
            .into_iter()
            .map(|symbol| {
                let function_id = next_id;
                next_id += 1;
                PlannedFunction {
                    function_id,
                    symbol,
                    args: false,
                    go: None,
                }
            })
            .collect();
        let mut module = ModulePlan {
            candidate: candidate.clone(),
            build_id: symbols.build_id.clone(),
            has_debug_info: symbols.has_debug_info,
            go: symbols.go,
            functions,
        };
        if module.go {
            super::go::plan_module(&mut module)?;
        }
        plan.modules.push(module);
    }

    for (i, pattern) in patterns.iter().enumerate() {
        if !module_matched[i] {
            let module = pattern
                .module
                .clone()
                .unwrap_or_else(|| "main executable".into());
            return Err(PlanError::NoModule {
                pattern: pattern.raw.clone(),
                module,
                available: basenames(candidates),
            });
        }
        if !matched[i] {
            return Err(PlanError::NoMatch {
                pattern: pattern.raw.clone(),
                modules: searched[i].join(", "),
            });
        }
    }
    Ok(plan)
}

fn has_glob(s: &str) -> bool {
    s.contains(['*', '?'])
}

fn add_skips(total: &mut SkipCounts, more: &SkipCounts) {
    total.zero_size += more.zero_size;
    total.duplicate_address += more.duplicate_address;
    total.plt_or_import += more.plt_or_import;
    total.not_executable += more.not_executable;
}

fn basenames(candidates: &[ModuleCandidate]) -> String {
    let mut names: Vec<String> = candidates
        .iter()
        .map(|c| {
            c.display_path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        })
        .collect();
    names.dedup();
    names.join(", ")
}

/// Total of the skip counters, for messages.
pub fn skipped_total(s: &SkipCounts) -> usize {
    s.zero_size + s.duplicate_address + s.plt_or_import + s.not_executable
}

/// The basename of a path, for short messages.
pub fn short_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| p.display().to_string())
}
