//! Sampled stacks → function names, with the symbol layer
//! ([`crate::symbols`]): an address falls in an executable mapping of
//! `/proc/PID/maps`, which gives its file and file offset, and the ELF
//! symbols of that file (read once per file, through
//! `/proc/PID/map_files`) give the function. Each stack id is symbolized
//! once: without `BPF_F_REUSE_STACKID` a stack id's slot never changes
//! once filled, so a cache per id stays true.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::symbols::FunctionSymbol;
use crate::symbols::maps::{ExecRange, exec_ranges, process_modules};

/// A function of a module: `(module index, function index)` in the
/// [`Symbolizer`].
pub type FnKey = (usize, usize);

/// One stack, symbolized.
#[derive(Debug, Clone)]
pub struct Stack {
    /// User addresses, leaf first.
    pub addrs: Vec<u64>,
    /// Names, leaf first: the function, else `module+0xoff`, else
    /// `[unknown]`.
    pub frames: Arc<[String]>,
    /// The function of each frame, where one was found.
    pub functions: Vec<Option<FnKey>>,
    /// Every frame lay in a known mapping (else the stack is symbolized
    /// again next time: a library, or `exec`, may have mapped it since).
    pub complete: bool,
}

/// The symbols of one mapped file.
struct Module {
    /// As in `/proc/PID/maps`.
    path: PathBuf,
    /// `/proc/PID/map_files/…`: what to read, and to attach probes to.
    open_path: PathBuf,
    /// `None` until first needed; empty when the file has no symbols.
    functions: Option<Vec<FunctionSymbol>>,
    /// (file offset, size, index into `functions`), by file offset.
    by_offset: Vec<(u64, u64, usize)>,
    is_main: bool,
}

/// Turns addresses of one process into functions.
pub struct Symbolizer {
    pid: u32,
    ranges: Vec<(ExecRange, usize)>,
    modules: Vec<Module>,
    last_refresh: Option<Instant>,
    stacks: HashMap<i32, Arc<Stack>>,
    /// Addresses of stacks not symbolized for good yet.
    pending: HashMap<i32, Vec<u64>>,
}

/// Re-read the process's mappings at most this often (an address outside
/// every known mapping asks for it: a library loaded since).
const REFRESH_EVERY: Duration = Duration::from_millis(500);

impl Symbolizer {
    /// The mappings are read at the first address, not here: `record`
    /// starts sampling before its command's `exec`.
    pub fn new(pid: u32) -> Self {
        Self {
            pid,
            ranges: Vec::new(),
            modules: Vec::new(),
            last_refresh: None,
            stacks: HashMap::new(),
            pending: HashMap::new(),
        }
    }

    /// The stack `id` holds, symbolized once; `read` reads its addresses
    /// from the kernel's stack map (leaf first) the first time.
    pub fn stack(
        &mut self,
        id: i32,
        read: impl FnOnce() -> Option<Vec<u64>>,
    ) -> Option<Arc<Stack>> {
        if let Some(s) = self.stacks.get(&id) {
            return Some(Arc::clone(s));
        }
        let addrs = match self.pending.remove(&id) {
            Some(a) => a,
            None => read()?,
        };
        let stack = Arc::new(self.symbolize(addrs));
        if stack.complete {
            self.stacks.insert(id, Arc::clone(&stack));
        } else {
            self.pending.insert(id, stack.addrs.clone());
        }
        Some(stack)
    }

    /// Symbolizes one stack (leaf first).
    pub fn symbolize(&mut self, addrs: Vec<u64>) -> Stack {
        let mut frames = Vec::with_capacity(addrs.len());
        let mut functions = Vec::with_capacity(addrs.len());
        let mut complete = true;
        for (i, &addr) in addrs.iter().enumerate() {
            // A return address is the instruction after the call; the call
            // itself (one byte back) is in the caller even when the call is
            // the function's last instruction.
            let lookup = if i == 0 { addr } else { addr.saturating_sub(1) };
            let (name, key) = self.resolve(lookup);
            complete &= key.is_some() || self.range_of(lookup).is_some();
            frames.push(name);
            functions.push(key);
        }
        Stack {
            addrs,
            frames: frames.into(),
            functions,
            complete,
        }
    }

    /// The module path, the function, and the path to attach probes to.
    pub fn function(&self, key: FnKey) -> Option<(&Path, &FunctionSymbol, &Path, bool)> {
        let m = self.modules.get(key.0)?;
        let f = m.functions.as_ref()?.get(key.1)?;
        Some((&m.path, f, &m.open_path, m.is_main))
    }

    fn resolve(&mut self, addr: u64) -> (String, Option<FnKey>) {
        let mut found = self.range_of(addr);
        if found.is_none() && self.may_refresh() {
            self.refresh();
            found = self.range_of(addr);
        }
        let Some((range_start, file_offset_base, m)) = found else {
            return ("[unknown]".to_string(), None);
        };
        let off = addr - range_start + file_offset_base;
        let module = &mut self.modules[m];
        if module.functions.is_none() {
            let functions = crate::symbols::load_module(&module.open_path, &module.path)
                .map(|s| s.functions)
                .unwrap_or_default();
            let mut by_offset: Vec<(u64, u64, usize)> = functions
                .iter()
                .enumerate()
                .map(|(i, f)| (f.file_offset, f.size, i))
                .collect();
            by_offset.sort_unstable();
            module.by_offset = by_offset;
            module.functions = Some(functions);
        }
        let idx = module.by_offset.partition_point(|(o, _, _)| *o <= off);
        if idx > 0 {
            let (o, size, i) = module.by_offset[idx - 1];
            if off < o.saturating_add(size.max(1))
                && let Some(f) = module.functions.as_ref().and_then(|fs| fs.get(i))
            {
                return (f.name.clone(), Some((m, i)));
            }
        }
        let base = module.path.file_name().map_or_else(
            || module.path.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        (format!("{base}+{off:#x}"), None)
    }

    /// (mapping start, its file offset, module index) of the mapping
    /// holding `addr`.
    fn range_of(&self, addr: u64) -> Option<(u64, u64, usize)> {
        let i = self.ranges.partition_point(|(r, _)| r.start <= addr);
        let (r, m) = self.ranges.get(i.checked_sub(1)?)?;
        (addr < r.end).then_some((r.start, r.file_offset, *m))
    }

    fn may_refresh(&self) -> bool {
        self.last_refresh
            .is_none_or(|t| t.elapsed() >= REFRESH_EVERY)
    }

    /// Re-reads the mappings; modules already known keep their symbols. A
    /// process that is gone keeps the last mappings read.
    fn refresh(&mut self) {
        self.last_refresh = Some(Instant::now());
        let Ok(ranges) = exec_ranges(self.pid) else {
            return;
        };
        let mapped = process_modules(self.pid).unwrap_or_default();
        let mut out = Vec::with_capacity(ranges.len());
        for r in ranges {
            let m = match self.modules.iter().position(|m| m.path == r.path) {
                Some(m) => m,
                None => {
                    let found = mapped.iter().find(|mm| mm.path == r.path);
                    self.modules.push(Module {
                        path: r.path.clone(),
                        open_path: found.map_or_else(
                            || {
                                PathBuf::from(format!(
                                    "/proc/{}/map_files/{:x}-{:x}",
                                    self.pid, r.start, r.end
                                ))
                            },
                            |mm| mm.open_path.clone(),
                        ),
                        functions: None,
                        by_offset: Vec::new(),
                        is_main: found.is_some_and(|mm| mm.is_main),
                    });
                    self.modules.len() - 1
                }
            };
            out.push((r, m));
        }
        out.sort_by_key(|(r, _)| r.start);
        self.ranges = out;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[inline(never)]
    fn marker_function() -> u64 {
        std::hint::black_box(42)
    }

    #[test]
    fn resolves_a_function_of_this_test_binary() {
        let addr = marker_function as *const () as usize as u64;
        let mut s = Symbolizer::new(std::process::id());
        let stack = s.symbolize(vec![addr + 1, 0x10]);
        assert!(
            stack.frames[0].contains("marker_function"),
            "{:?}",
            stack.frames
        );
        assert!(stack.functions[0].is_some());
        assert_eq!(&*stack.frames[1], "[unknown]");
        assert!(stack.functions[1].is_none());
    }

    #[test]
    fn stacks_are_read_once_per_id() {
        let mut s = Symbolizer::new(std::process::id());
        let here = marker_function as *const () as usize as u64;
        let mut reads = 0;
        for _ in 0..3 {
            let st = s.stack(7, || {
                reads += 1;
                Some(vec![here])
            });
            assert!(st.is_some());
        }
        assert_eq!(reads, 1);
        // An address outside every mapping: read once, symbolized again
        // each time (a mapping may appear).
        let mut reads = 0;
        for _ in 0..3 {
            let st = s.stack(9, || {
                reads += 1;
                Some(vec![0x10])
            });
            assert_eq!(&*st.unwrap().frames[0], "[unknown]");
        }
        assert_eq!(reads, 1);
        assert!(s.stack(8, || None).is_none());
    }
}
