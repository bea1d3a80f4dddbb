//! `galley launch`: galley-launch pins this binary and the project's galley.lock and writes
//! the SkyPilot task or Slurm script (its flags are `galley_launch::flags::LaunchFlags`);
//! this module submits it with `sky launch` or `sbatch` unless `--emit` only writes it.

use anyhow::{Context, Result};
use galley_launch::flags::LaunchFlags;

pub fn run(a: LaunchFlags) -> Result<()> {
    let workdir = std::env::current_dir()?;
    let this = std::env::current_exe().context("finding this galley binary")?;
    let job = a.job(&workdir, &this, env!("CARGO_PKG_VERSION"))?;
    for note in job.notes(&a.lock) {
        eprintln!("note: {note}");
    }
    let file = job.write(a.target, a.emit.as_deref())?;
    println!("wrote {}", file.display());
    if a.emit.is_none() {
        job.submit(a.target, &file)?;
    }
    Ok(())
}
