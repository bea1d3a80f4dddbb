//! galley's BFCL reader and checker against BFCL's own code: `reference/bfcl_parity.py` runs
//! BFCL's decoder and AST checker (from the bfcl-eval wheel that `scripts/fetch-bfcl.sh`
//! keeps beside the data) on ~89,000 answers — every entry's ground truth written as Python
//! calls, and mutations of it that each break one rule, written as Python (prompting mode)
//! and, for a share of them, as native tool calls (FC mode) — and galley must give the same
//! verdict on each (validity, and BFCL's error type where invalid), send the same system
//! prompt and make the same tools of every entry's functions. `GALLEY_BFCL_ANSWERS=samples.jsonl` adds a model's own answers
//! (a `galley eval --output` run's samples).

use galley_eval::bfcl::value::{Py, json_dumps_indent4};
use galley_eval::bfcl::{Entry, checker::Checker, judge, judge_calls, openai_tools};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

fn field<'a>(v: &'a Py, k: &str) -> &'a Py {
    let Py::Dict(kv) = v else {
        panic!("not an object")
    };
    kv.iter()
        .find(|(x, _)| matches!(x, Py::Str(s) if s == k))
        .map(|(_, v)| v)
        .unwrap_or_else(|| panic!("no {k}"))
}

fn text(v: &Py) -> &str {
    match v {
        Py::Str(s) => s,
        _ => panic!("not a string"),
    }
}

#[test]
fn verdicts_and_prompts_equal_bfcls() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let data = std::env::var_os("GALLEY_EVAL_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join(".cache/eval-data"));
    let bfcl = data.join("gorilla-llm/Berkeley-Function-Calling-Leaderboard");
    let wheel = std::fs::read_dir(&bfcl)
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e}: run scripts/fetch-bfcl.sh (scripts/test.sh does)",
                bfcl.display()
            )
        })
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .expect("the bfcl-eval wheel beside the data");
    let out = tempfile::NamedTempFile::new().unwrap();
    let mut cmd = Command::new(std::env::var("GALLEY_PYTHON").unwrap_or("python3".into()));
    cmd.arg(root.join("host/eval/reference/bfcl_parity.py"))
        .arg(&wheel)
        .arg(&data)
        .arg(out.path());
    if let Some(a) = std::env::var_os("GALLEY_BFCL_ANSWERS") {
        cmd.arg("--answers").arg(a);
    }
    let o = cmd.output().expect("python3 runs");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    let mut per: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    let (mut prompts, mut prompt_diffs, mut tool_sets) = (0, 0, 0);
    let mut diffs = vec![];
    for line in std::fs::read_to_string(out.path()).unwrap().lines() {
        let row: Py = serde_json::from_str(line).unwrap();
        let category = text(field(&row, "category")).to_string();
        let entry = Entry::from_py(field(&row, "entry")).unwrap();
        let want = field(&row, "bfcl");
        let want_valid = matches!(field(want, "valid"), Py::Bool(true));
        let kind = Checker::for_category(&category);
        // A string is a written answer; a list, the same answer as native tool calls.
        let (answer, got) = match field(&row, "answer") {
            Py::Str(a) => (a.clone(), judge(kind, &entry, a).verdict),
            Py::List(calls) => {
                let calls: Vec<galley_core::ToolCall> = calls
                    .iter()
                    .map(|c| galley_core::ToolCall {
                        id: None,
                        name: text(field(c, "name")).into(),
                        arguments: text(field(c, "arguments")).into(),
                    })
                    .collect();
                (
                    format!("{calls:?}"),
                    judge_calls(kind, &entry, &calls).verdict,
                )
            }
            _ => panic!("an answer is text or calls"),
        };
        let same = got.valid == want_valid
            && (want_valid
                || matches!(kind, Checker::Irrelevance | Checker::Relevance)
                || got.error_type == text(field(want, "error_type")));
        let slot = per.entry(category.clone()).or_default();
        slot.0 += 1;
        slot.1 += usize::from(same);
        if !same {
            diffs.push(format!(
                "{category} {} [{}] {answer:?}: BFCL {} {}, galley {} {} {:?}",
                entry.id,
                text(field(&row, "label")),
                want_valid,
                text(field(want, "error_type")),
                got.valid,
                got.error_type,
                got.error
            ));
        }
        if let tools @ Py::List(_) = field(&row, "tools") {
            tool_sets += 1;
            let (want, ours) = (
                json_dumps_indent4(tools),
                json_dumps_indent4(&openai_tools(&entry.functions)),
            );
            if want != ours {
                diffs.push(format!("{}: tools differ:\n{want}\n---\n{ours}", entry.id));
            }
        }
        if let Py::Str(system) = field(&row, "system") {
            prompts += 1;
            let ours = &entry.conversation()[0].content;
            if ours != system {
                prompt_diffs += 1;
                diffs.push(format!(
                    "{}: system prompt differs:\n{system}\n---\n{ours}",
                    entry.id
                ));
            }
        }
    }
    let (n, ok) = per.values().fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
    for (c, (n, ok)) in &per {
        eprintln!("  {c:<24} {ok}/{n}");
    }
    eprintln!(
        "bfcl parity: {ok}/{n} verdicts agree; {}/{prompts} system prompts identical; {tool_sets} entries' tools compared",
        prompts - prompt_diffs
    );
    assert!(n > 80_000, "{n} answers: the reference wrote too few");
    assert!(
        diffs.is_empty(),
        "{} differences:\n{}",
        diffs.len(),
        diffs[..diffs.len().min(30)].join("\n")
    );
}
