//! `--sched`: where `struct task_struct` keeps a task's pid and tgid, read
//! from the kernel's own BTF (`/sys/kernel/btf/vmlinux`), for the raw
//! tracepoint programs `scope_sched_switch` and `scope_sched_wakeup`, which
//! are handed a `task_struct *` and nothing else.
//!
//! Written by hand: aya-obj parses BTF but keeps its type and member
//! accessors crate-private, and this needs one struct's two members. A BTF
//! type section is a flat list of records whose lengths follow from their
//! kind (see the kernel's `Documentation/bpf/btf.rst`), so the walk is short
//! and bounds-checked.

use std::path::Path;

/// The kernel's BTF.
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

const BTF_MAGIC: u16 = 0xeb9f;
const KIND_INT: u32 = 1;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_TYPE_TAG: u32 = 18;

/// Byte offsets of `pid` and `tgid` in `struct task_struct`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskOffsets {
    pub pid: u32,
    pub tgid: u32,
}

/// Reads [`TaskOffsets`] from the BTF at `path`; the error says what is
/// missing, for the "recording without --sched" warning.
pub fn task_offsets(path: &Path) -> Result<TaskOffsets, String> {
    let data = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let btf = Btf::parse(&data).map_err(|e| format!("{}: {e}", path.display()))?;
    let task = btf
        .struct_named("task_struct")
        .ok_or_else(|| format!("{}: no struct task_struct", path.display()))?;
    let member = |name: &str| {
        btf.member_offset(task, name, 0)
            .ok_or_else(|| format!("{}: task_struct has no 4-byte {name}", path.display()))
    };
    Ok(TaskOffsets {
        pid: member("pid")?,
        tgid: member("tgid")?,
    })
}

/// One BTF type record: its kind, name, `size_or_type` and, for structs
/// and unions, the members (name offset, type id, bit offset).
struct Type {
    kind: u32,
    name_off: u32,
    size_or_type: u32,
    members: Vec<(u32, u32, u32)>,
}

struct Btf<'a> {
    strings: &'a [u8],
    /// By type id; id 0 is `void`.
    types: Vec<Type>,
}

fn u32_at(b: &[u8], at: usize) -> Result<u32, String> {
    b.get(at..at + 4)
        .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
        .ok_or_else(|| "truncated BTF".to_string())
}

impl<'a> Btf<'a> {
    fn parse(b: &'a [u8]) -> Result<Self, String> {
        let magic = b
            .get(0..2)
            .map(|m| u16::from_le_bytes([m[0], m[1]]))
            .ok_or("not BTF")?;
        if magic != BTF_MAGIC {
            return Err("not little-endian BTF".into());
        }
        let hdr_len = u32_at(b, 4)? as usize;
        let (type_off, type_len) = (u32_at(b, 8)? as usize, u32_at(b, 12)? as usize);
        let (str_off, str_len) = (u32_at(b, 16)? as usize, u32_at(b, 20)? as usize);
        let section = |off: usize, len: usize| {
            hdr_len
                .checked_add(off)
                .and_then(|s| Some((s, s.checked_add(len)?)))
                .and_then(|(s, e)| b.get(s..e))
                .ok_or_else(|| "BTF section out of bounds".to_string())
        };
        let t = section(type_off, type_len)?;
        let strings = section(str_off, str_len)?;
        let mut types = vec![Type {
            kind: 0,
            name_off: 0,
            size_or_type: 0,
            members: Vec::new(),
        }];
        let mut at = 0usize;
        while at < t.len() {
            let name_off = u32_at(t, at)?;
            let info = u32_at(t, at + 4)?;
            let size_or_type = u32_at(t, at + 8)?;
            at += 12;
            let kind = (info >> 24) & 0x1f;
            let vlen = (info & 0xffff) as usize;
            let kind_flag = info >> 31 == 1;
            let mut members = Vec::new();
            let extra = match kind {
                KIND_INT => 4,
                3 => 12, // array
                KIND_STRUCT | KIND_UNION => {
                    for i in 0..vlen {
                        let m = at + 12 * i;
                        let off = u32_at(t, m + 8)?;
                        // With kind_flag, the top 8 bits are a bitfield's size.
                        let bits = if kind_flag { off & 0x00ff_ffff } else { off };
                        members.push((u32_at(t, m)?, u32_at(t, m + 4)?, bits));
                    }
                    12 * vlen
                }
                6 | 13 => 8 * vlen,        // enum, func_proto
                14 | 17 => 4,              // var, decl_tag
                15 | 19 => 12 * vlen,      // datasec, enum64
                2 | 7..=12 | 16 | 18 => 0, // ptr, fwd, typedef, qualifiers, func, float, type_tag
                k => return Err(format!("unknown BTF kind {k}")),
            };
            at += extra;
            types.push(Type {
                kind,
                name_off,
                size_or_type,
                members,
            });
        }
        Ok(Self { strings, types })
    }

    fn name(&self, off: u32) -> &[u8] {
        let s = self.strings.get(off as usize..).unwrap_or(&[]);
        &s[..s.iter().position(|&c| c == 0).unwrap_or(s.len())]
    }

    /// The id of the struct named `name` that has members (not a forward
    /// declaration).
    fn struct_named(&self, name: &str) -> Option<u32> {
        self.types
            .iter()
            .position(|t| {
                t.kind == KIND_STRUCT
                    && !t.members.is_empty()
                    && self.name(t.name_off) == name.as_bytes()
            })
            .map(|i| i as u32)
    }

    /// The byte offset of member `name` of struct or union `id`, looked for
    /// in anonymous members too (a randomized layout nests every field in
    /// one); only a 4-byte integer qualifies.
    fn member_offset(&self, id: u32, name: &str, base_bits: u32) -> Option<u32> {
        let t = self.types.get(id as usize)?;
        for &(name_off, ty, bits) in &t.members {
            let at = base_bits + bits;
            if name_off == 0 {
                let inner = self.resolve(ty)?;
                if matches!(self.types[inner as usize].kind, KIND_STRUCT | KIND_UNION)
                    && let Some(off) = self.member_offset(inner, name, at)
                {
                    return Some(off);
                }
            } else if self.name(name_off) == name.as_bytes() {
                let r = &self.types[self.resolve(ty)? as usize];
                return (r.kind == KIND_INT && r.size_or_type == 4 && at.is_multiple_of(8))
                    .then_some(at / 8);
            }
        }
        None
    }

    /// `id` with typedefs and qualifiers taken off.
    fn resolve(&self, mut id: u32) -> Option<u32> {
        for _ in 0..32 {
            let t = self.types.get(id as usize)?;
            match t.kind {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = t.size_or_type
                }
                _ => return Some(id),
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The running kernel's BTF: every kernel this machine kind runs has it
    /// (Linux 6.18, CONFIG_DEBUG_INFO_BTF). pid comes right before tgid.
    #[test]
    fn the_running_kernel_says_where_pid_and_tgid_are() {
        let off = task_offsets(Path::new(VMLINUX_BTF)).expect("vmlinux BTF");
        assert_eq!(off.tgid, off.pid + 4, "{off:?}");
        assert!(off.pid > 0 && off.pid < 16384, "{off:?}");
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        // Truncated or foreign bytes: an error each (a panic fails the test).
        for bytes in [
            &b""[..],
            b"\x9f\xeb\x01\x00",
            &[0u8; 64],
            b"hello world, not btf at all",
        ] {
            assert!(Btf::parse(bytes).is_err());
        }
        let dir = std::env::temp_dir().join(format!("scope-btf-{}", std::process::id()));
        std::fs::write(&dir, b"\x9f\xeb\x01\x00\x18\x00\x00\x00").unwrap();
        let err = task_offsets(&dir).unwrap_err();
        assert!(err.contains("BTF") || err.contains("task_struct"), "{err}");
        let _ = std::fs::remove_file(&dir);
    }
}
