//! The flags of `galley eval` and `galley judge`, beside the settings they fill: the rule
//! that the command line wins over the settings file, that the file's relative paths are
//! relative to it (and the command line's to the working folder), and how the judge's flags
//! name an engine, are this crate's and tested here. Behind the `clap` feature; the binary
//! adds the evaluated model's engine flags and the sandbox's.

use crate::EvalSettings;
use crate::judge::{JudgeError, JudgeOptions, Scale};
use galley_core::EngineSpec;
use galley_core::config::ConfigError;
use std::path::{Path, PathBuf};

#[derive(clap::Args, Debug, Default)]
pub struct EvalFlags {
    /// YAML settings (model, adapter, tasks, num_fewshot, limit, output...).
    pub config: Option<PathBuf>,
    /// The model: a .gguf file or an HF checkpoint folder.
    #[arg(long, short)]
    pub model: Option<String>,
    /// A PEFT LoRA adapter folder, applied over the model in memory.
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// Tasks, groups or task files, comma-separated (e.g. arc_easy,mmlu,my_task.yaml).
    #[arg(long, short, value_delimiter = ',')]
    pub tasks: Vec<String>,
    /// Few-shot examples per prompt, for every task (default: each task's own).
    #[arg(long)]
    pub num_fewshot: Option<usize>,
    /// Evaluate only the first N documents of each task.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Folder for results.json and samples.jsonl.
    #[arg(long, short)]
    pub output: Option<PathBuf>,
    /// Render each prompt with the model's chat template.
    #[arg(long)]
    pub apply_chat_template: bool,
    /// A system prompt put before every prompt.
    #[arg(long)]
    pub system_prompt: Option<String>,
    /// A reasoning model's end of thinking (`</think>`): each generation is scored from
    /// after it (the harness's `think_end_token`).
    #[arg(long, value_name = "TOKEN")]
    pub think_end_token: Option<String>,
    /// How function-calling tasks (BFCL) ask the model: `prompt` (BFCL's system prompt,
    /// calls written as Python) or `native` (the functions as tools through the chat template
    /// or a server's `tools`; BFCL's FC mode).
    #[arg(long, value_enum, value_name = "MODE")]
    pub function_calling: Option<crate::bfcl::Mode>,
    /// Generation settings over every generation task's own (the harness's `--gen_kwargs`):
    /// `max_gen_toks=64,temperature=0.7,do_sample=true`.
    #[arg(long, value_name = "K=V,...", value_parser = crate::task::GenKwargs::parse)]
    pub gen_kwargs: Option<crate::task::GenKwargs>,
    /// Where built-in tasks' data is (default: GALLEY_EVAL_DATA, else galley's cache).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Folders of task files whose names --tasks may use.
    #[arg(long)]
    pub include_path: Vec<PathBuf>,
    /// Evaluate a model behind a server instead of loading one (see --base-url); its
    /// model id.
    #[arg(long, requires = "base_url")]
    pub model_id: Option<String>,
    /// The judge behind a remote API (its base URL; --judge-model is then the model id).
    #[arg(long, value_name = "URL", requires = "judge_model")]
    pub judge_base_url: Option<String>,
    /// The judge's API: openai (any OpenAI-compatible server), anthropic, vertex.
    #[arg(long, default_value = "openai", requires = "judge_base_url")]
    pub judge_engine: String,
    /// The environment variable with the judge's key (default by engine).
    #[arg(long)]
    pub judge_api_key_env: Option<String>,
    /// The model that grades `metric: judge` (default: the evaluated model judges itself).
    #[arg(long)]
    pub judge_model: Option<String>,
    /// Print results as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Override a setting (`num_fewshot=5`).
    #[arg(long = "set", short = 's', value_name = "KEY=VALUE")]
    pub set: Vec<String>,
}

impl EvalFlags {
    /// The settings file (if any) with `--set` applied and its relative paths taken from its
    /// folder, then every flag given laid over it.
    pub fn settings(&self) -> Result<EvalSettings, ConfigError> {
        let no_expand = &galley_core::config::no_expand;
        let mut cfg: EvalSettings =
            galley_core::config::load(self.config.as_deref(), &self.set, no_expand)?;
        if let Some(base) = self.config.as_deref().and_then(Path::parent) {
            cfg.relative_to(base);
        }
        take(&self.model, &mut cfg.model);
        take(&self.adapter, &mut cfg.adapter);
        take(&self.judge_model, &mut cfg.judge_model);
        take(&self.output, &mut cfg.output);
        take(&self.system_prompt, &mut cfg.system_prompt);
        take(&self.think_end_token, &mut cfg.think_end_token);
        if let Some(m) = self.function_calling {
            cfg.function_calling = m;
        }
        take(&self.gen_kwargs, &mut cfg.gen_kwargs);
        take(&self.data_dir, &mut cfg.data_dir);
        if !self.tasks.is_empty() {
            cfg.tasks.clone_from(&self.tasks);
        }
        cfg.num_fewshot = self.num_fewshot.or(cfg.num_fewshot);
        cfg.limit = self.limit.or(cfg.limit);
        cfg.apply_chat_template |= self.apply_chat_template;
        cfg.include_path.extend(self.include_path.iter().cloned());
        Ok(cfg)
    }

    /// The engine of `metric: judge` when the settings name a judge model: behind
    /// `--judge-base-url`, else loaded natively.
    pub fn judge_spec(&self, cfg: &EvalSettings) -> Option<EngineSpec> {
        let id = cfg.judge_model.clone()?;
        let remote = self.judge_base_url.is_some();
        Some(EngineSpec {
            engine: if remote {
                self.judge_engine.clone()
            } else {
                "native".into()
            },
            model: Some(id),
            base_url: self.judge_base_url.clone(),
            api_key_env: self.judge_api_key_env.clone(),
            ..Default::default()
        })
    }
}

/// A flag given replaces the setting.
fn take<T: Clone>(flag: &Option<T>, setting: &mut Option<T>) {
    if flag.is_some() {
        setting.clone_from(flag);
    }
}

#[derive(clap::Args, Debug)]
pub struct JudgeFlags {
    /// JSONL in: {"question", "answer", "reference"?} per line, or with --pairwise
    /// {"question", "answer_a", "answer_b"} (`prompt` and `completion`/`response` are accepted too).
    pub input: PathBuf,
    /// The judge model: a .gguf file or an HF checkpoint folder (with --base-url: the
    /// server's model id).
    #[arg(long, short)]
    pub model: String,
    /// Compare two answers (in both orders) instead of scoring one.
    #[arg(long)]
    pub pairwise: bool,
    /// The prompt template (minijinja) instead of the built-in one.
    #[arg(long)]
    pub prompt: Option<PathBuf>,
    /// The score scale, e.g. 1-10.
    #[arg(long, default_value = "1-10", conflicts_with = "pass_fail")]
    pub scale: String,
    /// PASS/FAIL verdicts instead of a scale.
    #[arg(long)]
    pub pass_fail: bool,
    /// Tokens the judge may write per verdict.
    #[arg(long, default_value_t = 256)]
    pub max_tokens: usize,
    /// Send the prompt as-is, not as a user turn of the model's chat template.
    #[arg(long)]
    pub no_chat_template: bool,
    /// JSONL out: each input line plus the verdict.
    #[arg(long, short)]
    pub output: Option<PathBuf>,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
}

impl JudgeFlags {
    /// The judge's options: the template file read, the scale parsed (naming the flag).
    pub fn options(&self) -> Result<JudgeOptions, JudgeError> {
        let template = match &self.prompt {
            Some(p) => Some(
                std::fs::read_to_string(p)
                    .map_err(|e| JudgeError::Input(format!("{}: cannot read: {e}", p.display())))?,
            ),
            None => None,
        };
        let scale = match self.pass_fail {
            true => Scale::PassFail,
            false => {
                Scale::parse(&self.scale).map_err(|e| JudgeError::Input(format!("--scale: {e}")))?
            }
        };
        Ok(JudgeOptions {
            template,
            scale,
            max_tokens: self.max_tokens,
            chat: !self.no_chat_template,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Eval {
        #[command(flatten)]
        flags: EvalFlags,
        /// The binary's engine flags stand here (`--model-id` requires this one).
        #[arg(long)]
        base_url: Option<String>,
    }

    fn eval(args: &[&str]) -> EvalFlags {
        Eval::try_parse_from(std::iter::once("eval").chain(args.iter().copied()))
            .unwrap()
            .flags
    }

    #[test]
    fn flags_win_over_the_file_whose_paths_are_relative_to_it() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("eval.yaml");
        let yaml = "model: m.gguf\nadapter: ad\ntasks: [arc_easy]\nlimit: 5\nnum_fewshot: 2\n";
        std::fs::write(&file, yaml).unwrap();
        let path = file.to_str().unwrap();
        let from_file = eval(&[path]).settings().unwrap();
        assert_eq!(
            from_file.model.as_deref(),
            Some(dir.path().join("m.gguf").to_str().unwrap())
        );
        assert_eq!(from_file.adapter, Some(dir.path().join("ad")));
        assert_eq!((from_file.limit, from_file.num_fewshot), (Some(5), Some(2)));
        let args = [
            path,
            "-m",
            "other.gguf",
            "--tasks",
            "hellaswag,piqa",
            "--limit",
            "7",
            "-s",
            "num_fewshot=0",
        ];
        let both = eval(&args).settings().unwrap();
        assert_eq!(
            both.model.as_deref(),
            Some("other.gguf"),
            "a flag's path is the caller's"
        );
        assert_eq!(both.tasks, ["hellaswag", "piqa"]);
        assert_eq!((both.limit, both.num_fewshot), (Some(7), Some(0)));
        assert_eq!(
            both.adapter,
            Some(dir.path().join("ad")),
            "unflagged settings stay"
        );
        let e = eval(&[path, "-s", "limt=3"])
            .settings()
            .unwrap_err()
            .to_string();
        assert!(e.contains("limt"), "{e}");
        let think = eval(&[path, "--think-end-token", "</think>"])
            .settings()
            .unwrap();
        assert_eq!(think.options().think_end_token.as_deref(), Some("</think>"));
        let set = eval(&[path, "-s", "think_end_token=</think>"])
            .settings()
            .unwrap();
        assert_eq!(set.think_end_token.as_deref(), Some("</think>"));
    }

    #[test]
    fn gen_kwargs_as_the_harness_takes_them() {
        use crate::task::{GenKwargs, GenerationKwargs};
        let g = eval(&["--gen-kwargs", "max_gen_toks=8,temperature=0.5"])
            .settings()
            .unwrap()
            .gen_kwargs
            .unwrap();
        let mut k = GenerationKwargs {
            until: vec!["Q:".into()],
            max_gen_toks: 256,
            do_sample: false,
            temperature: 0.0,
        };
        g.apply(&mut k);
        assert_eq!((k.max_gen_toks, k.temperature, k.do_sample), (8, 0.5, true));
        assert_eq!(k.until, ["Q:"], "what is not given stays");
        let bad = Eval::try_parse_from(["eval", "--gen-kwargs", "top_p=0.9"])
            .err()
            .unwrap()
            .to_string();
        assert!(
            bad.contains("`top_p`") && bad.contains("max_gen_toks"),
            "{bad}"
        );
        assert!(GenKwargs::parse("max_gen_toks=many").is_err());
        // A settings file takes the string or a map.
        let dir = tempfile::tempdir().unwrap();
        for (i, yaml) in [
            "gen_kwargs: max_new_tokens=4\n",
            "gen_kwargs: {max_gen_toks: 4}\n",
        ]
        .iter()
        .enumerate()
        {
            let f = dir.path().join(format!("e{i}.yaml"));
            std::fs::write(&f, yaml).unwrap();
            let s = eval(&[f.to_str().unwrap()]).settings().unwrap();
            assert_eq!(s.gen_kwargs.unwrap().max_gen_toks, Some(4), "{yaml}");
        }
    }

    #[test]
    fn the_judge_is_native_unless_a_base_url_is_given() {
        let cfg = EvalSettings {
            judge_model: Some("judge.gguf".into()),
            ..Default::default()
        };
        assert_eq!(eval(&[]).judge_spec(&EvalSettings::default()), None);
        assert_eq!(eval(&[]).judge_spec(&cfg).unwrap().engine, "native");
        let remote = [
            "--judge-model",
            "j",
            "--judge-base-url",
            "http://127.0.0.1:9/v1",
        ];
        let spec = eval(&remote).judge_spec(&cfg).unwrap();
        assert_eq!(spec.engine, "openai");
        assert_eq!(spec.base_url.as_deref(), Some("http://127.0.0.1:9/v1"));
    }

    #[test]
    fn a_bad_scale_names_the_flag() {
        #[derive(Parser)]
        struct Judge {
            #[command(flatten)]
            flags: JudgeFlags,
        }
        let parse = |a: &[&str]| {
            Judge::try_parse_from([&["judge", "in.jsonl", "-m", "j"], a].concat())
                .unwrap()
                .flags
        };
        let e = parse(&["--scale", "ten"])
            .options()
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("--scale: "), "{e}");
        assert_eq!(
            parse(&["--pass-fail"]).options().unwrap().scale,
            Scale::PassFail
        );
        let e = parse(&["--prompt", "/no/such.j2"])
            .options()
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("/no/such.j2: cannot read"), "{e}");
    }
}
