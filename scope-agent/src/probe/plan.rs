//! The probe planner: user patterns + the target's modules → the functions to
//! probe, each with a function id (the BPF cookie) and a uprobe file offset.
//!
//! Symbols are read once per module here and never again during the session.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use crate::symbols::pattern::Pattern;
use crate::symbols::{FunctionSymbol, ModuleSymbols, SkipCounts, SymbolError, load_module};

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
    /// For an inlined instance (`--inlined`): where its code sits. Probed
    /// at its first instruction only (there is no return instruction to
    /// probe), so its calls have a count and a start, no duration.
    pub inline_site: Option<InlineSite>,
}

/// Where an inlined instance sits: the function its code was placed in and
/// the call site in the source.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InlineSite {
    /// The out-of-line function the code sits in, if DWARF names one.
    pub caller: Option<String>,
    pub call_file: Option<String>,
    pub call_line: Option<u32>,
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
    /// Without `--inlined`: how many inlined instances the patterns match
    /// (not probed; for a hint).
    pub inlined_not_probed: usize,
}

impl Plan {
    pub fn function_count(&self) -> usize {
        self.modules.iter().map(|m| m.functions.len()).sum()
    }

    /// Planned inlined instances (entry-only probes).
    pub fn inline_instances(&self) -> impl Iterator<Item = &PlannedFunction> {
        self.functions()
            .map(|(_, f)| f)
            .filter(|f| f.inline_site.is_some())
    }

    pub fn functions(&self) -> impl Iterator<Item = (&ModulePlan, &PlannedFunction)> {
        self.modules
            .iter()
            .flat_map(|m| m.functions.iter().map(move |f| (m, f)))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("no functions matched '{pattern}' in {modules}{hint}")]
    NoMatch {
        pattern: String,
        modules: String,
        /// Empty, or why: `; --inlined would probe 2 inlined instances`.
        hint: String,
    },
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
    build_plan_with(candidates, patterns, default_limit, false)
}

/// [`build_plan`], and with `inlined` (`--inlined`) the inlined instances
/// whose name a pattern matches, each at its entry address (see
/// [`plan_inlined`]). Instances are never selected with no pattern, nor in
/// Go modules.
pub fn build_plan_with(
    candidates: &[ModuleCandidate],
    patterns: &[Pattern],
    default_limit: usize,
    inlined: bool,
) -> Result<Plan, PlanError> {
    let mut plan = Plan::default();
    let default_mode = patterns.is_empty();
    let default_pattern: Vec<Pattern> = if default_mode {
        vec!["*".parse().map_err(|_| PlanError::NoMatch {
            pattern: "*".into(),
            modules: String::new(),
            hint: String::new(),
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
    // Inlined instances each pattern matches (probed or not).
    let mut inline_matched = vec![0usize; patterns.len()];
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
        let instances = if default_mode || symbols.go {
            Vec::new()
        } else {
            plan_inlined(&symbols, patterns, &selecting, &mut inline_matched)
        };
        let instances = if inlined {
            for (i, &n) in inline_matched.iter().enumerate() {
                if n > 0 {
                    matched[i] = true;
                }
            }
            instances
        } else {
            plan.inlined_not_probed += instances.len();
            Vec::new()
        };
        if functions.is_empty() && instances.is_empty() {
            continue;
        }
        let functions = functions
            .into_iter()
            .map(|symbol| (symbol, None))
            .chain(instances)
            .map(|(symbol, inline_site)| {
                let function_id = next_id;
                next_id += 1;
                PlannedFunction {
                    function_id,
                    symbol,
                    args: false,
                    go: None,
                    inline_site,
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
            let n = inline_matched[i];
            return Err(PlanError::NoMatch {
                pattern: pattern.raw.clone(),
                modules: searched[i].join(", "),
                hint: if n > 0 && !inlined {
                    format!(
                        "; it matches {n} inlined instance{} (--inlined would probe {}, entry only)",
                        if n == 1 { "" } else { "s" },
                        if n == 1 { "it" } else { "them" }
                    )
                } else {
                    String::new()
                },
            });
        }
    }
    Ok(plan)
}

/// The inlined instances of `symbols` whose name a selecting pattern
/// matches, as probe targets at their first instruction; counts the matches
/// per pattern in `matched`. An instance without a file offset (its address
/// is outside executable code) is left out; two instances of one function
/// at one address (nested inlining) are probed once.
fn plan_inlined(
    symbols: &ModuleSymbols,
    patterns: &[Pattern],
    selecting: &[usize],
    matched: &mut [usize],
) -> Vec<(FunctionSymbol, Option<InlineSite>)> {
    let mut seen = HashSet::new();
    let mut hits = Vec::new();
    for inst in &symbols.inlined {
        let Some(file_offset) = inst.file_offset else {
            continue;
        };
        let mut hit = false;
        for &i in selecting {
            if patterns[i].matches_name(&inst.name) {
                hit = true;
                matched[i] += 1;
            }
        }
        if hit && seen.insert((inst.address, inst.name.as_str())) {
            hits.push((inst, file_offset));
        }
    }
    if hits.is_empty() {
        return Vec::new();
    }
    // What DWARF says about the function itself, when it also has an
    // out-of-line copy; and how many instances each name has.
    let outlines: HashMap<&str, &FunctionSymbol> = symbols
        .functions
        .iter()
        .map(|f| (f.name.as_str(), f))
        .collect();
    let mut counts: HashMap<&str, u32> = HashMap::new();
    for inst in &symbols.inlined {
        *counts.entry(inst.name.as_str()).or_default() += 1;
    }
    hits.into_iter()
        .map(|(inst, file_offset)| {
            let outline = outlines.get(inst.name.as_str()).copied();
            (
                FunctionSymbol {
                    name: inst.name.clone(),
                    symbol: outline.map_or_else(|| inst.name.clone(), |f| f.symbol.clone()),
                    address: inst.address,
                    size: 0,
                    file_offset,
                    file: outline.and_then(|f| f.file.clone()),
                    line: outline.and_then(|f| f.line),
                    params: outline.map(|f| f.params.clone()).unwrap_or_default(),
                    return_type: outline.and_then(|f| f.return_type.clone()),
                    language: outline.and_then(|f| f.language),
                    inlined_count: counts.get(inst.name.as_str()).copied().unwrap_or(0),
                    aliases: Vec::new(),
                },
                Some(InlineSite {
                    caller: inst.caller.clone(),
                    call_file: inst.call_file.clone(),
                    call_line: inst.call_line,
                }),
            )
        })
        .collect()
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
