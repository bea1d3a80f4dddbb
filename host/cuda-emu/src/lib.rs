//! galley-cuda-emu runs galley's own CUDA kernels on the CPU, for tests on machines without a
//! GPU (CI, every contributor's laptop). It takes the very source text NVRTC compiles on a
//! GPU, compiles it with the system C++ compiler against `emu.h` (CUDA's built-in variables,
//! `__syncthreads`, warp shuffles, `__shared__` memory, the intrinsics galley uses), finds the
//! kernels after macro expansion, and launches them with cudarc's argument convention (one
//! pointer per parameter). Every GPU thread is a fiber, so barriers and shuffles rendezvous
//! as on the GPU; the blocks of a launch are shared out to a few worker threads.
//!
//! It checks what a kernel computes, and some of how it is launched and synchronised:
//! arguments against the kernel's parameter types (pointer or scalar, element size), CUDA's
//! launch limits (1,024 threads a block, 48 KiB of dynamic shared memory unless the launch
//! opts in, as `cuFuncSetAttribute` must on the GPU), writes past either end of a buffer
//! (guard words around each one), and races between a block's threads: shared memory starts
//! as NaN bytes in every block, a barrier frees its threads before any other thread moves on,
//! and every launch runs twice, the threads first to last and then last to first; a buffer
//! that differs names the race (a missing `__syncthreads` or `__syncwarp` was caught this way
//! in tests). It says nothing about speed, nor about what only the hardware decides (memory
//! ordering across blocks, warp-synchronous code that relies on lockstep). GPU tests stay the
//! authority.

pub mod check;

use std::collections::HashMap;
use std::ffi::c_void;
use std::path::Path;
use std::process::Command;

#[derive(Debug, thiserror::Error)]
pub enum EmuError {
    #[error("running the C++ compiler `{cxx}`: {msg}")]
    Compiler { cxx: String, msg: String },
    #[error("the kernel source does not compile for the CPU emulation:\n{0}")]
    Compile(String),
    #[error("kernel source: {0}")]
    Source(String),
    #[error("loading the compiled kernels: {0}")]
    Load(String),
    #[error("no kernel `{0}` in this module")]
    NoKernel(String),
    #[error("kernel `{kernel}`: {msg}")]
    Launch { kernel: String, msg: String },
    #[error(
        "kernel `{kernel}`: buffer argument {arg} (`{param}`) depends on the order its threads run in (a race: a missing __syncthreads or __syncwarp?)"
    )]
    OrderDependent {
        kernel: String,
        arg: usize,
        param: String,
    },
    #[error("kernel `{kernel}` wrote outside buffer argument {arg} (`{param}`)")]
    OutOfBounds {
        kernel: String,
        arg: usize,
        param: String,
    },
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

pub type Result<T> = std::result::Result<T, EmuError>;

/// Element types a buffer can hold (plain bits, any pattern valid).
///
/// # Safety
/// Implementors must be `Copy` types without padding for which every bit pattern is a value.
pub unsafe trait Pod: Copy + 'static {}
// SAFETY: primitive numbers, no padding, every bit pattern valid.
unsafe impl Pod for f32 {}
unsafe impl Pod for f64 {}
unsafe impl Pod for i32 {}
unsafe impl Pod for u32 {}
unsafe impl Pod for u16 {}
unsafe impl Pod for i64 {}
unsafe impl Pod for u64 {}
unsafe impl Pod for u8 {}
unsafe impl Pod for half::bf16 {}
unsafe impl Pod for half::f16 {}

/// Guard words on each side of a buffer's data; a kernel that writes into them is reported.
const GUARD: usize = 8;
const GUARD_WORD: u64 = 0xA5A5_5A5A_A5A5_5A5A;

/// "Device memory": host memory with guard words around it. A fresh `uninit` buffer holds
/// NaNs (all bits set), so a kernel that leaves an element unwritten shows in the results.
pub struct Buf {
    words: Vec<u64>,
    bytes: usize,
    elem: usize,
    /// The byte the padding after the data (up to a whole word) was filled with.
    pad: u8,
}

impl Buf {
    fn with_fill<T: Pod>(n: usize, fill: u8) -> Self {
        let bytes = n * size_of::<T>();
        let mut words = vec![GUARD_WORD; bytes.div_ceil(8) + 2 * GUARD];
        let end = words.len() - GUARD;
        let data = &mut words[GUARD..end];
        // SAFETY: u64s viewed as bytes; the slice covers exactly those words.
        unsafe { std::ptr::write_bytes(data.as_mut_ptr() as *mut u8, fill, data.len() * 8) };
        Self {
            words,
            bytes,
            elem: size_of::<T>(),
            pad: fill,
        }
    }

    /// A buffer holding `data`.
    pub fn from_slice<T: Pod>(data: &[T]) -> Self {
        let mut b = Self::with_fill::<T>(data.len(), 0);
        // SAFETY: the data region holds at least `bytes` bytes; T is plain bits.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr() as *const u8, b.data_ptr(), b.bytes) };
        b
    }

    /// `n` zeros.
    pub fn zeros<T: Pod>(n: usize) -> Self {
        Self::with_fill::<T>(n, 0)
    }

    /// `n` elements of all bits set (NaN for floats), as `alloc` leaves memory undefined.
    pub fn uninit<T: Pod>(n: usize) -> Self {
        Self::with_fill::<T>(n, 0xFF)
    }

    /// The contents as `T`s.
    pub fn to_vec<T: Pod>(&self) -> Vec<T> {
        assert_eq!(
            size_of::<T>(),
            self.elem,
            "read back as another element size"
        );
        let n = self.bytes / size_of::<T>();
        let mut out = Vec::<T>::with_capacity(n);
        // SAFETY: copies `bytes` bytes of plain data into capacity for exactly n T's.
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.words[GUARD..].as_ptr() as *const u8,
                out.as_mut_ptr() as *mut u8,
                self.bytes,
            );
            out.set_len(n);
        }
        out
    }

    pub fn len(&self) -> usize {
        self.bytes / self.elem.max(1)
    }

    pub fn is_empty(&self) -> bool {
        self.bytes == 0
    }

    fn data_ptr(&mut self) -> *mut u8 {
        self.words[GUARD..].as_mut_ptr() as *mut u8
    }

    fn guards_intact(&self) -> bool {
        let tail_bytes = (self.words.len() - 2 * GUARD) * 8 - self.bytes;
        let head = self.words[..GUARD].iter().all(|&w| w == GUARD_WORD);
        let tail = self.words[self.words.len() - GUARD..]
            .iter()
            .all(|&w| w == GUARD_WORD);
        // The padding up to the next whole word counts as outside too.
        let pad_ok = if tail_bytes == 0 {
            true
        } else {
            let last = self.words[self.words.len() - GUARD - 1].to_le_bytes();
            last[8 - tail_bytes..].iter().all(|&b| b == self.pad)
        };
        head && tail && pad_ok
    }
}

/// One kernel argument, as `PushKernelArg::arg` would pass it.
pub enum Arg<'a> {
    Buf(&'a mut Buf),
    I32(i32),
    U32(u32),
    I64(i64),
    U64(u64),
    F32(f32),
    F64(f64),
}

/// Grid, block and dynamic shared memory of a launch, as cudarc's `LaunchConfig`.
#[derive(Debug, Clone, Copy)]
pub struct LaunchCfg {
    pub grid: (u32, u32, u32),
    pub block: (u32, u32, u32),
    pub shared_bytes: usize,
    /// Whether the caller raised the kernel's dynamic shared memory limit (on the GPU:
    /// `CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES`), up to an H100/H200's 227 KiB.
    pub shared_opt_in: bool,
    /// Run the grid twice, the threads of each block between barriers first to last and then
    /// last to first, and report any buffer that differs (default on). A kernel whose threads
    /// race (a shared value read before the barrier that orders its write) gives different
    /// results; float atomics, whose order legitimately changes the sum, turn it off.
    pub order_check: bool,
}

impl LaunchCfg {
    pub fn new(grid: (u32, u32, u32), block: (u32, u32, u32), shared_bytes: usize) -> Self {
        Self {
            grid,
            block,
            shared_bytes,
            shared_opt_in: false,
            order_check: true,
        }
    }
}

const SHARED_DEFAULT: usize = 48 * 1024;
const SHARED_OPT_IN: usize = 227 * 1024;

/// A parameter of a kernel, as the source declares it.
#[derive(Debug, Clone)]
struct Param {
    ty: String,
    name: String,
}

impl Param {
    fn is_ptr(&self) -> bool {
        self.ty.contains('*')
    }
    /// The base type: qualifiers and the pointer star removed.
    fn base(&self) -> String {
        self.ty
            .replace('*', " ")
            .split_whitespace()
            .filter(|w| *w != "const" && *w != "volatile" && *w != "__restrict__")
            .collect::<Vec<_>>()
            .join(" ")
    }
    /// Bytes of the pointee, when the type is known.
    fn pointee_size(&self) -> Option<usize> {
        Some(match self.base().as_str() {
            "float" | "int" | "unsigned" | "unsigned int" => 4,
            "double" | "long long" | "unsigned long long" | "size_t" => 8,
            "bf16_t" | "unsigned short" | "short" | "__half" | "half" => 2,
            "char" | "unsigned char" | "signed char" | "bool" => 1,
            _ => return None,
        })
    }
    /// The argument a scalar parameter takes, when the type is known.
    fn scalar(&self) -> Option<&'static str> {
        Some(match self.base().as_str() {
            "float" => "F32",
            "double" => "F64",
            "int" => "I32",
            "unsigned" | "unsigned int" => "U32",
            "long long" => "I64",
            "unsigned long long" | "size_t" => "U64",
            _ => return None,
        })
    }
}

type LaunchFn = unsafe extern "C" fn(*const u32, u64, i32, *mut *mut c_void) -> u64;

/// A compiled module of kernels, loaded into this process.
pub struct Module {
    lib: libloading::Library,
    kernels: HashMap<String, Vec<Param>>,
    _dir: tempfile::TempDir,
}

fn cxx() -> String {
    std::env::var("CXX").unwrap_or_else(|_| "c++".into())
}

fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().map_err(|e| EmuError::Compiler {
        cxx: cxx(),
        msg: format!("{e} (install a C++ compiler, e.g. Debian's g++, or set CXX)"),
    })?;
    if !out.status.success() {
        return Err(EmuError::Compile(
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `extern __shared__ T name[];` (dynamic shared memory) has no C++ spelling: it becomes a
/// pointer to the launch's dynamic shared bytes. `__shared__ T name[N];` becomes a reference
/// to the running block's slot for that declaration (`shared_slot`), so every block starts
/// from poisoned memory instead of what the last block on its worker left.
fn lower_shared(src: &str) -> Result<String> {
    const KEY: &str = "__shared__";
    let mut out = String::with_capacity(src.len());
    let mut rest = src;
    while let Some(i) = rest.find(KEY) {
        let before = &rest[..i];
        let dynamic = before.trim_end().ends_with("extern");
        let keep = if dynamic {
            &before[..before.trim_end().len() - "extern".len()]
        } else {
            before
        };
        out.push_str(keep);
        let after = &rest[i + KEY.len()..];
        let end = after
            .find(';')
            .ok_or_else(|| EmuError::Source("a `__shared__` declaration without `;`".into()))?;
        let decl = after[..end].trim();
        let (head, dims) = match decl.find('[') {
            Some(k) => (&decl[..k], decl[k..].trim()),
            None => (decl, ""),
        };
        let words: Vec<&str> = head
            .split_whitespace()
            .filter(|w| !w.starts_with("__align__"))
            .collect();
        let (name, ty) = words
            .split_last()
            .ok_or_else(|| EmuError::Source(format!("`__shared__ {decl}`: no name")))?;
        let ty = ty.join(" ");
        if dynamic {
            if dims != "[]" {
                return Err(EmuError::Source(format!(
                    "`extern __shared__ {decl}`: expected `TYPE NAME[]`"
                )));
            }
            out.push_str(&format!(
                "{ty}* {name} = ({ty}*)::galley_emu::dyn_shared();"
            ));
        } else {
            out.push_str(&format!(
                "{ty} (&{name}){dims} = *reinterpret_cast<{ty}(*){dims}>(::galley_emu::shared_slot(sizeof({ty}{dims}), alignof({ty}), __COUNTER__));"
            ));
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// The kernels of the preprocessed source, by the marker `emu.h` puts on `__global__`.
fn scan(pre: &str) -> Result<HashMap<String, Vec<Param>>> {
    const MARK: &str = "__galley_emu_kernel__";
    let mut found = HashMap::new();
    let mut rest = pre;
    while let Some(i) = rest.find(MARK) {
        let after = rest[i + MARK.len()..].trim_start();
        let after = after
            .strip_prefix("void")
            .ok_or_else(|| EmuError::Source("a __global__ function must return void".into()))?
            .trim_start();
        let open = after
            .find('(')
            .ok_or_else(|| EmuError::Source("kernel without parameters".into()))?;
        let name = after[..open].trim().to_string();
        let close = after[open..]
            .find(')')
            .ok_or_else(|| EmuError::Source(format!("kernel `{name}`: unclosed parameters")))?
            + open;
        let list = &after[open + 1..close];
        let mut params = Vec::new();
        for p in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            if p.contains('<') || p.contains('(') {
                return Err(EmuError::Source(format!(
                    "kernel `{name}`: parameter `{p}` is beyond what the emulator parses"
                )));
            }
            let split = p
                .rfind(|c: char| c == '*' || c.is_whitespace())
                .ok_or_else(|| EmuError::Source(format!("kernel `{name}`: unnamed `{p}`")))?;
            params.push(Param {
                ty: p[..=split].trim().to_string(),
                name: p[split + 1..].trim().to_string(),
            });
        }
        if name.is_empty() || !name.chars().all(|c| c.is_alphanumeric() || c == '_') {
            return Err(EmuError::Source(format!("kernel name `{name}`")));
        }
        found.insert(name, params);
        rest = &after[close..];
    }
    Ok(found)
}

impl Module {
    /// Compiles `parts` (joined, as `compile_once` joins them for NVRTC) for the CPU.
    pub fn build(parts: &[&str]) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let src = lower_shared(&parts.concat())?;
        std::fs::write(dir.path().join("emu.h"), include_str!("emu.h"))?;
        let body = format!("#include \"emu.h\"\n#line 1 \"kernels.cu\"\n{src}\n");
        let cpp = dir.path().join("kernels.cpp");
        std::fs::write(&cpp, &body)?;
        let pre = run(Command::new(cxx())
            .args(["-std=c++17", "-E", "-P", "-DGALLEY_EMU_SCAN"])
            .arg(&cpp))?;
        let kernels = scan(&pre)?;
        let mut launchers = String::new();
        for (name, params) in &kernels {
            let args: Vec<String> = params
                .iter()
                .enumerate()
                .map(|(i, p)| format!("*({}*)a[{i}]", p.ty))
                .collect();
            launchers.push_str(&format!(
                "extern \"C\" unsigned long long galley_emu_launch__{name}(const unsigned int* d, unsigned long long sh, int rev, void** a) {{\n    return galley_emu::launch(d, sh, rev != 0, [&] {{ {name}({}); }});\n}}\n",
                args.join(", ")
            ));
        }
        std::fs::write(&cpp, format!("{body}\n{launchers}"))?;
        let so = dir.path().join("kernels.so");
        run(Command::new(cxx())
            .args([
                "-std=c++17",
                "-O2",
                "-fPIC",
                "-shared",
                "-pthread",
                "-w",
                "-o",
            ])
            .arg(&so)
            .arg(&cpp))?;
        let lib = load(&so)?;
        Ok(Self {
            lib,
            kernels,
            _dir: dir,
        })
    }

    /// The kernels found in the source.
    pub fn kernels(&self) -> Vec<&str> {
        let mut k: Vec<&str> = self.kernels.keys().map(String::as_str).collect();
        k.sort();
        k
    }

    /// Runs kernel `name` over the grid, like `cuLaunchKernel`, then synchronises.
    pub fn launch(&self, name: &str, cfg: LaunchCfg, args: &mut [Arg]) -> Result<()> {
        let params = self
            .kernels
            .get(name)
            .ok_or_else(|| EmuError::NoKernel(name.into()))?;
        let bad = |msg: String| EmuError::Launch {
            kernel: name.into(),
            msg,
        };
        let (b, g) = (cfg.block, cfg.grid);
        let threads = b.0 as u64 * b.1 as u64 * b.2 as u64;
        if threads == 0 || threads > 1024 || b.2 > 64 {
            return Err(bad(format!(
                "block {b:?}: CUDA allows 1..=1024 threads (z <= 64)"
            )));
        }
        if g.0 == 0 || g.1 == 0 || g.2 == 0 || g.1 > 65535 || g.2 > 65535 {
            return Err(bad(format!("grid {g:?} is outside CUDA's limits")));
        }
        let limit = if cfg.shared_opt_in {
            SHARED_OPT_IN
        } else {
            SHARED_DEFAULT
        };
        if cfg.shared_bytes > limit {
            return Err(bad(format!(
                "{} bytes of dynamic shared memory; the limit is {limit}{}",
                cfg.shared_bytes,
                if cfg.shared_opt_in {
                    ""
                } else {
                    " unless the kernel's attribute is raised"
                }
            )));
        }
        if args.len() != params.len() {
            return Err(bad(format!(
                "{} arguments for {} parameters",
                args.len(),
                params.len()
            )));
        }
        let mut slots = vec![0u64; args.len()];
        for (i, (a, p)) in args.iter_mut().zip(params).enumerate() {
            let (bits, kind) = match a {
                Arg::Buf(b) => (b.data_ptr() as u64, "Buf"),
                Arg::I32(v) => (*v as u32 as u64, "I32"),
                Arg::U32(v) => (*v as u64, "U32"),
                Arg::I64(v) => (*v as u64, "I64"),
                Arg::U64(v) => (*v, "U64"),
                Arg::F32(v) => (v.to_bits() as u64, "F32"),
                Arg::F64(v) => (v.to_bits(), "F64"),
            };
            let what = format!("argument {i} (`{} {}`)", p.ty, p.name);
            if p.is_ptr() {
                let Arg::Buf(b) = a else {
                    return Err(bad(format!("{what} needs a buffer, given {kind}")));
                };
                if let Some(want) = p.pointee_size()
                    && want != b.elem
                {
                    return Err(bad(format!(
                        "{what} needs {want}-byte elements, given {}",
                        b.elem
                    )));
                }
            } else {
                match p.scalar() {
                    Some(want) if want != kind => {
                        return Err(bad(format!("{what} needs {want}, given {kind}")));
                    }
                    None => return Err(bad(format!("{what}: type unknown to the emulator"))),
                    _ => {}
                }
            }
            slots[i] = bits;
        }
        let mut ptrs: Vec<*mut c_void> = slots
            .iter_mut()
            .map(|s| s as *mut u64 as *mut c_void)
            .collect();
        let dims = [g.0, g.1, g.2, b.0, b.1, b.2];
        let sym = format!("galley_emu_launch__{name}");
        // SAFETY (the symbol and both calls): the launcher was generated for this kernel with
        // this signature; every argument slot was checked against the parameter's kind and
        // size above, and points into a buffer that outlives the calls.
        let f: libloading::Symbol<LaunchFn> =
            unsafe { self.lib.get(sym.as_bytes()) }.map_err(|e| EmuError::Load(e.to_string()))?;
        let bufs = |args: &[Arg]| -> Vec<Option<Vec<u64>>> {
            args.iter()
                .map(|a| match a {
                    Arg::Buf(b) => Some(b.words.clone()),
                    _ => None,
                })
                .collect()
        };
        let before = cfg.order_check.then(|| bufs(args));
        let took = unsafe { f(dims.as_ptr(), cfg.shared_bytes as u64, 0, ptrs.as_mut_ptr()) };
        if took as usize > limit {
            return Err(bad(format!(
                "a block takes {took} bytes of shared memory, static and dynamic together; the limit is {limit}"
            )));
        }
        if let Some(before) = before {
            // The same launch with every block's threads in the other order, from the same
            // inputs (restored in place: the argument pointers stay valid).
            let first = bufs(args);
            for (a, w) in args.iter_mut().zip(&before) {
                if let (Arg::Buf(b), Some(w)) = (a, w) {
                    b.words.copy_from_slice(w);
                }
            }
            unsafe { f(dims.as_ptr(), cfg.shared_bytes as u64, 1, ptrs.as_mut_ptr()) };
            for (i, (a, w)) in args.iter().zip(&first).enumerate() {
                if let (Arg::Buf(b), Some(w)) = (a, w)
                    && &b.words != w
                {
                    return Err(EmuError::OrderDependent {
                        kernel: name.into(),
                        arg: i,
                        param: params[i].name.clone(),
                    });
                }
            }
        }
        for (i, a) in args.iter().enumerate() {
            if let Arg::Buf(b) = a
                && !b.guards_intact()
            {
                return Err(EmuError::OutOfBounds {
                    kernel: name.into(),
                    arg: i,
                    param: params[i].name.clone(),
                });
            }
        }
        Ok(())
    }
}

fn load(so: &Path) -> Result<libloading::Library> {
    // SAFETY: a library this module just compiled; its initialisers are emu.h's (none that
    // run code beyond zeroing statics).
    unsafe { libloading::Library::new(so) }.map_err(|e| EmuError::Load(e.to_string()))
}

#[cfg(test)]
mod tests;
