//! The plugin author's command-line flags (`galley plugin build | new | bindings | inspect`),
//! beside what they drive: `BuildFlags::build_all` builds each folder, detecting the Rust
//! toolchain once, on first need. Behind the `clap` feature; the binary prints.

use crate::{Built, NewKind, NewLang, Result, Toolchain};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct BuildFlags {
    /// Plugin crate folders.
    #[arg(required = true)]
    pub dirs: Vec<PathBuf>,
    /// Where the components go, as NAME.wasm.
    #[arg(short, long, default_value = "target/plugins")]
    pub out_dir: PathBuf,
    /// One cargo target dir shared by all these builds (faster; default: GALLEY_WASM_TARGET_DIR
    /// if set, else a separate dir per plugin in the galley cache). Share only between
    /// plugins you trust: a build script can write into the shared dir.
    #[arg(long)]
    pub target_dir: Option<PathBuf>,
}

impl BuildFlags {
    /// Builds every folder in order, handing each result to `built` as it lands;
    /// `toolchain` hears of the Rust toolchain when one is first needed.
    pub fn build_all(
        &self,
        toolchain: &mut dyn FnMut(&Toolchain),
        built: &mut dyn FnMut(&Built),
    ) -> Result<()> {
        let found = std::cell::OnceCell::new();
        let toolchain = std::cell::RefCell::new(toolchain);
        let rust = || -> Result<Toolchain> {
            if let Some(t) = found.get() {
                return Ok(*t);
            }
            let t = Toolchain::detect()?;
            (toolchain.borrow_mut())(&t);
            Ok(*found.get_or_init(|| t))
        };
        for dir in &self.dirs {
            let target_dir = self
                .target_dir
                .clone()
                .unwrap_or_else(|| crate::default_target_dir(dir));
            built(&crate::build(dir, &self.out_dir, &target_dir, rust)?);
        }
        Ok(())
    }
}

#[derive(clap::Args, Debug)]
pub struct NewFlags {
    /// The plugin's name (also the folder, unless --dir).
    pub name: String,
    #[arg(long, value_enum, default_value = "rust")]
    pub lang: NewLang,
    #[arg(long, value_enum, default_value = "reward")]
    pub kind: NewKind,
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
pub struct BindingsFlags {
    #[arg(long, value_enum, default_value = "reward")]
    pub kind: NewKind,
    #[arg(short, long)]
    pub out_dir: PathBuf,
}

#[derive(clap::Args, Debug)]
pub struct InspectFlags {
    pub file: PathBuf,
    #[arg(long)]
    pub json: bool,
}
