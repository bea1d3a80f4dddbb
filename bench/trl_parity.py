"""Token and KTO parity with TRL (1.16), run against the galley binary.

Part 1, tokens: for each of TRL's dataset types in both forms (standard and conversational),
and for TRL's tool-calling rows through Qwen 2.5's template, the same rows go through TRL's own trainers (SFTTrainer, DPOTrainer, KTOTrainer build their
tokenized train_dataset; GRPOTrainer's `_tokenize_prompts` tokenizes prompts) and through
`galley train --tokenize-only`, with SmolLM2-135M-Instruct's tokenizer and chat template from
the same GGUF. Input ids and loss masks must be equal, example by example.

Part 2, KTO: a tiny random Llama (SmolLM2's vocabulary) saved as an HF folder; one batch of
four unpaired examples; TRL's KTOTrainer.compute_loss + backward gives the loss and every
parameter's gradient; galley trains one full-parameter SGD step at learning rate 1 on the same
batch (no shuffling, clipping or decay), so its gradient is (w0 - w1). Loss and gradients must
agree to 1e-5.

Usage: bench/.venv-eval/bin/python bench/trl_parity.py GALLEY_BIN SMOLLM2_GGUF
(scripts/trl-parity.sh installs trl into that venv and runs this.)
"""

import json
import os
import subprocess
import sys
import tempfile
import warnings

import copy

import datasets
import torch
from datasets import Dataset
from safetensors.torch import load_file
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

warnings.filterwarnings("ignore")
datasets.disable_progress_bars()
import trl  # noqa: E402

GALLEY, GGUF = sys.argv[1], os.path.abspath(sys.argv[2])
WORK = tempfile.mkdtemp(prefix="trl-parity-")
# KTO steps compared; by the third the policy has moved far enough for a positive KL point.
STEPS = 4

tok = AutoTokenizer.from_pretrained(os.path.dirname(GGUF), gguf_file=os.path.basename(GGUF))


def tiny_model(seed=0):
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    return LlamaForCausalLM(cfg).float()


def u(text):
    return {"role": "user", "content": text}


def a(text):
    return {"role": "assistant", "content": text}


QS = [("Question: What is 2 + 3? Answer:", " 5.", " 7."),
      ("The sky is", " blue.", " green."),
      ("Name a prime number:", " 11", " 12")]

DATASETS = {
    "language modeling, standard": ("sft", [{"text": q + c} for q, c, _ in QS], []),
    "language modeling, conversational": (
        "sft", [{"messages": [u(q), a(c.strip())]} for q, c, _ in QS], ["data.loss_on=all"]),
    "prompt-completion, standard": ("sft", [{"prompt": q, "completion": c} for q, c, _ in QS], []),
    "prompt-completion, conversational": (
        "sft", [{"prompt": [u(q)], "completion": [a(c.strip())]} for q, c, _ in QS], []),
    "preference, standard": ("dpo", [{"prompt": q, "chosen": c, "rejected": r} for q, c, r in QS], []),
    "preference, conversational": (
        "dpo", [{"prompt": [u(q)], "chosen": [a(c.strip())], "rejected": [a(r.strip())]} for q, c, r in QS], []),
    "preference (implicit prompt), standard": (
        "dpo", [{"chosen": q + c, "rejected": q + r} for q, c, r in QS], []),
    "preference (implicit prompt), conversational": (
        "dpo", [{"chosen": [u(q), a(c.strip())], "rejected": [u(q), a(r.strip())]} for q, c, r in QS], []),
    "unpaired preference, standard": (
        "kto", [{"prompt": q, "completion": x, "label": i == 0} for q, c, r in QS for i, x in enumerate([c, r])], []),
    "unpaired preference, conversational": (
        "kto", [{"prompt": [u(q)], "completion": [a(x.strip())], "label": i == 0}
                for q, c, r in QS for i, x in enumerate([c, r])], []),
    "prompt-only, standard": ("grpo", [{"prompt": q} for q, _, _ in QS], []),
    "prompt-only, conversational": ("grpo", [{"prompt": [u(q)]} for q, _, _ in QS], []),
}

# Tool calling, TRL's documented rows (assistant `tool_calls` without content, a `tool` turn,
# a `tools` column kept as JSON text), through Qwen 2.5's template (SmolLM2's shows no tools;
# both use ChatML's tokens): TRL's `chat_template_path`, galley's `model.chat_template`.
QWEN = os.path.join(os.path.dirname(__file__), "..", ".cache", "chat-templates", "Qwen-Qwen2.5-7B-Instruct.jinja")
LIGHT = {"type": "function", "function": {"name": "control_light", "description": "Controls the lights in a room.",
         "parameters": {"type": "object", "properties": {"room": {"type": "string"}, "state": {"type": "string"}},
                        "required": ["room", "state"]}}}


def call(room, state):
    return {"role": "assistant", "tool_calls": [{"type": "function", "function": {
        "name": "control_light", "arguments": {"room": room, "state": state}}}]}


def tool_turns(room, state):
    return [call(room, state), {"role": "tool", "name": "control_light", "content": f"The {room} lights are {state}."},
            a("Done!")]


ROOMS = [("kitchen", "on"), ("living room", "off"), ("hall", "on")]
TOOLS = json.dumps([LIGHT])
TOOL_DATASETS = {
    "tool calling, language modeling": (
        "sft", [{"messages": [u(f"Turn {s} the {r} lights.")] + tool_turns(r, s), "tools": TOOLS} for r, s in ROOMS],
        ["data.loss_on=all"]),
    "tool calling, prompt-completion": (
        "sft", [{"prompt": [u(f"Turn {s} the {r} lights.")], "completion": tool_turns(r, s), "tools": TOOLS}
                for r, s in ROOMS], []),
    # `tools` as a list of objects, keys in OpenAI's order (`type` before `function`, `name`
    # before `description`): the template shows them as written.
    "tool calling, tools as a list": (
        "sft", [{"messages": [u(f"Turn {s} the {r} lights.")] + tool_turns(r, s), "tools": [LIGHT]}
                for r, s in ROOMS], ["data.loss_on=all"]),
}


def trl_tokens(method, rows, template=None):
    """What TRL trains on: per example (input ids, loss mask) or prompt ids."""
    ds = Dataset.from_list(rows)
    out = os.path.join(WORK, "trl-out")
    common = dict(output_dir=out, report_to="none", per_device_train_batch_size=2, use_cpu=True, bf16=False)
    m = tiny_model()
    if method == "sft":
        args = trl.SFTConfig(**common, chat_template_path=template)
        t = trl.SFTTrainer(model=m, args=args, train_dataset=ds, processing_class=copy.deepcopy(tok))
        res = []
        for ex in t.train_dataset:
            ids = ex["input_ids"]
            # TRL folds the completion mask into `labels` (-100: no loss), per input position.
            mask = [int(x != -100) for x in ex["labels"]] if "labels" in ex else [1] * len(ids)
            res.append((ids, mask))
        return res
    if method == "dpo":
        t = trl.DPOTrainer(model=m, ref_model=tiny_model(), args=trl.DPOConfig(**common), train_dataset=ds, processing_class=tok)
        res = []
        for ex in t.train_dataset:
            p = ex["prompt_ids"]
            for side in ("chosen_ids", "rejected_ids"):
                res.append((p + ex[side], [0] * len(p) + [1] * len(ex[side])))
        return res
    if method == "kto":
        t = trl.KTOTrainer(model=m, ref_model=tiny_model(), args=trl.KTOConfig(**common), train_dataset=ds, processing_class=tok)
        return [(ex["prompt_ids"] + ex["completion_ids"],
                 [0] * len(ex["prompt_ids"]) + [1] * len(ex["completion_ids"])) for ex in t.train_dataset]
    if method == "grpo":
        def zero(completions, **kw):
            return [0.0] * len(completions)
        t = trl.GRPOTrainer(model=m, reward_funcs=zero,
                            args=trl.GRPOConfig(**common, num_generations=2), train_dataset=ds,
                            processing_class=tok)
        ids, _, _ = t._tokenize_prompts([r["prompt"] for r in rows])
        return [(list(x), None) for x in ids]
    raise ValueError(method)


def galley(method, data, sets, out, extra_args=()):
    cfg = [f"model.path={sets['model']}", f"data.train.path={data}", f"training.method={method}",
           f"training.output_dir={out}", "data.shuffle=false", "data.on_bad_example=error"]
    if method == "grpo":
        cfg += ["grpo.rewards=[{builtin: exact_match}]", "grpo.num_generations=2", "training.batch_size=2"]
    if method == "kto":
        cfg += ["training.batch_size=2"]
    cfg += sets["extra"]
    r = subprocess.run([GALLEY, "train", *cfg, *extra_args], capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"galley failed: {r.stderr}")


def galley_tokens(method, rows, extra):
    d = tempfile.mkdtemp(dir=WORK)
    data = os.path.join(d, "data.jsonl")
    with open(data, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    galley(method, data, {"model": GGUF, "extra": extra}, os.path.join(d, "out"), ["--tokenize-only"])
    res = []
    for line in open(os.path.join(d, "out", "tokenized.jsonl")):
        ex = json.loads(line)
        if method == "sft":
            res.append((ex["input_ids"], ex["mask"]))
        elif method == "dpo":
            res.append((ex["chosen_ids"], ex["chosen_mask"]))
            res.append((ex["rejected_ids"], ex["rejected_mask"]))
        elif method == "kto":
            res.append((ex["prompt_ids"] + ex["completion_ids"],
                        [0] * len(ex["prompt_ids"]) + [1] * len(ex["completion_ids"])))
        else:
            res.append((ex["prompt_ids"], None))
    return res


def tokens():
    print(f"{'dataset type, form':46} {'method':6} {'examples':>8} {'ids':>6} {'masks':>6}")
    bad = 0
    cases = [(n, m, r, e, None) for n, (m, r, e) in DATASETS.items()]
    cases += [(n, m, r, e + [f"model.chat_template={os.path.abspath(QWEN)}"], QWEN)
              for n, (m, r, e) in TOOL_DATASETS.items()]
    for name, method, rows, extra, template in cases:
        want = trl_tokens(method, rows, template)
        got = galley_tokens(method, rows, extra)
        ids = sum(g[0] == w[0] for g, w in zip(got, want)) if len(got) == len(want) else 0
        masks = sum(g[1] == w[1] for g, w in zip(got, want)) if len(got) == len(want) else 0
        ok = len(got) == len(want) == ids == masks
        bad += not ok
        print(f"{name:46} {method:6} {len(want):>8} {ids:>3}/{len(want):<2} {masks:>3}/{len(want):<2}"
              f"{'' if ok else '  MISMATCH'}")
        if not ok:
            for g, w in zip(got, want):
                if g != w:
                    print("   galley:", g[0], g[1], "\n   trl:   ", w[0], w[1])
                    print("   galley text:", repr(tok.decode(g[0])), "\n   trl text:   ", repr(tok.decode(w[0])))
                    break
    return bad


def kto_grads():
    mdir = os.path.join(WORK, "tiny")
    m = tiny_model(seed=1)
    m.save_pretrained(mdir, safe_serialization=True)
    tok.save_pretrained(mdir)
    rows = [{"prompt": "The sky is", "completion": " blue.", "label": True},
            {"prompt": "Question: What is 2 + 3? Answer:", "completion": " 7.", "label": False},
            {"prompt": "Name a prime number:", "completion": " 11", "label": True},
            {"prompt": "The grass is", "completion": " purple and loud.", "label": False}]
    args = trl.KTOConfig(output_dir=os.path.join(WORK, "kto-trl"), report_to="none", use_cpu=True, bf16=False,
                         per_device_train_batch_size=4, beta=0.1, desirable_weight=1.0,
                         undesirable_weight=1.5, train_sampling_strategy="sequential")
    t = trl.KTOTrainer(model=m, ref_model=copy.deepcopy(m), args=args, train_dataset=Dataset.from_list(rows), processing_class=tok)
    batch = next(iter(t.get_train_dataloader()))
    t.model.train()
    # Two steps of plain SGD at learning rate 1 by hand: the first at policy = reference
    # (every reward and the KL point 0), the second where they differ.
    params = dict(t.model.named_parameters())
    steps = []
    for _ in range(STEPS):
        t.model.zero_grad()
        loss = t.compute_loss(t.model, batch)
        loss.backward()
        grads = {n: p.grad.detach().clone() for n, p in params.items() if p.grad is not None}
        steps.append((loss.item(), t._metrics["train"]["kl"][-1], grads))
        with torch.no_grad():
            for n, g in grads.items():
                params[n] -= g
    trl_wn = {n: p.detach().clone() for n, p in params.items()}

    d = os.path.join(WORK, "kto-galley")
    os.makedirs(d)
    data = os.path.join(d, "data.jsonl")
    with open(data, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    extra = ["training.tuning=full", "training.batch_size=4", f"training.max_steps={STEPS}", "training.save_steps=1", "training.save_total_limit=10",
             "training.optimizer=sgd", "training.momentum=0", "training.learning_rate=1.0",
             "training.lr_scheduler=constant", "training.warmup_steps=0", "training.weight_decay=0",
             "training.max_grad_norm=0", "kto.beta=0.1", "kto.desirable_weight=1.0",
             "kto.undesirable_weight=1.5", "training.threads=1"]
    galley("kto", data, {"model": mdir, "extra": extra}, os.path.join(d, "out"), ["--json"])
    metrics = [json.loads(l) for l in open(os.path.join(d, "out", "metrics.jsonl"))]
    g_steps = [(x["loss"], x.get("kl", 0.0)) for x in metrics if "loss" in x]
    w0 = load_file(os.path.join(mdir, "model.safetensors"))
    w2 = load_file(os.path.join(d, "out", "checkpoints", "checkpoint-2", "trained.safetensors"))
    w1_file = os.path.join(d, "out", "checkpoints", "checkpoint-1", "trained.safetensors")
    w1 = load_file(w1_file)
    wn = load_file(os.path.join(d, "out", "model", "model.safetensors"))

    def key(name, w):
        k = name if name in w else name.replace("model.", "", 1)
        if k not in w:
            sys.exit(f"galley's weights lack {name} ({w1_file})")
        return k

    def worst(pairs):
        return max(((a - b).abs().max().item(), n) for n, a, b in pairs)

    g1 = worst((n, w0[key(n, w0)] - w1[key(n, w1)], g) for n, g in steps[0][2].items())
    g2 = worst((n, w1[key(n, w1)] - w2[key(n, w2)], g) for n, g in steps[1][2].items())
    wd = worst((n, wn[key(n, wn)], trl_wn[n]) for n in steps[1][2])
    gmax = max(g.abs().max().item() for g in steps[1][2].values())
    print("\nKTO, one batch of 4 (2 desirable, 2 undesirable), beta 0.1, weights 1.0/1.5, SGD lr 1:")
    bad = 0
    grads = [f"; grads worst |diff| {g[0]:.1e} ({g[1]})" for g in (g1, g2)] + [""] * STEPS
    for i, ((tl, tk, _), (gl, gk), gd) in enumerate(zip(steps, g_steps, grads), 1):
        print(f"  step {i}: loss TRL {tl:.8f} galley {gl:.8f} |diff| {abs(tl - gl):.1e};"
              f" kl TRL {tk:.6f} galley {gk:.6f}{gd}")
        bad += abs(tl - gl) > 1e-5 or abs(tk - gk) > 1e-5
    bad += g1[0] > 1e-5 or g2[0] > 1e-5
    print(f"  {len(steps[1][2])} tensors, largest |grad| {gmax:.2e}; weights after {STEPS} steps worst |diff| {wd[0]:.1e}")
    return int(bad > 0 or wd[0] > 1e-5)


if __name__ == "__main__":
    bad = tokens()
    bad += kto_grads()
    print("\ntrl_parity:", "all equal" if bad == 0 else f"{bad} MISMATCHES")
    sys.exit(1 if bad else 0)
