//! Argument and return values: how one function's saved registers become
//! the `args` and `ret` columns.
//!
//! The kernel copies rdi, rsi, rdx, rcx, r8, r9 at entry and rax at return,
//! blindly (System V x86-64). An [`ArgLayout`], built once per function from
//! its DWARF parameter types, says which register holds which parameter and
//! how wide it is, so a slot is the parameter's value (an `int` of -5 is -5,
//! not whatever the upper half of rdi held) or null when the parameter is not
//! in an integer register at all (floats, structs by value, ...).

use scope_common::MAX_ARGS;

use super::CallArgs;

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
        }
    }
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
}
