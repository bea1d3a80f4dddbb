//! Golden files of `galley launch`'s output (rewrite them with `GALLEY_BLESS=1` after an
//! intended change, and read the diff): a two-node SkyPilot task and Slurm script with pinned
//! plugins, a one-GPU task, a CPU-only Slurm job. The YAML parses with the keys SkyPilot reads,
//! every script passes `bash -n`, and bad settings are refused naming the flag.

use galley_launch::{Job, Lock, Pin, Target};
use std::path::{Path, PathBuf};

fn job() -> Job {
    Job {
        name: "galley-sft".into(),
        args: [
            "train",
            "-c",
            "examples/train/sft lora.yaml",
            "training.device=cuda",
        ]
        .map(String::from)
        .to_vec(),
        nodes: 2,
        gpus_per_node: 8,
        accelerator: Some("H100".into()),
        cloud: None,
        workdir: PathBuf::from("/home/me/project"),
        binary: PathBuf::from("/home/me/project/target/release/galley"),
        binary_sha256: "ab".repeat(32),
        version: "0.1.0".into(),
        lock: Some(Lock {
            path: "galley.lock".into(),
            sha256: "cd".repeat(32),
            plugins: vec![
                Pin {
                    name: "galley/math-answer".into(),
                    version: "0.1.0".into(),
                    digest: format!("sha256:{}", "01".repeat(32)),
                },
                Pin {
                    name: "galley/jsonl-chat".into(),
                    version: "0.2.1".into(),
                    digest: format!("sha256:{}", "02".repeat(32)),
                },
            ],
        }),
        port: 29500,
        partition: None,
        time: None,
        account: None,
    }
}

fn golden(name: &str, text: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    if std::env::var_os("GALLEY_BLESS").is_some() {
        std::fs::write(&path, text).unwrap();
    }
    let want = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (GALLEY_BLESS=1 writes it)", path.display()));
    assert_eq!(text, want, "{name} differs from its golden file");
}

fn bash_n(name: &str, script: &str) {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("s.sh");
    std::fs::write(&f, script).unwrap();
    let out = std::process::Command::new("bash")
        .arg("-n")
        .arg(&f)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn skypilot_two_nodes_of_eight_gpus() {
    let text = job().render(Target::Skypilot).unwrap();
    golden("two-nodes.sky.yaml", &text);
    let v: serde_json::Value = galley_core::config::yaml::from_str(&text).unwrap();
    assert_eq!(v["num_nodes"], 2);
    assert_eq!(v["resources"]["accelerators"], "H100:8");
    assert_eq!(v["workdir"], "/home/me/project");
    assert_eq!(
        v["file_mounts"]["/opt/galley/bin/galley"],
        "/home/me/project/target/release/galley"
    );
    for key in ["setup", "run"] {
        bash_n(key, v[key].as_str().unwrap());
    }
    let setup = v["setup"].as_str().unwrap();
    assert!(setup.contains(&"ab".repeat(32)) && setup.contains(&"cd".repeat(32)));
    assert!(setup.contains("plugin install --lock galley.lock"));
    assert!(
        v["run"]
            .as_str()
            .unwrap()
            .contains("'examples/train/sft lora.yaml'")
    );
    assert!(text.contains("#   galley/math-answer@0.1.0 sha256:0101"));
}

#[test]
fn slurm_two_nodes_of_eight_gpus() {
    let mut j = job();
    j.partition = Some("gpu".into());
    j.time = Some("04:00:00".into());
    j.account = Some("ml-team".into());
    let text = j.render(Target::Slurm).unwrap();
    golden("two-nodes.sbatch", &text);
    bash_n("sbatch", &text);
    for line in [
        "#SBATCH --nodes=2",
        "#SBATCH --ntasks-per-node=8",
        "#SBATCH --gpus-per-node=8",
        "#SBATCH --partition=gpu",
    ] {
        assert!(text.contains(line), "{line}");
    }
}

#[test]
fn one_gpu_and_cpu_only_jobs() {
    let mut j = job();
    j.nodes = 1;
    j.gpus_per_node = 1;
    j.lock = None;
    j.cloud = Some("kubernetes".into());
    let text = j.render(Target::Skypilot).unwrap();
    golden("one-gpu.sky.yaml", &text);
    assert!(!text.contains("RANK"), "one process needs no ranks");
    let mut j = job();
    j.nodes = 4;
    j.gpus_per_node = 0;
    j.accelerator = None;
    j.args = ["eval", "-c", "eval.yaml"].map(String::from).to_vec();
    let text = j.render(Target::Slurm).unwrap();
    golden("cpu.sbatch", &text);
    bash_n("cpu sbatch", &text);
    assert!(!text.contains("gpus") && !text.contains("CUDA_VISIBLE_DEVICES"));
}

/// SkyPilot itself reads the task files (`Task.from_yaml` validates its schema), when
/// `GALLEY_SKY_PYTHON` names a Python with `sky` installed (scripts/fetch-sky.sh; test.sh sets it).
#[test]
fn skypilot_reads_the_task_files() {
    let Some(py) = std::env::var_os("GALLEY_SKY_PYTHON") else {
        eprintln!(
            "GALLEY_SKY_PYTHON unset: SkyPilot's own check skipped (scripts/test.sh runs it)"
        );
        return;
    };
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let check = "import sys, sky\nfor f in sys.argv[1:]:\n    t = sky.Task.from_yaml(f)\n    \
                 print(t.name, t.num_nodes, sorted(str(r.accelerators) for r in t.resources))";
    let out = std::process::Command::new(py)
        .arg("-c")
        .arg(check)
        .arg(golden.join("two-nodes.sky.yaml"))
        .arg(golden.join("one-gpu.sky.yaml"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("galley-sft 2 [\"{'H100': 8}\"]"), "{text}");
    assert!(text.contains("galley-sft 1 [\"{'H100': 1}\"]"), "{text}");
}

#[test]
fn bad_settings_name_the_flag() {
    let bad = |f: fn(&mut Job), target: Target, flag: &str| {
        let mut j = job();
        f(&mut j);
        let e = j.render(target).unwrap_err().to_string();
        assert!(e.starts_with(flag), "{flag}: {e}");
    };
    bad(|j| j.name = "Bad Name".into(), Target::Slurm, "--name");
    bad(|j| j.nodes = 0, Target::Slurm, "--nodes");
    bad(|j| j.accelerator = None, Target::Skypilot, "--accelerator");
    bad(
        |j| j.time = Some("4h; rm -rf /".into()),
        Target::Slurm,
        "--time",
    );
    bad(
        |j| j.partition = Some("gpu\n#SBATCH --x".into()),
        Target::Slurm,
        "--partition",
    );
    bad(|j| j.args = vec!["a\0b".into()], Target::Slurm, "args");
    bad(|j| j.args.clear(), Target::Skypilot, "args");
    bad(|j| j.binary_sha256 = "xyz".into(), Target::Slurm, "binary");
}
