//! The control-flow graph of functions read from their machine code: what
//! the AST map ([`super::ast`]) falls back to when a function's source is
//! missing or changed since the build.
//!
//! A module (an x86 or x86-64 ELF file) is mapped once; each function's
//! bytes `[address, address + size)` are decoded with iced-x86 and split
//! into basic blocks at branch targets and after jumps and returns (calls
//! do not end a block). A jump back to an address at or before it whose
//! target block reaches the jump again is a loop (a backward jump to a
//! shared epilogue is not); loops nest by the containment of their address
//! ranges. Direct calls (and tail calls: jumps out of the function) are
//! named from the ELF symbol table (demangled like the `functions` table),
//! calls through the PLT as `name@plt`, calls through the GOT (`-fno-plt`)
//! by the symbol of the slot's relocation; other indirect calls are left
//! out.
//! Lines come from the DWARF line table of the module itself when it has
//! one (not from separate debug files); rows of other files (code inlined
//! from headers) give no line.
//!
//! Cyclomatic complexity is `E − N + 2` over the blocks with one virtual
//! exit node that every return, tail jump, indirect jump and trap leads to
//! (so a function with two returns behind one `if` counts 2, not 1). An
//! indirect jump (a switch's jump table) has no known targets here and
//! counts as an exit, which makes a switch look simpler than it is.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fs::File;
use std::path::Path;

use anyhow::{Context as _, Result, anyhow, bail};
use gimli::{EndianSlice, RunTimeEndian};
use iced_x86::{Decoder, DecoderOptions, Instruction, Mnemonic, OpKind};
use memmap2::Mmap;
use object::{Object as _, ObjectSection as _, ObjectSymbol as _, ObjectSymbolTable as _};

/// Functions larger than this are not decoded (no real function is).
const MAX_FUNCTION_BYTES: u64 = 16 << 20;

/// One function to analyse: its link-time address and size (the
/// `functions` table's), and its DWARF file, whose line-table rows give
/// the lines (rows of other files are code inlined from elsewhere).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CfgRequest {
    pub address: u64,
    pub size: u64,
    pub file: Option<String>,
    /// The function's first line (DWARF `decl_line`); line-table rows above
    /// it are taken for inlined helpers defined earlier in the file.
    pub line: Option<u32>,
}

/// A loop: the target of a back edge (its head) up to the end of the last
/// jump back to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CfgLoop {
    pub head: u64,
    /// One past the last byte of the jump back.
    pub end: u64,
    /// 1 for an outermost loop.
    pub depth: u32,
    /// The smallest and largest lines of the loop's code in the function's
    /// file, if the line table has them.
    pub line: Option<u32>,
    pub end_line: Option<u32>,
}

/// A direct call, a call through the GOT, or a tail call (a jump out of the
/// function).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CfgCall {
    /// Address of the call instruction.
    pub address: u64,
    pub target: u64,
    /// The demangled symbol at `target`, `name@plt`, `name+0x10` inside a
    /// symbol, or `0x401136` when no symbol covers it.
    pub callee: String,
    /// Head of the innermost loop holding the call.
    pub loop_head: Option<u64>,
    pub loop_depth: u32,
    pub line: Option<u32>,
}

/// One function's graph and what was found in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FunctionCfg {
    pub address: u64,
    pub blocks: u32,
    /// Edges between blocks, and to the virtual exit.
    pub edges: u32,
    /// Conditional jumps.
    pub branches: u32,
    pub cyclomatic: u32,
    /// Outermost first, by head address.
    pub loops: Vec<CfgLoop>,
    /// In address order.
    pub calls: Vec<CfgCall>,
    /// The largest line of the function's code in its own file.
    pub end_line: Option<u32>,
}

/// Analyses `requests` in the ELF file at `module`. The outer error is about
/// the module (missing, not ELF, not x86); each function then has its own
/// result (its bytes are not in a section, say).
pub fn analyze_module(
    module: &Path,
    requests: &[CfgRequest],
) -> Result<Vec<Result<FunctionCfg, String>>> {
    let file = File::open(module).map_err(|e| anyhow!("{}: {e}", module.display()))?;
    // SAFETY: the map is read-only and private to this process. A file
    // truncated or rewritten while mapped is the one hazard; binaries are
    // replaced by rename, not rewritten in place, by package managers and
    // linkers, and a truncation raises SIGBUS rather than reading wrong data.
    let map = unsafe { Mmap::map(&file) }.map_err(|e| anyhow!("{}: {e}", module.display()))?;
    let elf = object::File::parse(&*map).map_err(|e| {
        anyhow!(
            "{}: not an ELF file the CFG can read ({e})",
            module.display()
        )
    })?;
    let bitness = match elf.architecture() {
        object::Architecture::X86_64 | object::Architecture::X86_64_X32 => 64,
        object::Architecture::I386 => 32,
        other => bail!(
            "{}: {other:?} code (the CFG decodes x86 only)",
            module.display()
        ),
    };
    let module_view = ModuleView::new(&elf, bitness);
    let ranges: Vec<(u64, u64)> = requests
        .iter()
        .map(|r| (r.address, r.address.saturating_add(r.size)))
        .collect();
    let lines = LineTable::load(&elf, &ranges).unwrap_or_else(|e| {
        log::debug!("{}: no line table: {e}", module.display());
        LineTable::default()
    });
    Ok(requests
        .iter()
        .map(|r| module_view.function(r, &lines))
        .collect())
}

/// What the analysis of one module needs from its ELF file.
struct ModuleView<'d> {
    elf: &'d object::File<'d>,
    bitness: u32,
    /// Text symbols by address: (address, size, raw name).
    symbols: Vec<(u64, u64, &'d str)>,
    /// `.plt`, `.plt.sec`, `.plt.got` ranges.
    plt: Vec<(u64, u64)>,
    /// GOT slot → the symbol its dynamic relocation names.
    got: HashMap<u64, &'d str>,
}

impl<'d> ModuleView<'d> {
    fn new(elf: &'d object::File<'d>, bitness: u32) -> Self {
        let mut symbols: Vec<(u64, u64, &str)> = elf
            .symbols()
            .chain(elf.dynamic_symbols())
            .filter(|s| s.kind() == object::SymbolKind::Text && s.address() != 0)
            .filter_map(|s| Some((s.address(), s.size(), s.name().ok()?)))
            .filter(|(_, _, n)| !n.is_empty())
            .collect();
        // Sized symbols before unsized ones at one address, then by name, so
        // a lookup picks the same one every time.
        symbols.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)).then(a.2.cmp(b.2)));
        symbols.dedup_by(|a, b| a.0 == b.0 && a.2 == b.2);
        let plt = elf
            .sections()
            .filter(|s| s.name().is_ok_and(|n| n.starts_with(".plt")))
            .map(|s| (s.address(), s.address() + s.size()))
            .collect();
        let mut got = HashMap::new();
        if let (Some(relocs), Some(dynsym)) =
            (elf.dynamic_relocations(), elf.dynamic_symbol_table())
        {
            for (offset, reloc) in relocs {
                if let object::RelocationTarget::Symbol(index) = reloc.target()
                    && let Ok(sym) = dynsym.symbol_by_index(index)
                    && let Ok(name) = sym.name()
                    && !name.is_empty()
                {
                    got.insert(offset, name);
                }
            }
        }
        ModuleView {
            elf,
            bitness,
            symbols,
            plt,
            got,
        }
    }

    fn bytes(&self, address: u64, size: u64) -> Result<&'d [u8], String> {
        for section in self.elf.sections() {
            let start = section.address();
            if address < start || address.saturating_add(size) > start + section.size() {
                continue;
            }
            return match section.data_range(address, size) {
                Ok(Some(b)) => Ok(b),
                _ => Err(format!(
                    "0x{address:x}: section {} has no bytes there",
                    section.name().unwrap_or("?")
                )),
            };
        }
        Err(format!("0x{address:x}+{size}: in no section of the file"))
    }

    /// The name of the code at `target`.
    fn callee(&self, target: u64) -> String {
        if self.plt.iter().any(|&(s, e)| (s..e).contains(&target))
            && let Some(name) = self.plt_name(target)
        {
            return format!("{}@plt", demangle(name));
        }
        let i = self.symbols.partition_point(|s| s.0 <= target);
        // The last symbol at or before target: exact, or covering it.
        if let Some(&(addr, size, name)) = i.checked_sub(1).and_then(|j| self.symbols.get(j)) {
            // Several symbols may share an address: take the first of them.
            let first = self.symbols[..i].partition_point(|s| s.0 < addr);
            let (addr, size, name) = if addr == target {
                self.symbols[first]
            } else {
                (addr, size, name)
            };
            if addr == target {
                return demangle(name);
            }
            if target < addr + size {
                return format!("{}+0x{:x}", demangle(name), target - addr);
            }
        }
        format!("0x{target:x}")
    }

    /// The symbol a PLT stub jumps to: its `jmp [rip+GOT]` slot's
    /// relocation.
    fn plt_name(&self, stub: u64) -> Option<&'d str> {
        let bytes = self.bytes(stub, 16).ok()?;
        let mut decoder = Decoder::with_ip(self.bitness, bytes, stub, DecoderOptions::NONE);
        for _ in 0..4 {
            if !decoder.can_decode() {
                break;
            }
            let insn = decoder.decode();
            if insn.mnemonic() == Mnemonic::Jmp
                && insn.op_count() == 1
                && insn.op0_kind() == OpKind::Memory
            {
                return self.got_slot(&insn);
            }
        }
        None
    }

    fn got_slot(&self, insn: &Instruction) -> Option<&'d str> {
        if !insn.is_ip_rel_memory_operand() {
            return None;
        }
        self.got.get(&insn.ip_rel_memory_address()).copied()
    }

    fn function(&self, req: &CfgRequest, lines: &LineTable) -> Result<FunctionCfg, String> {
        if req.size == 0 {
            return Err(format!("0x{:x}: size 0", req.address));
        }
        // Sizes come from the file: a corrupt one must not make us decode
        // (and allocate for) gigabytes.
        if req.size > MAX_FUNCTION_BYTES {
            return Err(format!(
                "0x{:x}: size {} is above {MAX_FUNCTION_BYTES} bytes",
                req.address, req.size
            ));
        }
        let bytes = self.bytes(req.address, req.size)?;
        let insns = decode(bytes, req.address, self.bitness, |insn| {
            if insn.mnemonic() == Mnemonic::Call
                && insn.op_count() == 1
                && insn.op0_kind() == OpKind::Memory
            {
                self.got_slot(insn).map(|n| (0, demangle(n)))
            } else {
                None
            }
        });
        let graph = Graph::build(&insns, req.address, req.address + req.size);
        let file = req.file.as_deref().and_then(|f| lines.file_id(f));
        let floor = req.line.unwrap_or(0);
        let line_at = |addr: u64| {
            file.and_then(|f| lines.line_at(addr, f))
                .filter(|&l| l >= floor)
        };
        let line_span = |from: u64, to: u64| match file {
            Some(f) => lines.span(from, to, f, floor),
            None => None,
        };
        let loops = graph.loops(&insns, |i| {
            // A Go function's stack check ends in `call runtime.morestack…;
            // jmp <entry>`: a jump back that is not a loop.
            matches!(insns[i].kind, Kind::Call(t) if self.callee(t).starts_with("runtime.morestack"))
        });
        let mut out_loops: Vec<CfgLoop> = loops
            .iter()
            .map(|l| {
                let span = line_span(l.head, l.end);
                CfgLoop {
                    head: l.head,
                    end: l.end,
                    depth: l.depth,
                    line: span.map(|s| s.0),
                    end_line: span.map(|s| s.1),
                }
            })
            .collect();
        out_loops.sort_by_key(|l| (l.head, l.depth));
        let mut calls = Vec::new();
        for insn in &insns {
            let (target, callee) = match &insn.kind {
                Kind::Call(t) => (*t, self.callee(*t)),
                Kind::GotCall(name) => (0, name.clone()),
                // A tail call: a jump out of the function.
                Kind::Jump(t) | Kind::Cond(t)
                    if !(req.address..req.address + req.size).contains(t) =>
                {
                    (*t, self.callee(*t))
                }
                _ => continue,
            };
            let inner = loops
                .iter()
                .filter(|l| (l.head..l.end).contains(&insn.ip))
                .max_by_key(|l| l.depth);
            calls.push(CfgCall {
                address: insn.ip,
                target,
                callee,
                loop_head: inner.map(|l| l.head),
                loop_depth: inner.map_or(0, |l| l.depth),
                line: line_at(insn.ip),
            });
        }
        Ok(FunctionCfg {
            address: req.address,
            blocks: graph.blocks.len() as u32,
            edges: graph.edges,
            branches: insns
                .iter()
                .filter(|i| matches!(i.kind, Kind::Cond(_)))
                .count() as u32,
            cyclomatic: graph.cyclomatic(),
            loops: out_loops,
            calls,
            end_line: line_span(req.address, req.address + req.size).map(|s| s.1),
        })
    }
}

/// What an instruction does to the flow of control.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Kind {
    Next,
    /// Conditional jump (jcc, jrcxz, loop).
    Cond(u64),
    Jump(u64),
    /// Indirect jump, return, trap, invalid bytes: leaves the graph.
    Exit,
    Call(u64),
    /// `call [rip+slot]` through a GOT slot, named by its relocation.
    GotCall(String),
}

#[derive(Debug)]
struct Insn {
    ip: u64,
    next: u64,
    kind: Kind,
}

fn decode(
    bytes: &[u8],
    address: u64,
    bitness: u32,
    got_call: impl Fn(&Instruction) -> Option<(u64, String)>,
) -> Vec<Insn> {
    let mut decoder = Decoder::with_ip(bitness, bytes, address, DecoderOptions::NONE);
    let mut insn = Instruction::default();
    let mut out = Vec::with_capacity(bytes.len() / 4);
    while decoder.can_decode() {
        decoder.decode_out(&mut insn);
        let near = insn.op_count() == 1
            && matches!(
                insn.op0_kind(),
                OpKind::NearBranch16 | OpKind::NearBranch32 | OpKind::NearBranch64
            );
        let kind = if insn.is_invalid() {
            Kind::Exit
        } else if near && is_conditional(insn.mnemonic()) {
            Kind::Cond(insn.near_branch_target())
        } else if near && insn.mnemonic() == Mnemonic::Jmp {
            Kind::Jump(insn.near_branch_target())
        } else if near && insn.mnemonic() == Mnemonic::Call {
            Kind::Call(insn.near_branch_target())
        } else if let Some((_, name)) = got_call(&insn) {
            Kind::GotCall(name)
        } else if matches!(
            insn.mnemonic(),
            Mnemonic::Ret
                | Mnemonic::Retf
                | Mnemonic::Iret
                | Mnemonic::Iretd
                | Mnemonic::Iretq
                | Mnemonic::Jmp
                | Mnemonic::Jmpe
                | Mnemonic::Ud0
                | Mnemonic::Ud1
                | Mnemonic::Ud2
                | Mnemonic::Hlt
                | Mnemonic::Int3
        ) {
            // Jmp here is an indirect or far jump (near direct ones are
            // handled above).
            Kind::Exit
        } else {
            Kind::Next
        };
        out.push(Insn {
            ip: insn.ip(),
            next: insn.next_ip(),
            kind,
        });
    }
    out
}

/// Conditional jumps (the decoder-only build of iced-x86 has no
/// flow-control tables), `jrcxz` and the `loop` family included.
fn is_conditional(m: Mnemonic) -> bool {
    use Mnemonic::*;
    matches!(
        m,
        Ja | Jae
            | Jb
            | Jbe
            | Je
            | Jne
            | Jg
            | Jge
            | Jl
            | Jle
            | Jo
            | Jno
            | Jp
            | Jnp
            | Js
            | Jns
            | Jcxz
            | Jecxz
            | Jrcxz
            | Loop
            | Loope
            | Loopne
    )
}

/// A basic block: instructions `first..=last` (indices into the decoded
/// instructions) and its successors (block indices; `None` is the exit).
#[derive(Debug)]
struct Block {
    first: usize,
    last: usize,
    succ: Vec<Option<usize>>,
}

struct Graph {
    blocks: Vec<Block>,
    edges: u32,
    exits: bool,
}

struct RawLoop {
    head: u64,
    end: u64,
    depth: u32,
}

impl Graph {
    fn build(insns: &[Insn], start: u64, end: u64) -> Graph {
        let index: HashMap<u64, usize> = insns.iter().enumerate().map(|(i, x)| (x.ip, i)).collect();
        let mut leader = vec![false; insns.len()];
        if let Some(l) = leader.first_mut() {
            *l = true;
        }
        for (i, insn) in insns.iter().enumerate() {
            match insn.kind {
                Kind::Cond(t) | Kind::Jump(t) => {
                    if let Some(&j) = index.get(&t) {
                        leader[j] = true;
                    }
                    if let Some(l) = leader.get_mut(i + 1) {
                        *l = true;
                    }
                }
                Kind::Exit => {
                    if let Some(l) = leader.get_mut(i + 1) {
                        *l = true;
                    }
                }
                _ => {}
            }
        }
        let mut blocks: Vec<Block> = Vec::new();
        let mut block_of = vec![0usize; insns.len()];
        for i in 0..insns.len() {
            if leader[i] {
                blocks.push(Block {
                    first: i,
                    last: i,
                    succ: Vec::new(),
                });
            }
            let b = blocks.len() - 1;
            blocks[b].last = i;
            block_of[i] = b;
        }
        let in_fn = |t: u64| (start..end).contains(&t);
        let target_block = |t: u64| -> Option<usize> {
            if in_fn(t) {
                index.get(&t).map(|&i| block_of[i])
            } else {
                None
            }
        };
        let mut edges = 0;
        let mut exits = false;
        for block in &mut blocks {
            let last = &insns[block.last];
            let fall = target_block(last.next);
            let mut succ = match last.kind {
                Kind::Cond(t) => vec![target_block(t), fall],
                Kind::Jump(t) => vec![target_block(t)],
                Kind::Exit => vec![None],
                Kind::Next | Kind::Call(_) | Kind::GotCall(_) => vec![fall],
            };
            succ.dedup();
            exits |= succ.contains(&None);
            edges += succ.len() as u32;
            block.succ = succ;
        }
        Graph {
            blocks,
            edges,
            exits,
        }
    }

    fn cyclomatic(&self) -> u32 {
        let nodes = self.blocks.len() as i64 + i64::from(self.exits);
        (i64::from(self.edges) - nodes + 2).max(1) as u32
    }

    /// Whether block `to` is reachable from block `from`.
    fn reaches(&self, from: usize, to: usize) -> bool {
        let mut seen = vec![false; self.blocks.len()];
        let mut stack = vec![from];
        while let Some(b) = stack.pop() {
            if b == to {
                return true;
            }
            if std::mem::replace(&mut seen[b], true) {
                continue;
            }
            stack.extend(self.blocks[b].succ.iter().flatten());
        }
        false
    }

    /// Back edges that close a cycle, one loop per head, with depths.
    /// `not_a_loop(i)`: the instruction at index `i` in a jumping block
    /// rules the jump out.
    fn loops(&self, insns: &[Insn], not_a_loop: impl Fn(usize) -> bool) -> Vec<RawLoop> {
        let mut by_head: HashMap<u64, u64> = HashMap::new();
        for (b, block) in self.blocks.iter().enumerate() {
            let last = &insns[block.last];
            let target = match last.kind {
                Kind::Cond(t) | Kind::Jump(t) if t <= last.ip => t,
                _ => continue,
            };
            // The target's block is the successor whose first instruction
            // is at `target`.
            let Some(head_block) = block
                .succ
                .iter()
                .flatten()
                .copied()
                .find(|&s| insns[self.blocks[s].first].ip == target)
            else {
                continue;
            };
            if (block.first..=block.last).any(&not_a_loop) || !self.reaches(head_block, b) {
                continue;
            }
            let end = by_head.entry(target).or_insert(last.next);
            *end = (*end).max(last.next);
        }
        let ranges: Vec<(u64, u64)> = by_head.into_iter().collect();
        let mut loops: Vec<RawLoop> = ranges
            .iter()
            .map(|&(head, end)| RawLoop {
                head,
                end,
                depth: 1 + ranges
                    .iter()
                    .filter(|&&(h, e)| (h, e) != (head, end) && h <= head && end <= e)
                    .count() as u32,
            })
            .collect();
        loops.sort_by_key(|l| (l.head, l.depth));
        loops
    }
}

/// Line-table rows of the wanted address ranges: (address, file id, line),
/// with `line` 0 at the end of a sequence.
#[derive(Default)]
struct LineTable {
    rows: Vec<(u64, u32, u32)>,
    files: HashMap<String, u32>,
}

impl LineTable {
    fn load(elf: &object::File<'_>, ranges: &[(u64, u64)]) -> Result<LineTable> {
        let mut ranges = ranges.to_vec();
        ranges.sort_unstable();
        let wanted = |a: u64| {
            let i = ranges.partition_point(|r| r.0 <= a);
            i > 0 && a < ranges[i - 1].1
        };
        let sections =
            gimli::DwarfSections::load(|id: gimli::SectionId| -> Result<Cow<'_, [u8]>> {
                Ok(match elf.section_by_name(id.name()) {
                    Some(s) if s.kind() != object::SectionKind::UninitializedData => s
                        .uncompressed_data()
                        .with_context(|| format!("section {}", id.name()))?,
                    _ => Cow::Borrowed(&[][..]),
                })
            })?;
        let endian = if elf.is_little_endian() {
            RunTimeEndian::Little
        } else {
            RunTimeEndian::Big
        };
        let dwarf = sections.borrow(|data| EndianSlice::new(data, endian));
        let mut table = LineTable::default();
        let mut units = dwarf.units();
        while let Some(header) = units.next()? {
            let Ok(unit) = dwarf.unit(header) else {
                continue;
            };
            let Some(program) = unit.line_program.clone() else {
                continue;
            };
            let mut names: HashMap<u64, Option<u32>> = HashMap::new();
            let mut rows = program.rows();
            while let Ok(Some((header, row))) = rows.next_row() {
                let address = row.address();
                if !wanted(address) {
                    continue;
                }
                if row.end_sequence() {
                    table.rows.push((address, u32::MAX, 0));
                    continue;
                }
                let Some(line) = row.line().and_then(|l| u32::try_from(l.get()).ok()) else {
                    continue;
                };
                let index = row.file_index();
                let id = *names.entry(index).or_insert_with(|| {
                    let name = render_file(&dwarf, &unit, header, index)?;
                    let next = table.files.len() as u32;
                    Some(*table.files.entry(name).or_insert(next))
                });
                if let Some(id) = id {
                    table.rows.push((address, id, line));
                }
            }
        }
        // Stable: at one address the row written last (the statement the
        // address starts) wins in `line_at`; a sequence's end sorts before
        // a next sequence starting at the same address.
        table.rows.sort_by_key(|r| (r.0, r.1 != u32::MAX));
        Ok(table)
    }

    fn file_id(&self, file: &str) -> Option<u32> {
        self.files.get(file).copied()
    }

    /// The line of the row covering `address`, if it is in `file`.
    fn line_at(&self, address: u64, file: u32) -> Option<u32> {
        let i = self.rows.partition_point(|r| r.0 <= address);
        let &(_, f, line) = self.rows.get(i.checked_sub(1)?)?;
        (f == file && line > 0).then_some(line)
    }

    /// The smallest and largest lines at or above `floor` among the rows of
    /// `file` in `[from, to)`, and the row covering `from`.
    fn span(&self, from: u64, to: u64, file: u32, floor: u32) -> Option<(u32, u32)> {
        let lo = self.rows.partition_point(|r| r.0 < from);
        let hi = self.rows.partition_point(|r| r.0 < to);
        let covering = self.line_at(from, file).into_iter();
        let lines = self.rows[lo..hi]
            .iter()
            .filter(|r| r.1 == file && r.2 > 0)
            .map(|r| r.2)
            .chain(covering)
            .filter(|&l| l >= floor);
        let (mut min, mut max) = (u32::MAX, 0);
        for l in lines {
            min = min.min(l);
            max = max.max(l);
        }
        (max > 0).then_some((min, max))
    }
}

/// `comp_dir` / directory / name, a later absolute part replacing the
/// earlier ones: exactly how the agent renders `functions.file`.
fn render_file<R: gimli::Reader>(
    dwarf: &gimli::Dwarf<R>,
    unit: &gimli::Unit<R>,
    header: &gimli::LineProgramHeader<R>,
    index: u64,
) -> Option<String> {
    let file = header.file(index)?;
    let mut path = std::path::PathBuf::new();
    if let Some(comp_dir) = &unit.comp_dir {
        path.push(&*comp_dir.to_string_lossy().ok()?);
    }
    if file.directory_index() != 0
        && let Some(dir) = file.directory(header)
        && let Ok(dir) = dwarf.attr_string(unit, dir)
    {
        path.push(&*dir.to_string_lossy().ok()?);
    }
    let name = dwarf.attr_string(unit, file.path_name()).ok()?;
    path.push(&*name.to_string_lossy().ok()?);
    Some(path.to_string_lossy().into_owned())
}

/// A symbol as the `functions` table names it (the agent's
/// `symbols::demangle`, which this crate cannot depend on): Rust (legacy
/// and v0) without hash, C++ without return type, anything else as it is.
pub fn demangle(symbol: &str) -> String {
    if looks_like_rust(symbol)
        && let Ok(d) = rustc_demangle::try_demangle(symbol)
    {
        return format!("{d:#}");
    }
    if symbol.starts_with("_Z")
        && let Ok(parsed) = cpp_demangle::Symbol::new(symbol.as_bytes())
        && let Ok(text) =
            parsed.demangle(&cpp_demangle::DemangleOptions::default().no_return_type())
        && !text.is_empty()
    {
        return text;
    }
    symbol.to_string()
}

/// Rust v0 names, and Rust legacy names (with their hash segment, possibly
/// followed by an LTO suffix such as `.llvm.1234`).
fn looks_like_rust(symbol: &str) -> bool {
    if symbol.starts_with("_R") {
        return true;
    }
    if !symbol.starts_with("_ZN") {
        return false;
    }
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
    let Some(at) = rest.len().checked_sub(17) else {
        return false;
    };
    let (Some(prefix), Some(segment)) = (rest.get(..at), rest.get(at..)) else {
        return false;
    };
    segment
        .strip_prefix('h')
        .is_some_and(|d| d.len() == 16 && d.bytes().all(|b| b.is_ascii_hexdigit()))
        && prefix.ends_with("17")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn insn(ip: u64, len: u64, kind: Kind) -> Insn {
        Insn {
            ip,
            next: ip + len,
            kind,
        }
    }

    /// for (;;) { if (c) break; call f } ; ret — built by hand.
    #[test]
    fn one_loop_with_a_call_and_an_exit() {
        let insns = vec![
            insn(0x10, 2, Kind::Next),
            insn(0x12, 2, Kind::Cond(0x1a)), // if (c) goto out
            insn(0x14, 4, Kind::Call(0x100)),
            insn(0x18, 2, Kind::Jump(0x12)), // back edge
            insn(0x1a, 1, Kind::Exit),       // out: ret
        ];
        let g = Graph::build(&insns, 0x10, 0x1b);
        // blocks: [0x10], [0x12], [0x14,0x18], [0x1a]
        assert_eq!(g.blocks.len(), 4);
        let loops = g.loops(&insns, |_| false);
        assert_eq!(loops.len(), 1);
        assert_eq!(
            (loops[0].head, loops[0].end, loops[0].depth),
            (0x12, 0x1a, 1)
        );
        // E: 0x10→0x12, 0x12→0x1a, 0x12→0x14, 0x14→0x12, 0x1a→exit = 5;
        // N = 4 + exit = 5; 5 − 5 + 2 = 2.
        assert_eq!(g.cyclomatic(), 2);
    }

    /// A backward jump to a shared `ret` block is no loop.
    #[test]
    fn a_jump_back_to_an_epilogue_is_no_loop() {
        let insns = vec![
            insn(0x10, 2, Kind::Cond(0x14)),
            insn(0x12, 1, Kind::Exit), // ret
            insn(0x14, 2, Kind::Next),
            insn(0x16, 2, Kind::Jump(0x12)),
        ];
        let g = Graph::build(&insns, 0x10, 0x18);
        assert!(g.loops(&insns, |_| false).is_empty());
        assert_eq!(g.cyclomatic(), 2);
    }

    #[test]
    fn nested_loops_have_depths() {
        let insns = vec![
            insn(0x10, 2, Kind::Next),       // outer head
            insn(0x12, 2, Kind::Next),       // inner head
            insn(0x14, 2, Kind::Cond(0x12)), // inner back edge
            insn(0x16, 2, Kind::Cond(0x10)), // outer back edge
            insn(0x18, 1, Kind::Exit),
        ];
        let g = Graph::build(&insns, 0x10, 0x19);
        let loops = g.loops(&insns, |_| false);
        let got: Vec<_> = loops.iter().map(|l| (l.head, l.end, l.depth)).collect();
        assert_eq!(got, vec![(0x10, 0x18, 1), (0x12, 0x16, 2)]);
    }

    #[test]
    fn demangles_like_the_functions_table() {
        assert_eq!(
            demangle("_ZN3app6loader9fetch_one17h0123456789abcdefE"),
            "app::loader::fetch_one"
        );
        assert_eq!(demangle("_ZN2ns6Loader5fetchEi"), "ns::Loader::fetch(int)");
        assert_eq!(demangle("fetch_one"), "fetch_one");
    }
}
