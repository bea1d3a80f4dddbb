//! The WASI host calls a plugin could otherwise block in, made to return at once. Epoch
//! interruption stops wasm code, not the host while it serves a call: a plugin that sleeps
//! (`subscribe-duration` then `poll`, which is what `sleep()` compiles to) or opens a FIFO in
//! a granted folder would hold galley past any time budget. So, shadowing wasmtime-wasi's
//! definitions of exactly these functions:
//! - the monotonic clock is virtual: `subscribe-duration` and `subscribe-instant` move it
//!   forward to the wake-up time and hand back a pollable that is already ready, so a sleep
//!   returns at once and the plugin still sees the time it asked for pass (a loop that waits
//!   for a deadline ends);
//! - `open-at` refuses anything that is not a regular file, a folder or a symlink it will not
//!   follow (FIFOs, sockets, devices): opening a FIFO for reading blocks until a writer comes.
//!   The type is checked with `stat-at` just before opening; a process racing to swap a file
//!   for a FIFO in between is outside the model (grants are read-only to plugins, so only
//!   something outside galley could).
//!
//! Every other blocking source is closed by the context itself (no stdin, no sockets, stdout
//! and stderr never block).

use crate::sandbox::PluginState;
use std::sync::atomic::Ordering;
use wasmtime::StoreContextMut;
use wasmtime::component::{Linker, Resource};
use wasmtime_wasi::clocks::WasiClocksView;
use wasmtime_wasi::filesystem::WasiFilesystemView;
use wasmtime_wasi::p2::DynPollable;
use wasmtime_wasi::p2::bindings::clocks::monotonic_clock as clock;
use wasmtime_wasi::p2::bindings::sync::filesystem::types as fs;

/// The WASI 0.2 release wasmtime-wasi defines; imports of any 0.2.x resolve to it.
const WASI: &str = "0.2.12";

type Store<'a> = StoreContextMut<'a, PluginState>;

/// A pollable that is ready now, after moving the virtual clock to `until` (never back).
fn ready_at(mut store: Store<'_>, until: u64) -> wasmtime::Result<(Resource<DynPollable>,)> {
    let st = store.data_mut();
    st.clock.fetch_max(until, Ordering::Relaxed);
    Ok((clock::Host::subscribe_duration(&mut st.clocks(), 0)?,))
}

/// Whether opening a thing of this type is safe: it cannot block.
fn openable(t: fs::DescriptorType, follow: bool) -> bool {
    use fs::DescriptorType as T;
    match t {
        T::RegularFile | T::Directory => true,
        // Not followed, opening it fails at once; followed, `stat-at` already saw its target.
        T::SymbolicLink => !follow,
        T::Fifo | T::Socket | T::BlockDevice | T::CharacterDevice | T::Unknown => false,
    }
}

type OpenArgs = (
    Resource<fs::Descriptor>,
    fs::PathFlags,
    String,
    fs::OpenFlags,
    fs::DescriptorFlags,
);

fn open_at(
    mut store: Store<'_>,
    (fd, path_flags, path, oflags, flags): OpenArgs,
) -> wasmtime::Result<(Result<Resource<fs::Descriptor>, fs::ErrorCode>,)> {
    let mut view = store.data_mut().filesystem();
    let follow = path_flags.contains(fs::PathFlags::SYMLINK_FOLLOW);
    let again = Resource::new_borrow(fd.rep());
    // A failed stat (nothing there yet) is left to `open-at`, which reports it the usual way.
    if let Ok(stat) = fs::HostDescriptor::stat_at(&mut view, again, path_flags, path.clone())
        && !openable(stat.type_, follow)
    {
        tracing::debug!("refused to open {path:?}: a {:?}", stat.type_);
        return Ok((Err(fs::ErrorCode::Access),));
    }
    match fs::HostDescriptor::open_at(&mut view, fd, path_flags, path, oflags, flags) {
        Ok(d) => Ok((Ok(d),)),
        Err(e) => Ok((Err(fs::Host::convert_error_code(&mut view, e)?),)),
    }
}

/// Shadows wasmtime-wasi's clock subscriptions and `open-at` in `linker` (which must already
/// hold the WASI imports).
pub(crate) fn add_to_linker(linker: &mut Linker<PluginState>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let mut clocks = linker.instance(&format!("wasi:clocks/monotonic-clock@{WASI}"))?;
    clocks.func_wrap("subscribe-duration", |store: Store<'_>, (d,): (u64,)| {
        let now = store.data().clock.load(Ordering::Relaxed);
        ready_at(store, now.saturating_add(d))
    })?;
    clocks.func_wrap("subscribe-instant", |store: Store<'_>, (when,): (u64,)| {
        ready_at(store, when)
    })?;
    let mut types = linker.instance(&format!("wasi:filesystem/types@{WASI}"))?;
    types.func_wrap("[method]descriptor.open-at", open_at)?;
    linker.allow_shadowing(false);
    Ok(())
}
