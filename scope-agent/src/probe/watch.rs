//! Libraries that appear after recording started (`dlopen`).
//!
//! A pattern that names a module (`libplugin*:work_*`) matching none of the
//! target's modules at start stays *pending*. While recording, the session
//! polls the target's mappings; when a module appears that a pending pattern
//! names, it is planned here (function ids continuing the session's) and the
//! session writes its `functions` rows and attaches it. Patterns stay pending
//! until the end, since another matching library may still be loaded.

use std::collections::HashSet;
use std::path::PathBuf;

use crate::probe::plan::{ModuleCandidate, Plan, PlanError, build_plan};
use crate::symbols::pattern::Pattern;

/// Splits `patterns` into those that can be planned now and those that name
/// a module none of `candidates` is (pending until such a module is loaded).
pub fn split_pending(
    candidates: &[ModuleCandidate],
    patterns: &[Pattern],
) -> (Vec<Pattern>, Vec<Pattern>) {
    patterns.iter().cloned().partition(|p| {
        p.module.is_none()
            || candidates
                .iter()
                .any(|c| p.matches_module(&c.display_path, c.is_main))
    })
}

/// Pending patterns and the modules already looked at.
pub struct PendingModules {
    patterns: Vec<Pattern>,
    matched: Vec<bool>,
    seen: HashSet<PathBuf>,
    next_function_id: u32,
}

/// What one poll found.
#[derive(Debug, Default)]
pub struct LateModules {
    /// New modules planned, function ids continuing the session's.
    pub plan: Plan,
    /// Patterns that named a new module but matched none of its functions.
    pub warnings: Vec<String>,
}

impl PendingModules {
    /// `known` are the modules handled at start; `next_function_id` the first
    /// id not used by the session's plan.
    pub fn new(patterns: Vec<Pattern>, known: &[ModuleCandidate], next_function_id: u32) -> Self {
        Self {
            matched: vec![false; patterns.len()],
            patterns,
            seen: known.iter().map(|c| c.display_path.clone()).collect(),
            next_function_id,
        }
    }

    /// The patterns still waiting.
    pub fn patterns(&self) -> &[Pattern] {
        &self.patterns
    }

    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// Plans the modules in `current` (the target's modules now) that are new
    /// and named by a pending pattern.
    pub fn poll(&mut self, current: &[ModuleCandidate]) -> LateModules {
        let mut out = LateModules::default();
        for candidate in current {
            if !self.seen.insert(candidate.display_path.clone()) {
                continue;
            }
            let selecting: Vec<usize> = (0..self.patterns.len())
                .filter(|&i| {
                    self.patterns[i].matches_module(&candidate.display_path, candidate.is_main)
                })
                .collect();
            if selecting.is_empty() {
                continue;
            }
            let mut module_plan: Option<crate::probe::plan::ModulePlan> = None;
            let mut addresses = HashSet::new();
            for i in selecting {
                self.matched[i] = true;
                let plan = match build_plan(
                    std::slice::from_ref(candidate),
                    std::slice::from_ref(&self.patterns[i]),
                    usize::MAX,
                ) {
                    Ok(plan) => plan,
                    Err(e @ (PlanError::NoMatch { .. } | PlanError::NoModule { .. })) => {
                        out.warnings.push(e.to_string());
                        continue;
                    }
                    Err(e) => {
                        out.warnings
                            .push(format!("{}: {e}", candidate.display_path.display()));
                        continue;
                    }
                };
                for m in plan.modules {
                    let target =
                        module_plan.get_or_insert_with(|| crate::probe::plan::ModulePlan {
                            functions: Vec::new(),
                            ..m.clone()
                        });
                    for mut f in m.functions {
                        if addresses.insert(f.symbol.address) {
                            f.function_id = self.next_function_id;
                            self.next_function_id += 1;
                            target.functions.push(f);
                        }
                    }
                }
            }
            out.plan.modules.extend(module_plan);
        }
        out
    }

    /// Patterns that never matched a module, for the end-of-run warning.
    pub fn never_matched(&self) -> Vec<&Pattern> {
        self.patterns
            .iter()
            .zip(&self.matched)
            .filter(|(_, m)| !**m)
            .map(|(p, _)| p)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidate(path: &str, is_main: bool) -> ModuleCandidate {
        ModuleCandidate {
            display_path: PathBuf::from(path),
            open_path: PathBuf::from(path),
            attach_path: PathBuf::from(path),
            is_main,
        }
    }

    fn libc_path() -> String {
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        maps.lines()
            .filter_map(|l| l.split_whitespace().nth(5))
            .find(|p| p.contains("libc.so"))
            .expect("the test binary maps libc")
            .to_string()
    }

    #[test]
    fn patterns_naming_absent_modules_wait_and_plan_on_arrival() {
        let exe = std::env::current_exe().unwrap().display().to_string();
        let main = candidate(&exe, true);
        let patterns: Vec<Pattern> = [
            "main",
            "libc.so*:malloc",
            "libc.so*:qsort",
            "libc.so*:free",
            "libnope*:x",
        ]
        .iter()
        .map(|p| p.parse().unwrap())
        .collect();
        let (now, pending) = split_pending(std::slice::from_ref(&main), &patterns);
        assert_eq!(now.len(), 1);
        assert_eq!(pending.len(), 4);

        let mut watch = PendingModules::new(pending, std::slice::from_ref(&main), 7);
        // Nothing new: nothing planned.
        assert!(
            watch
                .poll(std::slice::from_ref(&main))
                .plan
                .modules
                .is_empty()
        );
        // libc appears: malloc, qsort and free planned, ids from 7, once.
        let libc = candidate(&libc_path(), false);
        let late = watch.poll(&[main.clone(), libc.clone()]);
        assert_eq!(late.plan.modules.len(), 1, "{:?}", late.warnings);
        let ids: Vec<u32> = late.plan.modules[0]
            .functions
            .iter()
            .map(|f| f.function_id)
            .collect();
        assert_eq!(ids, vec![7, 8, 9]);
        // glibc's free is also cfree and __libc_free: whichever name is
        // kept (free when a .symtab tells the versions apart), the pattern
        // matched it through its aliases.
        let free = &late.plan.modules[0].functions[2].symbol;
        assert!(
            free.name == "free" || free.aliases.iter().any(|a| a == "free"),
            "{free:?}"
        );
        assert!(late.warnings.is_empty(), "{:?}", late.warnings);
        // Seen modules are not planned twice.
        assert!(watch.poll(&[main, libc]).plan.modules.is_empty());
        let never: Vec<String> = watch
            .never_matched()
            .iter()
            .map(|p| p.raw.clone())
            .collect();
        assert_eq!(never, vec!["libnope*:x".to_string()]);
    }
}
