//! `galley launch` through the binary, as on a login node: the Slurm script it writes pins this
//! binary and galley.lock by SHA-256 and actually runs — under stand-in `srun` and `scontrol`
//! (shell scripts on PATH) it checks the pins, installs the locked plugins and starts two ranks
//! that train the tiny model data-parallel over loopback, rank 0 writing the run; a binary
//! changed after the launch fails the check before anything runs; without `--emit` the file
//! goes to a stand-in `sbatch` or `sky`; with neither installed the error says what to do.

use galley_e2e::*;
use sha2::{Digest, Sha256};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

fn script(dir: &Path, name: &str, body: &str) {
    let p = dir.join(name);
    std::fs::write(&p, format!("#!/bin/bash\n{body}\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
}

fn launch(cwd: &Path, path: &str, args: &[&str]) -> std::process::Output {
    let mut all = vec!["launch"];
    all.extend_from_slice(args);
    Command::new(galley_bin())
        .current_dir(cwd)
        .args(&all)
        .env("PATH", path)
        .env("GALLEY_CACHE_DIR", cwd.join(".cache"))
        .output()
        .unwrap()
}

fn project() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // A lock with no plugins: `plugin install` from it needs no registry.
    std::fs::write(d.join("galley.lock"), "version = 1\n").unwrap();
    galley_train::testing::tiny_chat_model(&d.join("model"));
    let rows: Vec<String> = (0..8)
        .map(|i| {
            serde_json::json!({"messages": [
                {"role": "user", "content": format!("the number {i}")},
                {"role": "assistant", "content": format!("is {} and the answer is yes", i * 3 % 17)}]})
            .to_string()
        })
        .collect();
    std::fs::write(d.join("d.jsonl"), rows.join("\n")).unwrap();
    std::fs::write(
        d.join("sft.yaml"),
        "model: {path: model}\ndata: {train: {path: d.jsonl}}\n\
         training: {method: full, batch_size: 1, epochs: 1, threads: 1, output_dir: runs/dp}\n",
    )
    .unwrap();
    std::fs::create_dir_all(d.join("bin")).unwrap();
    dir
}

#[test]
fn the_slurm_script_checks_its_pins_and_trains_on_two_ranks() {
    let dir = project();
    let d = dir.path();
    // The job runs a copy of galley, so the copy can be tampered with afterwards.
    let bin = d.join("galley-copy");
    std::fs::copy(galley_bin(), &bin).unwrap();
    let path = format!("{}:/usr/bin:/bin", d.join("bin").display());
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
        .to_string();
    let o = launch(
        d,
        &path,
        &[
            "--target",
            "slurm",
            "--nodes",
            "1",
            "--gpus",
            "2",
            "--emit",
            "job.sbatch",
            "--port",
            &port,
            "--binary",
            bin.to_str().unwrap(),
            "--",
            "train",
            "-c",
            "sft.yaml",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let text = std::fs::read_to_string(d.join("job.sbatch")).unwrap();
    let sha = hex::encode(Sha256::digest(std::fs::read(&bin).unwrap()));
    let lock_sha = hex::encode(Sha256::digest(b"version = 1\n"));
    assert!(text.contains(&sha) && text.contains(&lock_sha), "{text}");
    // Stand-ins: srun starts SLURM_NTASKS ranks of its command at once, with Slurm's variables.
    script(&d.join("bin"), "scontrol", "echo 127.0.0.1");
    script(
        &d.join("bin"),
        "srun",
        "pids=()\nfor i in 0 1; do SLURM_PROCID=$i SLURM_LOCALID=$i SLURM_NTASKS=2 \"$@\" & pids+=($!); done\n\
         status=0\nfor p in \"${pids[@]}\"; do wait \"$p\" || status=$?; done\nexit $status",
    );
    let run = |dir: &Path| {
        Command::new("bash")
            .arg("job.sbatch")
            .current_dir(dir)
            .env("PATH", &path)
            .env("SLURM_JOB_NODELIST", "node-0")
            .env("GALLEY_CACHE_DIR", dir.join(".cache"))
            .env("GALLEY_DIST_TIMEOUT_S", "120")
            .output()
            .unwrap()
    };
    let o = run(d);
    assert!(o.status.success(), "{}\n{}", stdout(&o), stderr(&o));
    assert!(
        stdout(&o).contains(": OK"),
        "the checksums ran: {}",
        stdout(&o)
    );
    // 8 examples, 1 per rank and step: 4 steps, logged once (by rank 0).
    let metrics = std::fs::read_to_string(d.join("runs/dp/metrics.jsonl")).unwrap();
    assert_eq!(
        metrics.lines().filter(|l| l.contains("\"loss\"")).count(),
        4,
        "{metrics}"
    );
    assert!(d.join("runs/dp/model/model.safetensors").is_file());
    // A binary changed after the launch: nothing runs.
    std::fs::remove_dir_all(d.join("runs")).unwrap();
    let mut bytes = std::fs::read(&bin).unwrap();
    bytes.push(0);
    std::fs::write(&bin, bytes).unwrap();
    let o = run(d);
    assert!(!o.status.success());
    assert!(
        stdout(&o).contains("FAILED") || stderr(&o).contains("FAILED"),
        "{}",
        stderr(&o)
    );
    assert!(!d.join("runs").exists(), "a rank ran");
}

#[test]
fn submits_through_sbatch_or_sky_and_says_what_to_do_without_them() {
    let dir = project();
    let d = dir.path();
    let bin = d.join("bin");
    let path = format!("{}:/usr/bin:/bin", bin.display());
    let slurm = ["--target", "slurm", "--", "eval", "-c", "eval.yaml"];
    let o = launch(d, &path, &slurm);
    assert!(!o.status.success());
    let e = one_line_error(&o);
    assert!(
        e.contains("`sbatch` is not installed") && e.contains("--emit"),
        "{e}"
    );
    let record = |name: &str| format!("echo \"$@\" > {}", d.join(format!("{name}.args")).display());
    script(&bin, "sbatch", &record("sbatch"));
    script(&bin, "sky", &record("sky"));
    let o = launch(d, &path, &slurm);
    assert!(o.status.success(), "{}", stderr(&o));
    let args = std::fs::read_to_string(d.join("sbatch.args")).unwrap();
    assert_eq!(args.trim(), ".galley/launch/galley-eval.sbatch");
    assert!(d.join(".galley/launch/galley-eval.sbatch").is_file());
    let sky = [
        "--target",
        "skypilot",
        "--gpus",
        "8",
        "--nodes",
        "2",
        "--accelerator",
        "H100",
        "--name",
        "sft-run",
        "--",
        "train",
        "-c",
        "sft.yaml",
    ];
    let o = launch(d, &path, &sky);
    assert!(o.status.success(), "{}", stderr(&o));
    let args = std::fs::read_to_string(d.join("sky.args")).unwrap();
    assert_eq!(
        args.trim(),
        "launch -y -c sft-run .galley/launch/sft-run.yaml"
    );
    let yaml = std::fs::read_to_string(d.join(".galley/launch/sft-run.yaml")).unwrap();
    assert!(
        yaml.contains("accelerators: H100:8") && yaml.contains("num_nodes: 2"),
        "{yaml}"
    );
    // SkyPilot needs the GPU type: refused, naming the flag.
    let o = launch(
        d,
        &path,
        &["--target", "skypilot", "--emit", "x.yaml", "--", "train"],
    );
    assert!(
        one_line_error(&o).contains("--accelerator"),
        "{}",
        stderr(&o)
    );
}
