//! Checkpoints: trained tensors, optimizer moments and the loop's position, written into a
//! temporary folder and renamed into place, so a process killed mid-write leaves no folder that
//! looks complete. Resuming picks the newest `checkpoint-N` with its `state.json`; the data
//! order and dropout masks are functions of (seed, step), so nothing else needs saving for the
//! resumed run to repeat the uninterrupted one bit for bit.

use crate::error::{Result, file_err};
use crate::model::Trainable;
use crate::optim::Optimizer;
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct State {
    /// Optimizer steps completed.
    pub step: usize,
    pub total_steps: usize,
    pub optimizer_t: u64,
    /// Tokens trained on so far (for throughput and the metrics log).
    pub tokens: u64,
    /// A fingerprint of the resolved config: a resume under another config is refused.
    pub config_digest: String,
}

fn tensors_to_file(named: Vec<(String, Tensor)>, path: &Path) -> Result<()> {
    let map: HashMap<String, Tensor> = named.into_iter().collect();
    candle_core::safetensors::save(&map, path).map_err(|e| file_err(path, e))
}

fn vec_tensor(v: &[f32]) -> Result<Tensor> {
    Ok(Tensor::from_slice(v, v.len(), &Device::Cpu)?)
}

fn fsync_dir(dir: &Path) {
    if let Ok(f) = std::fs::File::open(dir) {
        let _ = f.sync_all();
    }
}

/// Writes `checkpoint-<step>` under `dir` atomically; keeps the newest `keep`.
pub fn save(
    dir: &Path,
    params: &[Trainable],
    opt: &Optimizer,
    state: &State,
    keep: usize,
) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).map_err(|e| file_err(dir, e))?;
    let final_dir = dir.join(format!("checkpoint-{}", state.step));
    let tmp = dir.join(format!(
        ".checkpoint-{}.tmp-{}",
        state.step,
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| file_err(&tmp, e))?;
    let weights: Vec<(String, Tensor)> = params
        .iter()
        .map(|p| Ok((p.name.clone(), p.var.as_tensor().to_device(&Device::Cpu)?)))
        .collect::<Result<_>>()?;
    tensors_to_file(weights, &tmp.join("trained.safetensors"))?;
    let mut moments = Vec::new();
    for (i, p) in params.iter().enumerate() {
        let n = &p.name;
        let [m, v] = opt.moments(i)?;
        if let Some(m) = m {
            moments.push((format!("m.{n}"), vec_tensor(&m)?));
        }
        if let Some(v) = v {
            moments.push((format!("v.{n}"), vec_tensor(&v)?));
        }
    }
    tensors_to_file(moments, &tmp.join("optimizer.safetensors"))?;
    let state_path = tmp.join("state.json");
    std::fs::write(
        &state_path,
        serde_json::to_vec_pretty(state).expect("state serializes"),
    )
    .map_err(|e| file_err(&state_path, e))?;
    for f in ["trained.safetensors", "optimizer.safetensors", "state.json"] {
        if let Ok(h) = std::fs::File::open(tmp.join(f)) {
            h.sync_all().map_err(|e| file_err(&tmp.join(f), e))?;
        }
    }
    fsync_dir(&tmp);
    if final_dir.exists() {
        std::fs::remove_dir_all(&final_dir).map_err(|e| file_err(&final_dir, e))?;
    }
    std::fs::rename(&tmp, &final_dir).map_err(|e| file_err(&final_dir, e))?;
    fsync_dir(dir);
    let mut all = list(dir);
    while all.len() > keep.max(1) {
        let (_, old) = all.remove(0);
        let _ = std::fs::remove_dir_all(old);
    }
    Ok(final_dir)
}

/// Complete checkpoints under `dir`, oldest first. Temporary folders never match.
pub fn list(dir: &Path) -> Vec<(usize, PathBuf)> {
    let mut out: Vec<(usize, PathBuf)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let step: usize = name.strip_prefix("checkpoint-")?.parse().ok()?;
            e.path()
                .join("state.json")
                .is_file()
                .then(|| (step, e.path()))
        })
        .collect();
    out.sort();
    out
}

/// Loads a checkpoint into the model's trained tensors and the optimizer.
pub fn load(ck: &Path, params: &[Trainable], opt: &mut Optimizer) -> Result<State> {
    let state_path = ck.join("state.json");
    let text = std::fs::read_to_string(&state_path).map_err(|e| file_err(&state_path, e))?;
    let state: State = serde_json::from_str(&text).map_err(|e| file_err(&state_path, e))?;
    let wpath = ck.join("trained.safetensors");
    let w =
        candle_core::safetensors::load(&wpath, &Device::Cpu).map_err(|e| file_err(&wpath, e))?;
    let opath = ck.join("optimizer.safetensors");
    let o =
        candle_core::safetensors::load(&opath, &Device::Cpu).map_err(|e| file_err(&opath, e))?;
    for (i, p) in params.iter().enumerate() {
        let (n, v) = (&p.name, &p.var);
        let t = w
            .get(n)
            .ok_or_else(|| file_err(&wpath, format!("no tensor `{n}`")))?;
        if t.dims() != v.dims() {
            return Err(file_err(
                &wpath,
                format!("`{n}` has shape {:?}, the model {:?}", t.dims(), v.dims()),
            ));
        }
        v.set(&t.to_device(v.device())?)?;
        let keeps = opt.keeps();
        for (second, key) in [(false, format!("m.{n}")), (true, format!("v.{n}"))] {
            if !keeps[second as usize] {
                continue;
            }
            let t = o
                .get(&key)
                .ok_or_else(|| file_err(&opath, format!("no tensor `{key}`")))?;
            let data = t.to_vec1::<f32>()?;
            if data.len() != v.elem_count() {
                return Err(file_err(
                    &opath,
                    format!(
                        "`{key}` has {} values, expected {}",
                        data.len(),
                        v.elem_count()
                    ),
                ));
            }
            opt.restore_moment(i, second, &data)?;
        }
    }
    opt.t = state.optimizer_t;
    Ok(state)
}
