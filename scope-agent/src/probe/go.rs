//! Go functions: where their probes go.
//!
//! A uretprobe replaces the return address on the stack with a trampoline.
//! Go copies a goroutine's stack to a bigger one when it grows (and to a
//! smaller one when the GC shrinks it) and checks return addresses while
//! unwinding: a rewritten one makes the runtime throw, and the target dies.
//! So Go functions get no return probe. Instead the function's machine code
//! is disassembled once (iced-x86) and a plain uprobe goes on every `RET`
//! instruction: it fires just before the function returns, with the same
//! goroutine register (r14) as the entry.
//!
//! The entry probe goes after the stack-growth check, not at the first
//! byte: a Go function whose stack is too small calls
//! `runtime.morestack`, which copies the stack and jumps back to the
//! function's first instruction, so a probe there would fire twice for one
//! call. The check is the first conditional jump of the prologue, taken
//! to a tail block that ends with a `JMP` back to the function's start;
//! functions without such a back-jump (`NOSPLIT` leaves) keep their probe
//! at the first byte.
//!
//! A function that ends in a tail jump to another function (rare in Go:
//! some wrappers) returns through that function's `RET`, which this
//! function's probes do not see: its calls end up marked "return missing"
//! or "unwound"; the planner counts such jumps and says so.

use std::fs::File;
use std::os::unix::fs::FileExt;

use iced_x86::{Decoder, DecoderOptions, Mnemonic, OpKind};

use super::plan::{ModulePlan, PlannedFunction};
use crate::symbols::SymbolError;

/// Where one Go function is probed, as file offsets of its module.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GoProbes {
    /// The entry probe: after the stack-growth check, else the first byte.
    pub entry_offset: u64,
    /// Every `RET` instruction of the function.
    pub ret_offsets: Vec<u64>,
    /// Unconditional jumps that leave the function (tail calls).
    pub tail_jumps: usize,
}

/// How many leading instructions may hold the stack-growth check (a
/// large frame computes `rsp - size` first: `lea; cmp; jbe`).
const PROLOGUE_INSTRUCTIONS: usize = 4;

/// Finds the probe sites in `code`, the bytes of a function at virtual
/// address `address` and file offset `file_offset`.
pub fn probe_sites(code: &[u8], address: u64, file_offset: u64) -> GoProbes {
    let end = address + code.len() as u64;
    let to_offset = |ip: u64| file_offset + (ip - address);
    let mut decoder = Decoder::with_ip(64, code, address, DecoderOptions::NONE);
    let mut sites = GoProbes {
        entry_offset: file_offset,
        ..GoProbes::default()
    };
    let mut stack_check_next: Option<u64> = None;
    let mut jumps_to_start = false;
    let mut index = 0;
    while decoder.can_decode() {
        let insn = decoder.decode();
        index += 1;
        if insn.is_invalid() {
            continue;
        }
        let near = insn.op_count() == 1 && insn.op0_kind() == OpKind::NearBranch64;
        if insn.mnemonic() == Mnemonic::Ret {
            sites.ret_offsets.push(to_offset(insn.ip()));
        } else if near && is_jcc(insn.mnemonic()) {
            if index <= PROLOGUE_INSTRUCTIONS
                && stack_check_next.is_none()
                && insn.near_branch_target() > insn.ip()
            {
                stack_check_next = Some(insn.next_ip());
            }
        } else if near && insn.mnemonic() == Mnemonic::Jmp {
            let target = insn.near_branch_target();
            if target == address {
                jumps_to_start = true;
            } else if !(address..end).contains(&target) {
                sites.tail_jumps += 1;
            }
        }
    }
    if jumps_to_start && let Some(next) = stack_check_next {
        sites.entry_offset = to_offset(next);
    }
    sites
}

/// Conditional near jumps (the decoder-only build of iced-x86 has no
/// flow-control tables).
fn is_jcc(m: Mnemonic) -> bool {
    use Mnemonic::*;
    matches!(
        m,
        Ja | Jae | Jb | Jbe | Je | Jne | Jg | Jge | Jl | Jle | Jo | Jno | Jp | Jnp | Js | Jns
    )
}

/// Fills in the probe sites of every function of a Go module, reading the
/// code from `open_path` (the same file the symbols came from).
pub fn plan_module(module: &mut ModulePlan) -> Result<(), SymbolError> {
    let io_err = |source: std::io::Error| SymbolError::Io {
        path: module.candidate.display_path.clone(),
        source,
    };
    let file = File::open(&module.candidate.open_path).map_err(io_err)?;
    for f in &mut module.functions {
        f.go = Some(function_sites(&file, f).map_err(io_err)?);
    }
    Ok(())
}

fn function_sites(file: &File, f: &PlannedFunction) -> Result<GoProbes, std::io::Error> {
    // Symbol sizes come from the file: cap them so a corrupt one cannot
    // make the agent allocate without bound (Go functions are far smaller).
    const MAX_FUNCTION_BYTES: u64 = 16 << 20;
    let size = f.symbol.size.min(MAX_FUNCTION_BYTES) as usize;
    let mut code = vec![0u8; size];
    file.read_exact_at(&mut code, f.symbol.file_offset)?;
    Ok(probe_sites(&code, f.symbol.address, f.symbol.file_offset))
}

/// Go functions do not get `--args` (Go's register ABI passes arguments in
/// rax, rbx, rcx, rdi, ... not the System V registers the kernel side
/// copies). Clears the flag on them; returns how many had it.
pub fn drop_args(modules: &mut [ModulePlan]) -> usize {
    let mut dropped = 0;
    for m in modules.iter_mut().filter(|m| m.go) {
        for f in &mut m.functions {
            if f.args {
                f.args = false;
                dropped += 1;
            }
        }
    }
    dropped
}

/// Total tail jumps out of the probed Go functions of `modules`.
pub fn tail_jumps(modules: &[ModulePlan]) -> usize {
    modules
        .iter()
        .flat_map(|m| &m.functions)
        .filter_map(|f| f.go.as_ref())
        .map(|g| g.tail_jumps)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// `main.fib` as go1.19 compiles it: stack check, two RETs, the
    /// morestack tail jumping back to the start.
    const FIB: &str = "493b661076574883ec1848896c2410488d6c24104883f8027d0a488b6c24104883c418c34889442420488d48ff4889c8e8cbffffff4889442408488b4c24204883c1fe4889c8e8b5ffffff488b4c24084801c8488b6c24104883c418c34889442408e8f991fdff488b442408eb92";

    #[test]
    fn fib_entry_after_stack_check_and_both_rets() {
        let code = hex(FIB);
        assert_eq!(code.len(), 0x6e);
        let sites = probe_sites(&code, 0x489d80, 0x89d80);
        // cmp rsp,[r14+0x10] (4 bytes); jbe (2 bytes) → body at +6.
        assert_eq!(sites.entry_offset, 0x89d86);
        assert_eq!(sites.ret_offsets, vec![0x89da3, 0x89ddc]);
        assert_eq!(sites.tail_jumps, 0);
    }

    #[test]
    fn nosplit_leaf_keeps_entry_at_first_byte() {
        // lea rax,[rax+rax]; lea rax,[rax+1]; ret
        let sites = probe_sites(&hex("488d0400488d4001c3"), 0x489d60, 0x89d60);
        assert_eq!(sites.entry_offset, 0x89d60);
        assert_eq!(sites.ret_offsets, vec![0x89d68]);
    }

    #[test]
    fn tail_jump_is_counted_and_garbage_does_not_panic() {
        // jmp rel32 far outside the function: no RET at all.
        let sites = probe_sites(&hex("e900100000"), 0x1000, 0x1000);
        assert!(sites.ret_offsets.is_empty());
        assert_eq!(sites.tail_jumps, 1);
        let sites = probe_sites(&[0xff; 7], 0x1000, 0);
        assert_eq!(sites.entry_offset, 0);
        assert!(probe_sites(&[], 0x1000, 0).ret_offsets.is_empty());
    }
}
