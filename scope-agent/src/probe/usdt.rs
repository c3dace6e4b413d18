//! `-u [MODULE:][PROVIDER:]NAME`: USDT probes of the target's modules,
//! chosen by glob, each with an id of its own (the cookie of its probe and
//! `probe_id` in `markers` and `usdt_probes`) and the argument spec the
//! kernel side reads them by.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use scope_common::{
    MAX_ARGS, USDT_ARG_CONST, USDT_ARG_DEREF, USDT_ARG_NONE, USDT_ARG_REG, UsdtArg as WireArg,
    UsdtSpec,
};
use wildmatch::WildMatch;

use super::plan::{ModuleCandidate, short_name};
use crate::symbols::usdt::{ArgLoc, UsdtArg, UsdtProbe, usdt_probes_of};

/// A `-u` pattern: `NAME`, `PROVIDER:NAME` or `MODULE:PROVIDER:NAME`, each
/// part a glob; a left-out module is every module of the target.
#[derive(Clone)]
pub struct UsdtPattern {
    pub raw: String,
    module: Option<WildMatch>,
    provider: WildMatch,
    name: WildMatch,
}

impl fmt::Debug for UsdtPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

impl PartialEq for UsdtPattern {
    fn eq(&self, o: &Self) -> bool {
        self.raw == o.raw
    }
}

impl FromStr for UsdtPattern {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let parts: Vec<&str> = s.split(':').collect();
        let (module, provider, name) = match parts.as_slice() {
            [n] => (None, "*", *n),
            [p, n] => (None, *p, *n),
            [m, p, n] => (Some(*m), *p, *n),
            _ => {
                return Err(format!(
                    "-u {s}: a USDT probe is NAME, PROVIDER:NAME or MODULE:PROVIDER:NAME"
                ));
            }
        };
        if name.is_empty() || provider.is_empty() || module.is_some_and(str::is_empty) {
            return Err(format!("-u {s}: an empty part"));
        }
        Ok(Self {
            raw: s.to_string(),
            module: module.map(WildMatch::new),
            provider: WildMatch::new(provider),
            name: WildMatch::new(name),
        })
    }
}

impl UsdtPattern {
    fn matches_module(&self, c: &ModuleCandidate) -> bool {
        self.module
            .as_ref()
            .is_none_or(|m| m.matches(&short_name(&c.display_path)))
    }

    fn matches(&self, p: &UsdtProbe) -> bool {
        self.provider.matches(&p.provider) && self.name.matches(&p.name)
    }

    /// Whether probe `p` of module `c` is one this pattern names.
    pub fn matches_probe(&self, c: &ModuleCandidate, p: &UsdtProbe) -> bool {
        self.matches_module(c) && self.matches(p)
    }
}

/// One USDT probe to attach.
#[derive(Debug, Clone)]
pub struct PlannedUsdt {
    pub id: u32,
    pub provider: String,
    pub name: String,
    pub module: PathBuf,
    pub attach_path: PathBuf,
    pub address: u64,
    pub file_offset: u64,
    pub semaphore_offset: Option<u64>,
    pub args_text: String,
    /// Arguments the note names (the first six are read).
    pub arg_count: usize,
    pub spec: UsdtSpec,
}

/// The probes the patterns choose among `candidates`' modules, ids from 1.
/// A pattern that matches no probe is an error naming the probes there are.
pub fn plan_usdt(
    candidates: &[ModuleCandidate],
    patterns: &[UsdtPattern],
) -> Result<Vec<PlannedUsdt>, String> {
    let mut out: Vec<PlannedUsdt> = Vec::new();
    let mut seen_probes: Vec<String> = Vec::new();
    for pattern in patterns {
        let mut matched = 0;
        for c in candidates.iter().filter(|c| pattern.matches_module(c)) {
            // A module that cannot be read has no probes to offer here.
            let Ok(probes) = usdt_probes_of(&c.open_path) else {
                continue;
            };
            for p in probes {
                if !pattern.matches(&p) {
                    let label =
                        format!("{}:{}:{}", short_name(&c.display_path), p.provider, p.name);
                    if !seen_probes.contains(&label) {
                        seen_probes.push(label);
                    }
                    continue;
                }
                matched += 1;
                if out
                    .iter()
                    .any(|o| o.attach_path == c.attach_path && o.address == p.address)
                {
                    continue;
                }
                out.push(PlannedUsdt {
                    id: out.len() as u32 + 1,
                    provider: p.provider.clone(),
                    name: p.name.clone(),
                    module: c.display_path.clone(),
                    attach_path: c.attach_path.clone(),
                    address: p.address,
                    file_offset: p.file_offset,
                    semaphore_offset: p.semaphore_offset,
                    args_text: p.args_text.clone(),
                    arg_count: p.args.len(),
                    spec: wire_spec(&p.args),
                });
            }
        }
        if matched == 0 {
            let there = if seen_probes.is_empty() {
                "no module of the target has USDT probes (.note.stapsdt)".to_string()
            } else {
                let mut list = seen_probes.clone();
                list.sort();
                let more = list.len().saturating_sub(20);
                list.truncate(20);
                format!(
                    "the probes there are: {}{}",
                    list.join(", "),
                    if more > 0 {
                        format!(" and {more} more (scope-agent functions --usdt)")
                    } else {
                        String::new()
                    }
                )
            };
            return Err(format!(
                "-u {}: no USDT probe matches; {there}",
                pattern.raw
            ));
        }
    }
    Ok(out)
}

/// The kernel side's form of a probe's argument specs.
pub fn wire_spec(args: &[Option<UsdtArg>]) -> UsdtSpec {
    let mut spec = UsdtSpec {
        count: args.len().min(MAX_ARGS) as u32,
        ..UsdtSpec::default()
    };
    for (w, a) in spec.args.iter_mut().zip(args) {
        *w = match a {
            None => WireArg {
                kind: USDT_ARG_NONE,
                ..WireArg::default()
            },
            Some(a) => {
                let (kind, reg, value) = match a.loc {
                    ArgLoc::Const(v) => (USDT_ARG_CONST, 0, v),
                    ArgLoc::Reg(r) => (USDT_ARG_REG, r, 0),
                    ArgLoc::Deref(r, off) => (USDT_ARG_DEREF, r, off),
                };
                WireArg {
                    kind,
                    reg,
                    size: a.size,
                    signed: u8::from(a.signed),
                    _pad: 0,
                    value,
                }
            }
        };
    }
    spec
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns() {
        let p: UsdtPattern = "libpython3*:python:function__entry".parse().unwrap();
        assert!(p.module.is_some());
        let p: UsdtPattern = "python:gc__*".parse().unwrap();
        assert!(p.module.is_none());
        assert!("a:b:c:d".parse::<UsdtPattern>().is_err());
        assert!("python:".parse::<UsdtPattern>().is_err());
    }

    #[test]
    fn specs_on_the_wire() {
        use crate::symbols::usdt::parse_arg;
        let spec = wire_spec(&[
            parse_arg("-4@%ebp"),
            parse_arg("8@(%rax,%rbx,8)"),
            parse_arg("8@16(%rsp)"),
        ]);
        assert_eq!(spec.count, 3);
        assert_eq!(
            (
                spec.args[0].kind,
                spec.args[0].reg,
                spec.args[0].size,
                spec.args[0].signed
            ),
            (USDT_ARG_REG, 6, 4, 1)
        );
        assert_eq!(spec.args[1].kind, USDT_ARG_NONE);
        assert_eq!(
            (spec.args[2].kind, spec.args[2].reg, spec.args[2].value),
            (USDT_ARG_DEREF, 7, 16)
        );
    }
}
