//! The plugin author's commands: `galley plugin build | new | bindings | inspect`.
//! galley-plugin-dev builds, scaffolds and owns the flags; this module prints.

use anyhow::Result;
use galley_plugin_dev::cplugin;
use galley_plugin_dev::flags::{BindingsFlags, BuildFlags, InspectFlags, NewFlags};

pub fn build(a: BuildFlags) -> Result<()> {
    let (n, out) = (a.dirs.len(), a.out_dir.display());
    eprintln!("building {n} plugin(s) into {out}");
    a.build_all(
        &mut |t| eprintln!("Rust plugins build with {t:?}"),
        &mut |b| {
            let (id, kind, size) = (b.manifest.id(), b.manifest.kind.as_str(), b.size);
            let lang = format!("{:?}", b.lang).to_lowercase();
            let (digest, path) = (&b.digest[..19], b.path.display());
            println!("{id:<28} {kind:<12} {lang:<10} {size:>9} bytes  {digest}  {path}");
        },
    )?;
    Ok(())
}

pub fn new(a: NewFlags) -> Result<()> {
    let (name, lang, kind) = (&a.name, a.lang, a.kind);
    let dir = galley_plugin_dev::new::run(name, lang, kind, a.dir)?;
    let d = dir.display();
    println!("created {d} ({lang:?} {kind:?} plugin); next:");
    println!("  galley plugin build {d} -o {d}/out");
    println!("  galley plugin call {d}/out/{name}.wasm ...   (see its README.md)");
    Ok(())
}

pub fn bindings(a: BindingsFlags) -> Result<()> {
    let world = cplugin::write_bindings(a.kind.kind(), &a.out_dir)?;
    println!("wrote {world}.{{c,h}} to {}", a.out_dir.display());
    Ok(())
}

pub fn inspect(a: InspectFlags) -> Result<()> {
    let found = galley_plugin_dev::inspect::inspect(&a.file)?;
    match a.json {
        true => println!("{}", serde_json::to_string_pretty(&found.json)?),
        false => print!("{}", found.text),
    }
    Ok(())
}
