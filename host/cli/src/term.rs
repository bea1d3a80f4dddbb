//! What the commands share on the terminal: progress bars in one style, and "bind, print the
//! address, serve" for the two servers (the first stdout line is the bound address, for
//! scripts and tests that pass port 0).

use anyhow::{Context, Result};
use galley_train::{EvalMetrics, Observer, StepMetrics};
use indicatif::{ProgressBar, ProgressStyle};
use std::future::Future;
use std::io::Write;
use std::path::Path;

/// A progress bar drawn with `template` (indicatif's syntax); indicatif itself draws nothing
/// when stderr is not a terminal.
pub fn bar(len: usize, template: &str) -> ProgressBar {
    let style = ProgressStyle::with_template(template).expect("a valid template");
    ProgressBar::new(len as u64).with_style(style.progress_chars("=> "))
}

/// A bar that follows named phases (tasks, stages): a new name starts it again at `total`.
#[derive(Default)]
pub struct Phases {
    pub bar: Option<ProgressBar>,
    what: String,
}

impl Phases {
    pub fn new(bar: Option<ProgressBar>) -> Self {
        Self {
            bar,
            what: String::new(),
        }
    }

    pub fn set(&mut self, what: &str, done: usize, total: usize) {
        let Some(b) = &self.bar else { return };
        if what != self.what {
            b.reset();
            b.set_length(total as u64);
            b.set_message(what.to_string());
            self.what = what.to_string();
        }
        b.set_position(done as u64);
    }

    pub fn clear(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
        self.what.clear();
    }
}

/// A trainer's steps bar: loss (GRPO: reward), the last evaluation, lr, tokens/s, ETA.
#[derive(Default)]
pub struct Steps {
    pub bar: Option<ProgressBar>,
    last_eval: Option<String>,
}

impl Steps {
    /// A steps bar (none when `quiet`).
    pub fn new(quiet: bool) -> Self {
        let template = "{bar:30} {pos}/{len} steps [{elapsed_precise} < {eta_precise}] {msg}";
        let bar = (!quiet).then(|| bar(0, template));
        Self {
            bar,
            last_eval: None,
        }
    }

    pub fn clear(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
    }
}

impl Observer for Steps {
    fn start(&mut self, done: usize, total: usize) {
        if let Some(b) = &self.bar {
            b.set_length(total as u64);
            b.set_position(done as u64);
            b.reset_eta();
        }
    }
    fn step(&mut self, m: &StepMetrics) {
        let Some(b) = &self.bar else { return };
        let eval = self.last_eval.as_deref().unwrap_or_default();
        let head = match m.extra.get("reward") {
            // GRPO: the reward is what moves; its loss hovers near zero by construction.
            Some(r) => format!("reward {r:.3}"),
            None => format!("loss {:.4}", m.loss),
        };
        let (lr, rate) = (m.lr, m.tokens_per_s);
        b.set_message(format!("{head}{eval} lr {lr:.2e} {rate:.0} tok/s"));
        b.set_position(m.step as u64);
    }
    fn eval(&mut self, m: &EvalMetrics) {
        self.last_eval = match (m.eval_loss, m.extra.get("eval_reward")) {
            (Some(l), _) => Some(format!(" eval {l:.4}")),
            (None, Some(r)) => Some(format!(" eval reward {r:.3}")),
            (None, None) => None,
        };
    }
    fn checkpoint(&mut self, path: &Path) {
        tracing::info!("checkpoint {}", path.display());
    }
}

/// Binds `addr` on a tokio runtime of `threads` workers (0: one per core), prints
/// `banner(address bound)` as the first line of stdout, and serves until `serve` ends.
pub fn serve_on<F, Fut>(
    addr: &str,
    threads: usize,
    banner: &dyn Fn(String) -> String,
    serve: F,
) -> Result<()>
where
    F: FnOnce(tokio::net::TcpListener) -> Fut,
    Fut: Future<Output = Result<()>>,
{
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if threads > 0 {
        rt.worker_threads(threads);
    }
    rt.enable_all().build()?.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding {addr}"))?;
        println!("{}", banner(listener.local_addr()?.to_string()));
        std::io::stdout().flush()?;
        serve(listener).await
    })
}
