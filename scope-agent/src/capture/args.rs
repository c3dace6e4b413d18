//! Argument and return values: how one function's saved registers become
//! the `args` and `ret` columns.
//!
//! The kernel copies rdi, rsi, rdx, rcx, r8, r9 at entry and rax at return,
//! blindly (System V x86-64). An [`ArgLayout`], built once per function from
//! its DWARF parameter types, says which register holds which parameter and
//! how wide it is, so a slot is the parameter's value (an `int` of -5 is -5,
//! not whatever the upper half of rdi held) or null when the parameter is not
//! in an integer register at all (floats, structs by value, ...).

use scope_common::{
    ArgsStrEvent, COOKIE_RAW0_FLAG, COOKIE_RAW1_FLAG, COOKIE_RET_ADDR_FLAG, COOKIE_STR0_SHIFT,
    COOKIE_STR1_SHIFT, MAX_ARGS, MAX_STR_ARGS, SOCKADDR_BYTES, STR_BUF,
};

use super::{ArgStrings, CallArgs};

/// Appended to a string cut at the `--arg-strings` cap.
pub const TRUNCATED_MARK: char = '…';

/// How one register is turned into a stored value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum RegValue {
    /// Not in an integer register (or unknown): stored as null.
    #[default]
    Null,
    /// All 64 bits, as an `i64` (pointers, 64-bit integers, unknown types).
    Raw,
    /// The low `bits` bits, sign-extended.
    Signed(u8),
    /// The low `bits` bits, zero-extended.
    Unsigned(u8),
}

impl RegValue {
    pub fn apply(self, reg: u64) -> Option<i64> {
        match self {
            RegValue::Null => None,
            RegValue::Raw => Some(reg as i64),
            RegValue::Signed(bits) if bits > 0 && bits < 64 => {
                let shift = 64 - u32::from(bits);
                Some(((reg << shift) as i64) >> shift)
            }
            RegValue::Unsigned(bits) if bits > 0 && bits < 64 => {
                Some((reg & ((1u64 << bits) - 1)) as i64)
            }
            RegValue::Signed(_) | RegValue::Unsigned(_) => Some(reg as i64),
        }
    }
}

/// One stored argument slot: which register (0 = rdi … 5 = r9) and how.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ArgSlot {
    pub reg: u8,
    pub value: RegValue,
}

/// How a function's registers map to its `args` slots and `ret`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArgLayout {
    /// Slots stored (one per parameter, the first [`MAX_ARGS`]).
    pub len: u8,
    pub slots: [ArgSlot; MAX_ARGS],
    /// How rax becomes `ret` (`Null` for `void` and non-integer returns).
    pub ret: RegValue,
    /// Slots whose parameter is a pointer to a 1-byte character type
    /// (`char *`, `const char *`, `unsigned char *`), bit i for slot i.
    pub strings: u8,
    /// Per slot: 0, or the slot (+ 1) holding the byte count of the buffer
    /// the slot's string is (`--hooks`: SSL_write's `buf` and `num`): the
    /// string is cut to that many bytes, as the buffer has no NUL.
    pub lengths: [u8; MAX_ARGS],
    /// Slots whose pointer is a socket address (`--hooks net`: connect's
    /// and sendto's peer), bit i for slot i: read like a string slot, but
    /// as [`SOCKADDR_BYTES`] bytes, stored as "10.0.0.3:5432", "[::1]:443"
    /// or "unix:/path".
    pub addrs: u8,
    /// 0, or the slot (+ 1) of a socket address the function fills in
    /// (accept's `addr`): read at the return, stored in that slot of
    /// `arg_strings` like `addrs`.
    pub ret_addr: u8,
}

impl Default for ArgLayout {
    /// Without DWARF: the six registers as they are, and rax as it is.
    fn default() -> Self {
        let mut slots = [ArgSlot::default(); MAX_ARGS];
        for (i, s) in slots.iter_mut().enumerate() {
            *s = ArgSlot {
                reg: i as u8,
                value: RegValue::Raw,
            };
        }
        ArgLayout {
            len: MAX_ARGS as u8,
            slots,
            ret: RegValue::Raw,
            strings: 0,
            lengths: [0; MAX_ARGS],
            addrs: 0,
            ret_addr: 0,
        }
    }
}

impl ArgLayout {
    /// The slots whose strings the kernel reads: the first
    /// [`MAX_STR_ARGS`] string slots held in a register.
    pub fn string_slots(&self) -> [Option<usize>; MAX_STR_ARGS] {
        let mut out = [None; MAX_STR_ARGS];
        let slots = (0..usize::from(self.len.min(MAX_ARGS as u8))).filter(|&i| {
            (self.strings | self.addrs) & (1 << i) != 0 && self.slots[i].value != RegValue::Null
        });
        for (o, i) in out.iter_mut().zip(slots) {
            *o = Some(i);
        }
        out
    }

    /// The cookie bits that make the kernel read this function's strings:
    /// the register (1 = rdi … 6 = r9) of each string slot in its 3-bit
    /// field; 0 without string slots.
    pub fn string_cookie(&self) -> u64 {
        let mut cookie = 0;
        // Only rsi is kept at the entry (accept's, accept4's `addr`).
        if self.ret_addr == 2 {
            cookie |= COOKIE_RET_ADDR_FLAG;
        }
        for (n, slot) in self.string_slots().into_iter().enumerate() {
            if let Some(i) = slot {
                let (shift, raw) = if n == 0 {
                    (COOKIE_STR0_SHIFT, COOKIE_RAW0_FLAG)
                } else {
                    (COOKIE_STR1_SHIFT, COOKIE_RAW1_FLAG)
                };
                cookie |= (u64::from(self.slots[i].reg) + 1) << shift;
                if self.addrs & (1 << i) != 0 {
                    cookie |= raw;
                }
            }
        }
        cookie
    }

    /// The `arg_strings` of one entry record: one element per slot, the
    /// strings the kernel read in the string slots, `None` elsewhere.
    pub fn strings(&self, ev: &ArgsStrEvent, cap: usize, args: &CallArgs) -> ArgStrings {
        let mut out = vec![None; usize::from(self.len.min(MAX_ARGS as u8))];
        for (n, slot) in self.string_slots().into_iter().enumerate() {
            if let Some(i) = slot {
                if self.addrs & (1 << i) != 0 {
                    out[i] = decode_sockaddr(ev.str_len[n], &ev.strs[n]);
                    continue;
                }
                out[i] = match self.lengths[i].checked_sub(1) {
                    Some(l) => {
                        let bytes = args.get(usize::from(l)).unwrap_or(0).max(0) as usize;
                        decode_buf(ev.str_len[n], &ev.strs[n], cap, bytes)
                    }
                    None => decode_str(ev.str_len[n], &ev.strs[n], cap),
                };
            }
        }
        out.into_boxed_slice()
    }
}

/// One string as the kernel read it: `len` is `bpf_probe_read_user_str`'s
/// result (bytes including the NUL; negative when the pointer could not be
/// read, e.g. NULL). The kernel reads up to `cap + 1` characters, so more
/// than `cap` means the string is longer: it is cut to `cap` bytes and
/// [`TRUNCATED_MARK`] is appended. Invalid UTF-8 is replaced (lossy).
pub fn decode_str(len: i32, buf: &[u8; STR_BUF], cap: usize) -> Option<String> {
    if len <= 0 {
        return None;
    }
    let chars = (len as usize - 1).min(STR_BUF);
    let keep = chars.min(cap);
    let mut s = String::from_utf8_lossy(&buf[..keep]).into_owned();
    if chars > cap {
        s.push(TRUNCATED_MARK);
    }
    Some(s)
}

/// A socket address the kernel copied ([`SOCKADDR_BYTES`] bytes; `len`
/// one more, or negative when the pointer could not be read) as text:
/// "10.0.0.3:5432", "[2001:db8::1]:443", "unix:/run/x.sock" (the path cut
/// to what was read), "unix:@name" (abstract), else "family N".
pub fn decode_sockaddr(len: i32, buf: &[u8; STR_BUF]) -> Option<String> {
    if len != SOCKADDR_BYTES as i32 + 1 {
        return None;
    }
    let b = &buf[..SOCKADDR_BYTES as usize];
    let family = u16::from_ne_bytes([b[0], b[1]]);
    let port = u16::from_be_bytes([b[2], b[3]]);
    Some(match i32::from(family) {
        libc::AF_INET => format!("{}.{}.{}.{}:{port}", b[4], b[5], b[6], b[7]),
        libc::AF_INET6 => {
            let ip: [u8; 16] = b[8..24].try_into().expect("16 bytes");
            format!("[{}]:{port}", std::net::Ipv6Addr::from(ip))
        }
        libc::AF_UNIX => {
            let path = &b[2..];
            if path.first() == Some(&0) {
                let name = &path[1..];
                let end = name.iter().position(|&c| c == 0).unwrap_or(name.len());
                format!("unix:@{}", String::from_utf8_lossy(&name[..end]))
            } else {
                let end = path.iter().position(|&c| c == 0).unwrap_or(path.len());
                format!("unix:{}", String::from_utf8_lossy(&path[..end]))
            }
        }
        f => format!("family {f}"),
    })
}

/// A buffer of `bytes` bytes the kernel read as a string: its first
/// `min(bytes, cap)` bytes (fewer at a NUL), marked cut when the buffer
/// holds more than `cap`.
pub fn decode_buf(len: i32, buf: &[u8; STR_BUF], cap: usize, bytes: usize) -> Option<String> {
    if len <= 0 {
        return None;
    }
    let read = (len as usize - 1).min(STR_BUF);
    let keep = read.min(bytes).min(cap);
    let mut s = String::from_utf8_lossy(&buf[..keep]).into_owned();
    if bytes > cap && read > cap {
        s.push(TRUNCATED_MARK);
    }
    Some(s)
}

impl ArgLayout {
    /// The stored values of one entry's registers.
    pub fn args(&self, regs: &[u64; MAX_ARGS]) -> CallArgs {
        let mut out = CallArgs {
            len: self.len.min(MAX_ARGS as u8),
            ..CallArgs::default()
        };
        for i in 0..usize::from(out.len) {
            let slot = self.slots[i];
            let reg = regs.get(usize::from(slot.reg)).copied().unwrap_or(0);
            match slot.value.apply(reg) {
                Some(v) => out.values[i] = v,
                None => out.null_mask |= 1 << i,
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn widths_and_signs() {
        let minus_five_in_edi = 0x0000_0000_ffff_fffb_u64;
        assert_eq!(RegValue::Signed(32).apply(minus_five_in_edi), Some(-5));
        assert_eq!(
            RegValue::Unsigned(32).apply(minus_five_in_edi),
            Some(0xffff_fffb)
        );
        assert_eq!(RegValue::Signed(8).apply(0xdead_beef_0000_0080), Some(-128));
        assert_eq!(RegValue::Unsigned(8).apply(0x1ff), Some(0xff));
        assert_eq!(RegValue::Raw.apply(u64::MAX), Some(-1));
        assert_eq!(RegValue::Signed(64).apply(7), Some(7));
        assert_eq!(RegValue::Null.apply(7), None);
    }

    #[test]
    fn layout_maps_slots_to_registers() {
        // f(double d, int x, long y): d is in xmm0, x in edi, y in rsi.
        let mut slots = [ArgSlot::default(); MAX_ARGS];
        slots[1] = ArgSlot {
            reg: 0,
            value: RegValue::Signed(32),
        };
        slots[2] = ArgSlot {
            reg: 1,
            value: RegValue::Raw,
        };
        let layout = ArgLayout {
            len: 3,
            slots,
            ret: RegValue::Null,
            strings: 0,
            lengths: [0; MAX_ARGS],
            addrs: 0,
            ret_addr: 0,
        };
        let args = layout.args(&[0xffff_ffff, 42, 9, 9, 9, 9]);
        assert_eq!(args.len, 3);
        assert_eq!(
            (0..3).map(|i| args.get(i)).collect::<Vec<_>>(),
            vec![None, Some(-1), Some(42)]
        );
        assert_eq!(args.get(3), None);
        let default = ArgLayout::default().args(&[1, 2, 3, 4, 5, 6]);
        assert_eq!(default.len, 6);
        assert_eq!(default.get(5), Some(6));
    }

    #[test]
    fn strings_decode_with_cap_and_mark() {
        let mut buf = [0u8; STR_BUF];
        buf[..6].copy_from_slice(b"hello\0");
        assert_eq!(decode_str(6, &buf, 8).as_deref(), Some("hello"));
        // Exactly cap bytes: not truncated.
        assert_eq!(decode_str(6, &buf, 5).as_deref(), Some("hello"));
        // cap + 1 characters read: longer than the cap.
        assert_eq!(decode_str(6, &buf, 4).as_deref(), Some("hell…"));
        assert_eq!(decode_str(1, &buf, 4).as_deref(), Some(""));
        assert_eq!(decode_str(-14, &buf, 4), None);
        assert_eq!(decode_str(0, &buf, 4), None);
        buf[0] = 0xff;
        assert_eq!(decode_str(3, &buf, 8).as_deref(), Some("\u{fffd}e"));
    }

    #[test]
    fn string_slots_name_registers_in_the_cookie() {
        // f(double d, const char *a, int n, char *b, char *c): a in rdi,
        // b in rdx, c in rcx; only the first two strings are read.
        let mut slots = [ArgSlot::default(); MAX_ARGS];
        for (slot, reg) in [(1, 0), (2, 1), (3, 2), (4, 3)] {
            slots[slot] = ArgSlot {
                reg,
                value: RegValue::Raw,
            };
        }
        let layout = ArgLayout {
            len: 5,
            slots,
            ret: RegValue::Null,
            strings: 0b11010,
            lengths: [0; MAX_ARGS],
            addrs: 0,
            ret_addr: 0,
        };
        assert_eq!(layout.string_slots(), [Some(1), Some(3)]);
        assert_eq!(
            layout.string_cookie(),
            (1 << COOKIE_STR0_SHIFT) | (3 << COOKIE_STR1_SHIFT)
        );
        let mut ev = ArgsStrEvent {
            args: Default::default(),
            str_len: [3, -14],
            strs: [[0; STR_BUF]; MAX_STR_ARGS],
        };
        ev.strs[0][..3].copy_from_slice(b"hi\0");
        assert_eq!(
            &*layout.strings(&ev, 16, &CallArgs::default()),
            &[None, Some("hi".to_string()), None, None, None]
        );
        assert_eq!(ArgLayout::default().string_cookie(), 0);
    }

    #[test]
    fn socket_addresses_decode_by_family() {
        let mut buf = [0u8; STR_BUF];
        let len = SOCKADDR_BYTES as i32 + 1;
        buf[..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
        buf[2..4].copy_from_slice(&5432u16.to_be_bytes());
        buf[4..8].copy_from_slice(&[10, 213, 7, 3]);
        assert_eq!(
            decode_sockaddr(len, &buf).as_deref(),
            Some("10.213.7.3:5432")
        );
        assert_eq!(decode_sockaddr(-14, &buf), None, "a fault is null");
        let mut v6 = [0u8; STR_BUF];
        v6[..2].copy_from_slice(&(libc::AF_INET6 as u16).to_ne_bytes());
        v6[2..4].copy_from_slice(&443u16.to_be_bytes());
        v6[23] = 1;
        assert_eq!(decode_sockaddr(len, &v6).as_deref(), Some("[::1]:443"));
        let mut un = [0u8; STR_BUF];
        un[..2].copy_from_slice(&(libc::AF_UNIX as u16).to_ne_bytes());
        un[2..2 + 11].copy_from_slice(b"/run/x.sock");
        assert_eq!(
            decode_sockaddr(len, &un).as_deref(),
            Some("unix:/run/x.sock")
        );
        // The layout asks the kernel for the raw read in the slot's field.
        let mut layout = ArgLayout {
            len: 3,
            ..ArgLayout::default()
        };
        layout.addrs = 0b10;
        assert_eq!(layout.string_slots(), [Some(1), None]);
        assert_eq!(
            layout.string_cookie(),
            (2 << COOKIE_STR0_SHIFT) | COOKIE_RAW0_FLAG
        );
    }
}
