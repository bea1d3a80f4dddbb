//! `galley serve -m MODEL [--adapter NAME=DIR ...] [--host H --port P]`: the OpenAI-compatible
//! server of galley-serve (its flags are `galley_serve::flags::ServeFlags`) on an address
//! this command binds (loopback unless told otherwise).

use anyhow::{Context, Result};
use galley_serve::flags::ServeFlags;

pub fn run(args: ServeFlags) -> Result<()> {
    let model = galley_model::hub::resolve(&args.model, std::path::Path::new(""))?;
    let opts = args.options(model.clone())?;
    let shared =
        galley_serve::load(&opts).with_context(|| format!("loading {}", model.display()))?;
    let ids: Vec<String> = shared.models.iter().map(|m| m.id.clone()).collect();
    let banner = |at| format!("listening on http://{at}  models: {}", ids.join(", "));
    crate::term::serve_on(&args.addr(), 2, &banner, |listener| async move {
        let app = galley_serve::api::router(shared);
        axum::serve(listener, app).await.context("serving")
    })
}
