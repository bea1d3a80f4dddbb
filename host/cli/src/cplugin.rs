//! C plugins: bindings generated in-process by wit-bindgen's C generator, the galley C SDK
//! (`sdk/c`), clang for wasm32-wasi as a reactor, component metadata embedded and the WASI
//! reactor adapter applied with `wit-component` — no wit-bindgen or wasm-tools binary.

use crate::build::world_of;
use crate::embedded;
use anyhow::{Context, Result, bail};
use galley_core::PluginKind;
use std::path::Path;
use std::process::Command;

const CLANG: &str = "clang-19";
const SYSROOT: &str = "/usr";

/// Writes the C bindings of `kind`'s world into `out`; returns the world's C name.
pub fn bindings(kind: PluginKind, wit_dir: &Path, out: &Path) -> Result<String> {
    use wit_bindgen_core::wit_parser::Resolve;
    let mut resolve = Resolve::default();
    let (pkg, _) = resolve
        .push_dir(wit_dir)
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let world = resolve
        .select_world(&[pkg], Some(world_of(kind)))
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let mut files = wit_bindgen_core::Files::default();
    // The component type travels as metadata we embed ourselves, so no object file.
    let opts = wit_bindgen_c::Opts {
        no_object_file: true,
        ..Default::default()
    };
    opts.build()
        .generate(&mut resolve, world, &mut files)
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    std::fs::create_dir_all(out)?;
    for (name, bytes) in files.iter() {
        std::fs::write(out.join(name), bytes)?;
    }
    Ok(world_of(kind).replace('-', "_"))
}

/// Compiles `plugin.c` with the SDK into a component.
pub fn build(dir: &Path, kind: PluginKind, scratch: &Path) -> Result<Vec<u8>> {
    if Command::new(CLANG).arg("--version").output().is_err()
        || !Path::new("/usr/lib/wasm32-wasi/libc.a").exists()
    {
        bail!(
            "building a C plugin needs {CLANG}, lld-19, wasi-libc and libclang-rt-19-dev-wasm32 (Debian: `apt-get install clang-19 lld-19 wasi-libc libclang-rt-19-dev-wasm32`)"
        );
    }
    let wit = scratch.join("wit");
    let csrc = scratch.join("c");
    let world = bindings(kind, &wit, &csrc)?;
    embedded::write_all(&csrc, embedded::C_SDK)?;
    let core = scratch.join("plugin.core.wasm");
    let out = Command::new(CLANG)
        .args([
            "--target=wasm32-wasi",
            &format!("--sysroot={SYSROOT}"),
            "-O2",
            "-mexec-model=reactor",
            "-std=c11",
        ])
        .args(["-Wall", "-Wno-unused-function", "-fuse-ld=lld"])
        .arg(format!("-DGALLEY_WORLD_{}", world.to_uppercase()))
        .arg("-I")
        .arg(&csrc)
        .arg(dir.join("plugin.c"))
        .arg(csrc.join(format!("{world}.c")))
        .arg(csrc.join("galley.c"))
        .arg("-o")
        .arg(&core)
        .output()
        .with_context(|| format!("running {CLANG}"))?;
    if !out.status.success() {
        bail!(
            "{CLANG} failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let mut module = std::fs::read(&core)?;
    {
        use wit_component::{StringEncoding, embed_component_metadata};
        let mut resolve = wit_parser::Resolve::default();
        let (pkg, _) = resolve.push_dir(&wit)?;
        let w = resolve.select_world(&[pkg], Some(world_of(kind)))?;
        embed_component_metadata(&mut module, &resolve, w, StringEncoding::UTF8)?;
    }
    crate::build::componentize(&module)
}

/// The `plugin.c` a new C plugin of `kind` starts from.
pub fn template(kind: PluginKind) -> &'static str {
    match kind {
        PluginKind::Reward => {
            r#"#include "galley.h"
#include <string.h>

/* 1.0 when the completion contains the example's `answer` column, else 0.0; no opinion
 * without one. */
int galley_reward_score(const galley_reward_input *in, galley_score *out, galley_error *err) {
    (void)err;
    char buf[64];
    galley_str answer;
    if (!galley_meta_text(in->metadata, "answer", buf, sizeof buf, &answer) || answer.len == 0) {
        *out = galley_no_opinion();
        return 0;
    }
    const char *c = in->completion.ptr;
    size_t n = in->completion.len;
    for (size_t i = 0; i + answer.len <= n; i++) {
        if (memcmp(c + i, answer.ptr, answer.len) == 0) {
            *out = galley_score_of(1.0);
            return 0;
        }
    }
    *out = galley_score_of(0.0);
    return 0;
}
"#
        }
        PluginKind::DataLoader => {
            r#"#include "galley.h"
#include <stdio.h>

/* `count` questions "What is N + 1?", with the answer in the metadata. */
static long long next, count;

int galley_loader_init(galley_config config, uint64_t seed, galley_error *err) {
    (void)seed;
    double c = galley_config_number(config, "count", 10);
    if (c < 0) return galley_fail(err, GALLEY_ERR_CONFIG, "`count` must not be negative");
    next = 0;
    count = (long long)c;
    return 0;
}

int galley_loader_next(galley_example *ex, galley_error *err) {
    (void)err;
    if (next >= count) return 0;
    char id[32], question[64];
    snprintf(id, sizeof id, "count-%lld", next);
    snprintf(question, sizeof question, "What is %lld + 1?", next);
    galley_example_id(ex, id);
    galley_example_message(ex, "user", question);
    galley_example_meta_int(ex, "answer", next + 1);
    next++;
    return 1;
}
"#
        }
        PluginKind::Evaluator => {
            r#"#include "galley.h"
#include <ctype.h>

/* 1.0 when the prediction equals a reference after trimming and lower-casing; the summary is
 * the mean of each metric, plus `count`. */
static galley_str trim(galley_str s) {
    while (s.len && isspace((unsigned char)s.ptr[0])) { s.ptr++; s.len--; }
    while (s.len && isspace((unsigned char)s.ptr[s.len - 1])) s.len--;
    return s;
}

static int same(galley_str a, galley_str b) {
    a = trim(a);
    b = trim(b);
    if (a.len != b.len) return 0;
    for (size_t i = 0; i < a.len; i++)
        if (tolower((unsigned char)a.ptr[i]) != tolower((unsigned char)b.ptr[i])) return 0;
    return 1;
}

int galley_evaluator_score(const galley_prediction *p, galley_metrics *out, galley_error *err) {
    (void)err;
    int hit = 0;
    for (size_t i = 0; i < p->references_len && !hit; i++) hit = same(p->prediction, p->references[i]);
    galley_metric_add(out, "exact_match", hit ? 1.0 : 0.0);
    return 0;
}
"#
        }
        PluginKind::Recipe => {
            r#"#include "galley.h"
#include <math.h>
#include <stdio.h>

/* SFT, then GRPO until the mean reward reaches `target`, then evaluation. */
static double target = 0.9;

int galley_recipe_plan(galley_config config, galley_plan *plan, galley_error *err) {
    (void)err;
    target = galley_config_number(config, "target", 0.9);
    galley_plan_stage(plan, "sft", "sft", "{\"epochs\": 1}");
    galley_plan_stage(plan, "grpo", "grpo", "{\"num_generations\": 8}");
    galley_plan_stage(plan, "eval", "evaluate", "{}");
    return 0;
}

int galley_recipe_on_metrics(galley_str stage, uint64_t step, const galley_metric *metrics, size_t n,
                             galley_decision *d, galley_error *err) {
    (void)err;
    for (size_t i = 0; i < n; i++) {
        if (galley_str_eq(metrics[i].name, "loss") && !isfinite(metrics[i].value)) {
            char why[64];
            snprintf(why, sizeof why, "non-finite loss at step %llu", (unsigned long long)step);
            galley_decide_stop(d, why);
            return 0;
        }
        if (galley_str_eq(stage, "grpo") && galley_str_eq(metrics[i].name, "reward/mean") && metrics[i].value >= target)
            galley_decide_next_stage(d);
    }
    return 0;
}
"#
        }
    }
}
