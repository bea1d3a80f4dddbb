//! Synthesis logic against a scripted engine (deterministic text from each request's seed,
//! failing on demand to simulate an interruption) and a native reward function. The real
//! engines and plugins are exercised end to end in tests/tests/synth.rs.

use super::*;
use galley_core::{EngineError, GenerateRequest, Generated, Loglikelihood, LoglikelihoodRequest};
use galley_core::{PluginError, engine::Progress as EngineProgress};

/// Answers each request with `seed % 7 + 1` copies of a letter (six or more: cut by the
/// budget); fails once `budget` requests have been answered (an interruption).
struct Scripted {
    answered: usize,
    budget: usize,
}

impl Engine for Scripted {
    fn name(&self) -> &str {
        "scripted"
    }
    fn loglikelihood(
        &mut self,
        _: &[LoglikelihoodRequest],
        _: &mut EngineProgress<'_>,
    ) -> Result<Vec<Loglikelihood>, EngineError> {
        Err(EngineError::new("scripted", "no log-likelihoods"))
    }
    fn generate(
        &mut self,
        _: &[GenerateRequest],
        _: &mut EngineProgress<'_>,
    ) -> Result<Vec<Generated>, EngineError> {
        Err(EngineError::new("scripted", "chat only"))
    }
    fn apply_chat_template(&self, _: &[Message]) -> Result<String, EngineError> {
        Err(EngineError::new("scripted", "chat only"))
    }
    fn chat(
        &mut self,
        requests: &[ChatRequest],
        _: &mut EngineProgress<'_>,
    ) -> Result<Vec<Generated>, EngineError> {
        if self.answered + requests.len() > self.budget {
            return Err(EngineError::new("scripted", "connection lost"));
        }
        self.answered += requests.len();
        Ok(requests
            .iter()
            .map(|r| {
                let letter = (b'a' + (r.messages.len() as u8 % 26)) as char;
                let n = (r.seed % 7 + 1) as usize;
                Generated {
                    text: letter.to_string().repeat(n),
                    tokens: 1,
                    truncated: n >= 6,
                    ..Default::default()
                }
            })
            .collect())
    }
}

fn engine(budget: usize) -> Scripted {
    Scripted {
        answered: 0,
        budget,
    }
}

/// Shorter is better.
struct Shortness;
impl RewardFn for Shortness {
    fn name(&self) -> &str {
        "shortness"
    }
    fn score(&mut self, groups: &[RewardGroup<'_>]) -> Result<Vec<Option<f64>>, PluginError> {
        Ok(groups
            .iter()
            .flat_map(|g| g.completions.iter().map(|c| Some(-(c.text.len() as f64))))
            .collect())
    }
}

fn cfg(dir: &Path, extra: &str) -> SynthConfig {
    let yaml = format!(
        "engine: {{model: m.gguf}}\nprompts: {{data: {{path: prompts.jsonl}}}}\ngeneration: {{n: 4, batch_size: 2}}\ngrade: {{rewards: [{{builtin: exact_match}}]}}\noutput: {{path: out/pairs.jsonl, format: dpo}}\n{extra}"
    );
    let p = dir.join("synth.yaml");
    std::fs::write(&p, yaml).unwrap();
    galley_core::config::load(Some(&p), &[], &galley_core::config::no_expand).unwrap()
}

fn write_prompts(dir: &Path, n: usize) {
    let text: String = (0..n)
        .map(|i| format!("{{\"prompt\": \"question {i}\", \"answer\": \"{i}\"}}\n"))
        .collect();
    std::fs::write(dir.join("prompts.jsonl"), text).unwrap();
}

fn run(dir: &Path, c: &SynthConfig, e: &mut Scripted) -> Result<Summary, SynthError> {
    let prompts = prompts::from_file(&c.prompts, dir).unwrap();
    let mut g = Graders {
        rewards: vec![Box::new(Shortness)],
        ..Default::default()
    };
    synthesize(
        c,
        dir,
        &prompts,
        e,
        &mut g,
        &Provenance::default(),
        &mut |_, _| {},
    )
}

#[test]
fn dpo_pairs_are_the_best_and_worst_graded_completions() {
    let d = tempfile::tempdir().unwrap();
    write_prompts(d.path(), 5);
    let c = cfg(d.path(), "");
    let s = run(d.path(), &c, &mut engine(usize::MAX)).unwrap();
    assert_eq!((s.prompts, s.generated, s.completions), (5, 5, 20));
    let text = std::fs::read_to_string(d.path().join("out/pairs.jsonl")).unwrap();
    assert_eq!(text.lines().count() + s.dropped, 5);
    for line in text.lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        let (c, r) = (
            v["chosen"][0]["content"].as_str().unwrap(),
            v["rejected"][0]["content"].as_str().unwrap(),
        );
        assert!(c.len() < r.len(), "{line}");
        assert_eq!(v["score_chosen"].as_f64().unwrap(), -(c.len() as f64));
        assert_eq!(v["prompt"][0]["role"], "user");
        assert!(v["answer"].is_string(), "the row's columns travel: {line}");
    }
}

#[test]
fn an_interrupted_run_resumes_to_the_same_file_without_generating_finished_prompts_again() {
    let full = tempfile::tempdir().unwrap();
    write_prompts(full.path(), 7);
    let c = cfg(full.path(), "");
    run(full.path(), &c, &mut engine(usize::MAX)).unwrap();
    let want = std::fs::read(full.path().join("out/pairs.jsonl")).unwrap();

    let d = tempfile::tempdir().unwrap();
    write_prompts(d.path(), 7);
    let c = cfg(d.path(), "");
    // Two batches of two prompts (4 completions each) get through, the third fails.
    let e = run(d.path(), &c, &mut engine(16)).unwrap_err();
    assert!(e.to_string().contains("connection lost"), "{e}");
    // A write cut mid-line by the interruption, past what the journal accounts for.
    let out = d.path().join("out/pairs.jsonl");
    let mut f = std::fs::OpenOptions::new().append(true).open(&out).unwrap();
    std::io::Write::write_all(&mut f, b"{\"prompt\": [{\"role\"").unwrap();
    let mut again = engine(usize::MAX);
    let s = run(d.path(), &c, &mut again).unwrap();
    assert_eq!((s.resumed, s.generated), (4, 3));
    assert_eq!(
        again.answered,
        3 * 4,
        "only the 3 unfinished prompts are generated"
    );
    assert_eq!(std::fs::read(&out).unwrap(), want);
    // Finished: a third run generates nothing.
    let mut idle = engine(0);
    let s = run(d.path(), &c, &mut idle).unwrap();
    assert_eq!((s.resumed, s.generated, idle.answered), (7, 0, 0));
}

#[test]
fn a_rerun_with_other_settings_or_a_changed_file_is_refused() {
    let d = tempfile::tempdir().unwrap();
    write_prompts(d.path(), 3);
    run(d.path(), &cfg(d.path(), ""), &mut engine(usize::MAX)).unwrap();
    let hot = cfg(d.path(), "").generation.temperature + 0.5;
    let mut c = cfg(d.path(), "");
    c.generation.temperature = hot;
    let e = run(d.path(), &c, &mut engine(usize::MAX))
        .unwrap_err()
        .to_string();
    assert!(e.contains("settings.generation.temperature"), "{e}");
    // Other data is other settings too.
    write_prompts(d.path(), 4);
    let e = run(d.path(), &cfg(d.path(), ""), &mut engine(usize::MAX))
        .unwrap_err()
        .to_string();
    assert!(e.contains("data_digest"), "{e}");
    write_prompts(d.path(), 3);
    // Lines removed behind the journal's back.
    std::fs::write(d.path().join("out/pairs.jsonl"), "").unwrap();
    let e = run(d.path(), &cfg(d.path(), ""), &mut engine(usize::MAX))
        .unwrap_err()
        .to_string();
    assert!(e.contains("journal accounts for"), "{e}");
    // A file galley did not write is never appended to.
    let other = tempfile::tempdir().unwrap();
    write_prompts(other.path(), 1);
    std::fs::create_dir_all(other.path().join("out")).unwrap();
    std::fs::write(other.path().join("out/pairs.jsonl"), "mine\n").unwrap();
    let e = run(
        other.path(),
        &cfg(other.path(), ""),
        &mut engine(usize::MAX),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("remove it or choose another output.path"), "{e}");
}

/// No opinion on anything (a reward whose column the rows lack).
struct NoOpinion;
impl RewardFn for NoOpinion {
    fn name(&self) -> &str {
        "no-opinion"
    }
    fn score(&mut self, groups: &[RewardGroup<'_>]) -> Result<Vec<Option<f64>>, PluginError> {
        Ok(groups
            .iter()
            .flat_map(|g| g.completions.iter().map(|_| None))
            .collect())
    }
}

/// "8 ungraded" says whose grade was missing.
#[test]
fn the_summary_names_the_graders_that_gave_no_grade() {
    let d = tempfile::tempdir().unwrap();
    write_prompts(d.path(), 2);
    // Two rewards in the config, whichever two graders each run brings.
    let mut c = cfg(d.path(), "");
    let gr = c.grade.as_mut().unwrap();
    gr.rewards.push(gr.rewards[0].clone());
    let summary = |rewards: Vec<Box<dyn RewardFn>>| {
        let prompts = prompts::from_file(&c.prompts, d.path()).unwrap();
        let mut g = Graders {
            rewards,
            ..Default::default()
        };
        let _ = std::fs::remove_dir_all(d.path().join("out"));
        synthesize(
            &c,
            d.path(),
            &prompts,
            &mut engine(usize::MAX),
            &mut g,
            &Provenance::default(),
            &mut |_, _| {},
        )
        .unwrap()
    };
    let s = summary(vec![Box::new(Shortness), Box::new(NoOpinion)]);
    assert_eq!(s.ungraded, 0, "one opinion is a grade");
    assert_eq!(s.no_grade["no-opinion"], 8);
    assert_eq!(s.no_grade["shortness"], 0);
    let s = summary(vec![Box::new(NoOpinion), Box::new(NoOpinion)]);
    assert_eq!(s.ungraded, 8);
    let text = s.text(1.0);
    assert!(
        text.contains("8 ungraded (no-opinion gave no grade to 16)"),
        "{text}"
    );
}

#[test]
fn sft_keeps_the_best_or_all_completions_with_their_grades() {
    let d = tempfile::tempdir().unwrap();
    write_prompts(d.path(), 2);
    let mut c = cfg(d.path(), "");
    c.output.format = config::Format::Sft;
    c.output.keep = config::Keep::Best;
    run(d.path(), &c, &mut engine(usize::MAX)).unwrap();
    let text = std::fs::read_to_string(d.path().join("out/pairs.jsonl")).unwrap();
    assert_eq!(text.lines().count(), 2);
    for line in text.lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        let m = v["messages"].as_array().unwrap();
        assert_eq!(m.last().unwrap()["role"], "assistant");
        assert_eq!(
            v["grade"].as_f64().unwrap(),
            -(m.last().unwrap()["content"].as_str().unwrap().len() as f64)
        );
    }
}

#[test]
fn a_template_names_the_row_and_columns_it_cannot_fill() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(
        d.path().join("topics.jsonl"),
        "{\"topic\": \"tides\"}\n{\"subject\": \"rust\"}\n",
    )
    .unwrap();
    let c = cfg(d.path(), "");
    let mut section = c.prompts.clone();
    section.data.path = Some("topics.jsonl".into());
    section.template = Some("Write a question about {{ topic }}.".into());
    section.system = Some("Be brief.".into());
    let e = prompts::from_file(&section, d.path())
        .unwrap_err()
        .to_string();
    assert!(e.contains("topics.jsonl:2") && e.contains("subject"), "{e}");
    section.data.limit = Some(1);
    let p = prompts::from_file(&section, d.path()).unwrap();
    assert_eq!(p[0].messages[0].content, "Be brief.");
    assert_eq!(p[0].messages[1].content, "Write a question about tides.");
    assert_eq!(p[0].columns["topic"], "tides");
}

#[test]
fn settings_that_cannot_work_name_their_key() {
    let d = tempfile::tempdir().unwrap();
    cfg(d.path(), "");
    let p = d.path().join("synth.yaml");
    let cases: [(&[&str], &str); 6] = [
        (&["grade=null"], "grade"),
        (&["generation.n=1"], "generation.n"),
        (&["engine.engine=openai"], "engine.base_url"),
        (
            &["grade.rewards=[{builtin: exact_match, weight: .nan}]"],
            "grade.rewards[0].weight",
        ),
        (&["grade.judge={scale: 5-1}"], "grade.judge.scale"),
        (
            &["output.format=sft", "output.keep=best", "grade=null"],
            "output.keep",
        ),
    ];
    for (sets, key) in cases {
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        let c: SynthConfig =
            galley_core::config::load(Some(&p), &sets, &galley_core::config::no_expand).unwrap();
        let (k, _) = c.check().expect_err(key);
        assert_eq!(k, key, "{sets:?}");
    }
}

/// -1 for an answer the budget cut, else 0.
struct CutPenalty;
impl RewardFn for CutPenalty {
    fn name(&self) -> &str {
        "cut-penalty"
    }
    fn score(&mut self, groups: &[RewardGroup<'_>]) -> Result<Vec<Option<f64>>, PluginError> {
        Ok(groups
            .iter()
            .flat_map(|g| {
                g.completions
                    .iter()
                    .map(|c| Some(if c.truncated { -1.0 } else { 0.0 }))
            })
            .collect())
    }
}

#[test]
fn graders_learn_which_answers_the_budget_cut() {
    let d = tempfile::tempdir().unwrap();
    write_prompts(d.path(), 4);
    let mut c = cfg(d.path(), "");
    c.output.format = config::Format::Sft;
    c.output.keep = config::Keep::All;
    let prompts = prompts::from_file(&c.prompts, d.path()).unwrap();
    let mut g = Graders {
        rewards: vec![Box::new(CutPenalty)],
        ..Default::default()
    };
    let mut e = engine(usize::MAX);
    synthesize(
        &c,
        d.path(),
        &prompts,
        &mut e,
        &mut g,
        &Provenance::default(),
        &mut |_, _| {},
    )
    .unwrap();
    let text = std::fs::read_to_string(d.path().join("out/pairs.jsonl")).unwrap();
    let mut seen = [false, false];
    for line in text.lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        let answer = v["messages"][1]["content"].as_str().unwrap();
        let cut = answer.len() >= 6;
        seen[usize::from(cut)] = true;
        assert_eq!(v["grade"], if cut { -1.0 } else { 0.0 }, "{line}");
    }
    assert_eq!(seen, [true, true], "both kinds were generated: {text}");
}
