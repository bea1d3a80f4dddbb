//! What the GPU ran, kernel by kernel: NVIDIA's CUPTI activity API records every kernel,
//! memory copy and memset with its start and end on the device's clock, and `Profiler`
//! sums them by name between two points of a run. It is how the benchmarks answer "where
//! does a step's time go" on a machine with no profiler installed (`GALLEY_CUDA_PROFILE=1`
//! in `bench/gpu_train.rs` and `examples/speed`): the library is opened at run time, as NCCL
//! is, from the CUDA toolkit or the copy PyTorch's packages carry (`GALLEY_CUPTI_LIB` names
//! another). Nothing else in galley uses it.
//!
//! Records are read at fixed offsets that every record version CUPTI 12 and 13 define keeps
//! (kind at 0; start and end at 16 and 24; a kernel's name at 104), checked against their
//! headers; anything else is counted under its kind.

use std::collections::HashMap;
use std::ffi::{CStr, c_char, c_void};
use std::sync::{Mutex, OnceLock};

type Result<T> = std::result::Result<T, String>;

/// CUpti_ActivityKind values (cupti_activity.h).
const KIND_MEMCPY: u32 = 1;
const KIND_MEMSET: u32 = 2;
const KIND_KERNEL: u32 = 3;
const KIND_CONCURRENT_KERNEL: u32 = 10;
/// The kinds recorded: kernels (concurrent: recording them does not serialise the GPU),
/// copies and memsets.
const KINDS: [u32; 3] = [KIND_CONCURRENT_KERNEL, KIND_MEMCPY, KIND_MEMSET];
const FLUSH_FORCED: u32 = 1;
/// Bytes per activity buffer (CUPTI asks for buffers as it fills them).
const BUFFER: usize = 8 << 20;

type RequestFn = unsafe extern "C" fn(*mut *mut u8, *mut usize, *mut usize);
type CompleteFn = unsafe extern "C" fn(*mut c_void, u32, *mut u8, usize, usize);

struct Api {
    _lib: libloading::Library,
    enable: unsafe extern "C" fn(u32) -> i32,
    disable: unsafe extern "C" fn(u32) -> i32,
    register: unsafe extern "C" fn(RequestFn, CompleteFn) -> i32,
    flush_all: unsafe extern "C" fn(u32) -> i32,
    next_record: unsafe extern "C" fn(*mut u8, usize, *mut *mut u8) -> i32,
}

fn api() -> Result<&'static Api> {
    static API: OnceLock<Result<Api>> = OnceLock::new();
    API.get_or_init(|| {
        let names: Vec<String> = match std::env::var("GALLEY_CUPTI_LIB") {
            Ok(p) => vec![p],
            Err(_) => ["libcupti.so.13", "libcupti.so.12", "libcupti.so"]
                .map(String::from)
                .to_vec(),
        };
        let mut tried = Vec::new();
        for n in &names {
            // SAFETY: loading CUPTI runs its initialisers, which only set up its own state.
            match unsafe { libloading::Library::new(n) } {
                Ok(lib) => return load(lib),
                Err(e) => tried.push(format!("{n}: {e}")),
            }
        }
        Err(format!("no CUPTI library ({})", tried.join("; ")))
    })
    .as_ref()
    .map_err(Clone::clone)
}

fn load(lib: libloading::Library) -> Result<Api> {
    // SAFETY: the symbols are CUPTI's C entry points, with the signatures its headers give.
    unsafe {
        macro_rules! sym {
            ($name:literal) => {
                *lib.get($name)
                    .map_err(|e| format!("CUPTI: {}: {e}", String::from_utf8_lossy($name)))?
            };
        }
        Ok(Api {
            enable: sym!(b"cuptiActivityEnable"),
            disable: sym!(b"cuptiActivityDisable"),
            register: sym!(b"cuptiActivityRegisterCallbacks"),
            flush_all: sym!(b"cuptiActivityFlushAll"),
            next_record: sym!(b"cuptiActivityGetNextRecord"),
            _lib: lib,
        })
    }
}

fn check(what: &str, r: i32) -> Result<()> {
    match r {
        0 => Ok(()),
        e => Err(format!("CUPTI: {what} failed with error {e}")),
    }
}

/// Time and count per name, filled by CUPTI's thread as buffers complete.
static STATS: Mutex<Option<HashMap<String, (u64, u64)>>> = Mutex::new(None);

/// One record: its name (a kernel's, or `[memcpy]` / `[memset]` / `[kind N]`) and duration.
///
/// # Safety
/// `rec` points to a complete CUPTI activity record.
unsafe fn decode(rec: *const u8) -> (String, u64) {
    // SAFETY (all reads): inside the record, per the offsets above.
    let at = |off: usize| unsafe { std::ptr::read_unaligned(rec.add(off) as *const u64) };
    let kind = unsafe { std::ptr::read_unaligned(rec as *const u32) };
    let name = match kind {
        KIND_KERNEL | KIND_CONCURRENT_KERNEL => {
            let p = at(104) as *const c_char;
            match p.is_null() {
                true => "[kernel]".to_string(),
                false => unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned(),
            }
        }
        KIND_MEMCPY => "[memcpy]".into(),
        KIND_MEMSET => "[memset]".into(),
        k => return (format!("[kind {k}]"), 0),
    };
    (name, at(24).saturating_sub(at(16)))
}

unsafe extern "C" fn requested(buf: *mut *mut u8, size: *mut usize, max: *mut usize) {
    // 8-byte aligned, as CUPTI requires; freed in `completed`.
    let b = vec![0u64; BUFFER / 8].into_boxed_slice();
    // SAFETY: CUPTI passes valid out-pointers.
    unsafe {
        *buf = Box::into_raw(b) as *mut u8;
        *size = BUFFER;
        *max = 0;
    }
}

unsafe extern "C" fn completed(
    _ctx: *mut c_void,
    _stream: u32,
    buf: *mut u8,
    _size: usize,
    valid: usize,
) {
    if let Ok(api) = api() {
        let mut stats = STATS.lock().unwrap_or_else(|e| e.into_inner());
        let stats = stats.get_or_insert_with(HashMap::new);
        let mut rec: *mut u8 = std::ptr::null_mut();
        // SAFETY: `buf` is a buffer from `requested` holding `valid` bytes of records.
        while unsafe { (api.next_record)(buf, valid, &mut rec) } == 0 {
            let (name, ns) = unsafe { decode(rec) };
            let e = stats.entry(name).or_insert((0, 0));
            e.0 += 1;
            e.1 += ns;
        }
    }
    // SAFETY: allocated by `requested` as a boxed slice of BUFFER / 8 words.
    drop(unsafe {
        Box::from_raw(std::ptr::slice_from_raw_parts_mut(
            buf as *mut u64,
            BUFFER / 8,
        ))
    });
}

/// Records what the GPU runs from `start` on; `take` sums what ran since the last `take`.
/// One at a time per process (CUPTI's activity recording is process-wide).
pub struct Profiler(&'static Api);

impl Profiler {
    pub fn start() -> Result<Self> {
        let api = api()?;
        static REGISTERED: OnceLock<Result<()>> = OnceLock::new();
        REGISTERED
            // SAFETY: the callbacks have the signatures CUPTI calls them with.
            .get_or_init(|| {
                check("registering buffers", unsafe {
                    (api.register)(requested, completed)
                })
            })
            .clone()?;
        for k in KINDS {
            // SAFETY: a plain call with a valid activity kind.
            check("enabling a record kind", unsafe { (api.enable)(k) })?;
        }
        *STATS.lock().unwrap_or_else(|e| e.into_inner()) = Some(HashMap::new());
        Ok(Self(api))
    }

    /// What ran since `start` or the last `take` (synchronise the device first: only
    /// finished work has been recorded).
    pub fn take(&self) -> Result<Profile> {
        // SAFETY: a plain call; completed buffers come back through `completed`.
        check("flushing", unsafe { (self.0.flush_all)(FLUSH_FORCED) })?;
        let stats = STATS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .replace(HashMap::new())
            .unwrap_or_default();
        Ok(Profile::from_stats(stats))
    }
}

impl Drop for Profiler {
    fn drop(&mut self) {
        for k in KINDS {
            // SAFETY: a plain call with a valid activity kind.
            unsafe { (self.0.disable)(k) };
        }
    }
}

/// Device time by name, largest first.
#[derive(Debug, Clone, Default)]
pub struct Profile {
    /// (name, count, nanoseconds).
    pub rows: Vec<(String, u64, u64)>,
}

impl Profile {
    fn from_stats(stats: HashMap<String, (u64, u64)>) -> Self {
        let mut rows: Vec<_> = stats.into_iter().map(|(n, (c, ns))| (n, c, ns)).collect();
        rows.sort_by(|a, b| b.2.cmp(&a.2).then_with(|| a.0.cmp(&b.0)));
        Self { rows }
    }

    /// Device nanoseconds in all (work on different streams may overlap: then more than
    /// the wall time).
    pub fn total_ns(&self) -> u64 {
        self.rows.iter().map(|r| r.2).sum()
    }

    /// A markdown table of the `top` largest: share, milliseconds, count, microseconds each,
    /// name (cut to 100 characters), then the rest in one line.
    pub fn table(&self, top: usize) -> String {
        let total = self.total_ns().max(1) as f64;
        let mut s = String::from(
            "| share | ms | count | us each | kernel |\n| ---: | ---: | ---: | ---: | --- |\n",
        );
        for (name, count, ns) in self.rows.iter().take(top) {
            let name: String = name.chars().take(100).collect();
            s += &format!(
                "| {:.1}% | {:.2} | {count} | {:.1} | `{name}` |\n",
                100.0 * *ns as f64 / total,
                *ns as f64 / 1e6,
                *ns as f64 / 1e3 / (*count).max(1) as f64
            );
        }
        let rest: (u64, u64) = self
            .rows
            .iter()
            .skip(top)
            .fold((0, 0), |a, r| (a.0 + r.1, a.1 + r.2));
        if rest.0 > 0 {
            s += &format!(
                "| {:.1}% | {:.2} | {} | | ({} other names) |\n",
                100.0 * rest.1 as f64 / total,
                rest.1 as f64 / 1e6,
                rest.0,
                self.rows.len() - top
            );
        }
        s + &format!("total device time: {:.2} ms\n", total / 1e6)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record laid out as CUPTI's kernel, memcpy and memset records are.
    fn record(kind: u32, start: u64, end: u64, name: Option<&CStr>) -> Vec<u64> {
        let mut r = vec![0u64; 28];
        r[0] = kind as u64; // kind is the first 4 bytes (little-endian)
        r[2] = start;
        r[3] = end;
        if let Some(n) = name {
            r[13] = n.as_ptr() as u64;
        }
        r
    }

    #[test]
    fn records_decode_by_kind_and_sum_by_name() {
        let gemm = c"sm90_xmma_gemm_bf16bf16";
        let recs = [
            record(KIND_CONCURRENT_KERNEL, 1_000, 4_000, Some(gemm)),
            record(KIND_KERNEL, 10_000, 11_000, Some(gemm)),
            record(KIND_MEMCPY, 5, 505, None),
            record(KIND_MEMSET, 7, 107, None),
            record(KIND_CONCURRENT_KERNEL, 9, 9, None),
            record(42, 0, 99, None),
        ];
        let mut stats = HashMap::new();
        for r in &recs {
            // SAFETY: each is a full record-sized buffer.
            let (name, ns) = unsafe { decode(r.as_ptr() as *const u8) };
            let e = stats.entry(name).or_insert((0, 0));
            e.0 += 1;
            e.1 += ns;
        }
        let p = Profile::from_stats(stats);
        assert_eq!(p.rows[0], ("sm90_xmma_gemm_bf16bf16".into(), 2, 4_000));
        assert_eq!(p.rows[1], ("[memcpy]".into(), 1, 500));
        assert_eq!(p.rows[2], ("[memset]".into(), 1, 100));
        assert!(p.rows.contains(&("[kernel]".into(), 1, 0)));
        assert!(p.rows.contains(&("[kind 42]".into(), 1, 0)));
        assert_eq!(p.total_ns(), 4_600);
        let t = p.table(2);
        assert!(
            t.contains("| 87.0% | 0.00 | 2 | 2.0 | `sm90_xmma_gemm_bf16bf16` |"),
            "{t}"
        );
        assert!(
            t.contains("(3 other names)") && t.contains("total device time"),
            "{t}"
        );
    }

    #[test]
    fn a_missing_library_is_an_error_not_a_crash() {
        // This machine has no GPU and, in CI, no CUPTI: `start` says so. Where a CUPTI is
        // installed (a GPU machine) it may start; either way it must not panic.
        match Profiler::start() {
            Ok(p) => drop(p),
            Err(e) => assert!(e.contains("CUPTI"), "{e}"),
        }
    }
}
