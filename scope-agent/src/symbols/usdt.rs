//! USDT probes (SystemTap SDT, what `DTRACE_PROBE`/`STAP_PROBE` compile to):
//! the `.note.stapsdt` notes of an ELF file, each a probe's provider, name,
//! address, semaphore and argument specs (`-4@%eax 8@16(%rbp) 4@$5`).
//!
//! Per the SystemTap SDT note format: note name "stapsdt", type 3; the
//! descriptor holds the probe's address, the link-time address of
//! `.stapsdt.base`, the semaphore's address (0: none), then three
//! NUL-terminated strings: provider, name, arguments. A prelinked file
//! moves `.stapsdt.base`; the difference moves the probe and semaphore.

use std::path::Path;

use object::elf;
use object::read::elf::{ElfFile64, NoteIterator, ProgramHeader, SectionHeader};
use object::{LittleEndian, Object, ObjectSection};

/// The note type of a SystemTap SDT probe.
const NT_STAPSDT: u32 = 3;

/// One USDT probe of a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsdtProbe {
    pub provider: String,
    pub name: String,
    /// The probed instruction's virtual address and file offset.
    pub address: u64,
    pub file_offset: u64,
    /// The semaphore's file offset (the kernel increments it while the
    /// probe is attached: `ref_ctr_offset`); `None` without one.
    pub semaphore_offset: Option<u64>,
    /// The argument specs as written in the note.
    pub args_text: String,
    /// Each argument decoded (`None`: a form scope cannot read, such as an
    /// indexed address `(%rax,%rbx,8)`; recorded as null).
    pub args: Vec<Option<UsdtArg>>,
}

/// Where one argument's value is, and how wide it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UsdtArg {
    /// 1, 2, 4 or 8 bytes.
    pub size: u8,
    pub signed: bool,
    pub loc: ArgLoc,
}

/// Where the value is at the probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArgLoc {
    /// `$N`: a constant.
    Const(i64),
    /// `%reg`: a register (an index of [`REGS`]).
    Reg(u8),
    /// `OFF(%reg)`: memory at the register plus an offset.
    Deref(u8, i64),
}

/// x86-64 registers by index, with their narrower names (what the specs
/// may use): the index is what the kernel side reads from `pt_regs`.
pub const REGS: [&[&str]; 17] = [
    &["rax", "eax", "ax", "al"],
    &["rbx", "ebx", "bx", "bl"],
    &["rcx", "ecx", "cx", "cl"],
    &["rdx", "edx", "dx", "dl"],
    &["rsi", "esi", "si", "sil"],
    &["rdi", "edi", "di", "dil"],
    &["rbp", "ebp", "bp", "bpl"],
    &["rsp", "esp", "sp", "spl"],
    &["r8", "r8d", "r8w", "r8b"],
    &["r9", "r9d", "r9w", "r9b"],
    &["r10", "r10d", "r10w", "r10b"],
    &["r11", "r11d", "r11w", "r11b"],
    &["r12", "r12d", "r12w", "r12b"],
    &["r13", "r13d", "r13w", "r13b"],
    &["r14", "r14d", "r14w", "r14b"],
    &["r15", "r15d", "r15w", "r15b"],
    &["rip", "eip", "ip"],
];

/// The USDT probes of the ELF file at `path` (empty when it has none).
pub fn usdt_probes_of(path: &Path) -> Result<Vec<UsdtProbe>, String> {
    let data = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    usdt_probes(&data).map_err(|e| format!("{}: {e}", path.display()))
}

/// The USDT probes of an ELF file's bytes.
pub fn usdt_probes(data: &[u8]) -> Result<Vec<UsdtProbe>, String> {
    let file =
        ElfFile64::<LittleEndian>::parse(data).map_err(|e| format!("not a 64-bit ELF: {e}"))?;
    let endian = file.endian();
    let base_now = file.section_by_name(".stapsdt.base").map(|s| s.address());
    let segments: Vec<(u64, u64, u64)> = file
        .elf_program_headers()
        .iter()
        .filter(|p| p.p_type(endian) == elf::PT_LOAD)
        .map(|p| (p.p_vaddr(endian), p.p_filesz(endian), p.p_offset(endian)))
        .collect();
    let to_offset = |vaddr: u64| {
        segments
            .iter()
            .find(|(v, size, _)| vaddr >= *v && vaddr < v + size)
            .map(|(v, _, off)| vaddr - v + off)
    };
    let mut out = Vec::new();
    for section in file.elf_section_table().iter() {
        if section.sh_type(endian) != elf::SHT_NOTE {
            continue;
        }
        let Ok(Some(mut notes)): Result<Option<NoteIterator<'_, _>>, _> =
            section.notes(endian, data)
        else {
            continue;
        };
        while let Ok(Some(note)) = notes.next() {
            if note.name() != b"stapsdt" || note.n_type(endian) != NT_STAPSDT {
                continue;
            }
            let desc = note.desc();
            if desc.len() < 24 {
                return Err("a stapsdt note shorter than its three addresses".into());
            }
            let word = |i: usize| u64::from_le_bytes(desc[i * 8..i * 8 + 8].try_into().unwrap());
            let (pc, base, sem) = (word(0), word(1), word(2));
            let mut strings = desc[24..].split(|&b| b == 0);
            let mut text = || {
                strings
                    .next()
                    .map(|s| String::from_utf8_lossy(s).into_owned())
                    .ok_or_else(|| "a stapsdt note without its strings".to_string())
            };
            let (provider, name, args_text) = (text()?, text()?, text()?);
            let shift = base_now.map_or(0, |now| now.wrapping_sub(base));
            let address = pc.wrapping_add(shift);
            let Some(file_offset) = to_offset(address) else {
                return Err(format!(
                    "USDT probe {provider}:{name} at {address:#x} lies in no loaded segment"
                ));
            };
            let semaphore_offset = if sem == 0 {
                None
            } else {
                to_offset(sem.wrapping_add(shift))
            };
            let args = args_text.split_whitespace().map(parse_arg).collect();
            out.push(UsdtProbe {
                provider,
                name,
                address,
                file_offset,
                semaphore_offset,
                args_text,
                args,
            });
        }
    }
    out.sort_by(|a, b| (&a.provider, &a.name, a.address).cmp(&(&b.provider, &b.name, b.address)));
    Ok(out)
}

/// One argument spec: `[-]SIZE@OPERAND` with OPERAND `%reg`, `$const`,
/// `(%reg)` or `OFF(%reg)`. `None` for anything else.
pub fn parse_arg(spec: &str) -> Option<UsdtArg> {
    let (size, operand) = match spec.split_once('@') {
        Some((s, o)) => (s.parse::<i32>().ok()?, o),
        // No size: an 8-byte value (old notes).
        None => (8, spec),
    };
    let signed = size < 0;
    let size = u8::try_from(size.unsigned_abs()).ok()?;
    if !matches!(size, 1 | 2 | 4 | 8) {
        return None;
    }
    let loc = if let Some(c) = operand.strip_prefix('$') {
        ArgLoc::Const(parse_int(c)?)
    } else if let Some(r) = operand.strip_prefix('%') {
        ArgLoc::Reg(reg_index(r)?)
    } else {
        let (off, rest) = operand.split_once('(')?;
        let reg = rest.strip_suffix(')')?.strip_prefix('%')?;
        let off = if off.is_empty() { 0 } else { parse_int(off)? };
        ArgLoc::Deref(reg_index(reg)?, off)
    };
    Some(UsdtArg { size, signed, loc })
}

fn reg_index(name: &str) -> Option<u8> {
    REGS.iter()
        .position(|names| names.contains(&name))
        .map(|i| i as u8)
}

fn parse_int(s: &str) -> Option<i64> {
    let (neg, digits) = match s.strip_prefix('-') {
        Some(d) => (true, d),
        None => (false, s),
    };
    let v = match digits.strip_prefix("0x") {
        Some(h) => i64::from_str_radix(h, 16).ok()?,
        None => digits.parse().ok()?,
    };
    Some(if neg { -v } else { v })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argument_specs() {
        let a = |s: &str| parse_arg(s);
        assert_eq!(
            a("-4@%eax"),
            Some(UsdtArg {
                size: 4,
                signed: true,
                loc: ArgLoc::Reg(0)
            })
        );
        assert_eq!(a("8@%r15").unwrap().loc, ArgLoc::Reg(15));
        assert_eq!(a("-4@112(%rsp)").unwrap().loc, ArgLoc::Deref(7, 112));
        assert_eq!(a("8@-0x18(%rbp)").unwrap().loc, ArgLoc::Deref(6, -0x18));
        assert_eq!(a("8@(%rdi)").unwrap().loc, ArgLoc::Deref(5, 0));
        assert_eq!(a("4@$5").unwrap().loc, ArgLoc::Const(5));
        assert_eq!(a("1@%sil").unwrap().loc, ArgLoc::Reg(4));
        // Forms scope does not read: null arguments, not errors.
        assert_eq!(a("8@(%rax,%rbx,8)"), None);
        assert_eq!(a("3@%rax"), None);
        assert_eq!(a("8@%xmm0"), None);
    }

    /// Debian's python3.11 carries CPython's probes, semaphore-guarded.
    #[test]
    fn cpython_probes() {
        let path = Path::new("/usr/bin/python3.11");
        if !path.exists() {
            eprintln!("skipped: no {}", path.display());
            return;
        }
        let probes = usdt_probes_of(path).unwrap();
        let import = probes
            .iter()
            .find(|p| p.name == "import__find__load__start")
            .expect("import__find__load__start");
        assert_eq!(import.provider, "python");
        assert!(import.semaphore_offset.is_some());
        assert_eq!(import.args.len(), 1);
        let line = probes.iter().find(|p| p.name == "line").unwrap();
        assert_eq!(line.args.len(), 3);
        assert!(line.args.iter().all(Option::is_some), "{line:?}");
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(usdt_probes(b"not an elf").is_err());
        // An ELF without notes has no probes.
        let me = std::fs::read("/proc/self/exe").unwrap();
        assert!(usdt_probes(&me).is_ok());
    }
}
