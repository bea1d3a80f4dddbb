"""Reference outputs for galley-model's parity tests, computed by PyTorch + transformers.

Run once (it is not part of the test suite; its outputs are committed under fixtures/):

    python3 -m venv /tmp/ref && /tmp/ref/bin/pip install torch transformers gguf accelerate peft
    /tmp/ref/bin/python host/model/reference/make_fixtures.py .cache/models/SmolLM2-135M-Instruct.Q4_1.gguf

It writes
  fixtures/tiny/<family>/{config.json, model.safetensors, tokenizer.json, logits.json}
      tiny random models of each family switch galley implements (Llama with GQA and tied
      embeddings, Llama 3.1 RoPE scaling, Qwen2 biases, Qwen3 q/k norms, Mistral, Gemma 3
      with a sliding window shorter than the sequence, Gemma 2 with its scores and logits
      soft-capped, SmolLM3 with a layer without RoPE, and `gemma3-multimodal`: the same
      language model inside a Gemma3ForConditionalGeneration with a tiny vision tower, as
      Gemma 3 4B and up are published), and the float32 logits transformers computes for a
      fixed sequence of ids (`--only NAME` writes one family's alone);
  fixtures/smollm2/{prompt.json, logits.f32}
      SmolLM2-135M-Instruct dequantized to float32 by transformers' GGUF loader: the chat
      prompt's ids and the logits of its last two positions (little-endian float32);
  fixtures/smollm2/tokens.json
      the ids transformers' tokenizer (built from the same GGUF) gives for test texts.
"""

import json
import os
import sys

import numpy as np
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, decoders
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers import LlamaConfig, MistralConfig, Qwen2Config, Qwen3Config, Gemma3TextConfig, Gemma2Config
from transformers import SmolLM3Config
from transformers import Gemma3Config, Gemma3ForConditionalGeneration

HERE = os.path.dirname(os.path.abspath(__file__))
FIX = os.path.join(HERE, "..", "tests", "fixtures")
IDS = [1, 17, 42, 5, 99, 63, 2, 120, 7, 7, 31]

COMMON = dict(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
              rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2)

FAMILIES = {
    "llama-gqa-tied": (LlamaConfig, dict(tie_word_embeddings=True, rope_theta=10000.0)),
    "llama3-rope-scaling": (LlamaConfig, dict(tie_word_embeddings=False, rope_theta=500000.0,
                            rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                          "high_freq_factor": 4.0, "original_max_position_embeddings": 16})),
    "qwen2-bias": (Qwen2Config, dict(tie_word_embeddings=True, rope_theta=1000000.0)),
    "qwen3-qk-norm": (Qwen3Config, dict(tie_word_embeddings=False, head_dim=16, rope_theta=1000000.0)),
    "mistral": (MistralConfig, dict(tie_word_embeddings=False, rope_theta=10000.0, sliding_window=None)),
    # A window of 4 over 11 ids, a local layer then a global one, the global layer's RoPE
    # linearly scaled, and a score scale that is not 1/sqrt(head_dim); weights large enough
    # that the MLP's pre-activations reach where tanh-GELU and erf-GELU part (|x| ~ 1-3).
    "gemma3": (Gemma3TextConfig, dict(tie_word_embeddings=True, head_dim=16, sliding_window=4,
               initializer_range=0.25,
               layer_types=["sliding_attention", "full_attention"], query_pre_attn_scalar=24,
               rope_parameters={"full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1000000.0},
                                "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}})),
    # Gemma 2: every other layer sliding (the default pattern), one RoPE base, and caps low
    # enough that the tanh bends the scores and logits these weights give (eager attention,
    # the only one transformers soft-caps in).
    "gemma2": (Gemma2Config, dict(tie_word_embeddings=True, head_dim=16, sliding_window=4,
               initializer_range=0.25, query_pre_attn_scalar=24,
               attn_logit_softcapping=2.0, final_logit_softcapping=3.0,
               rope_parameters={"rope_type": "default", "rope_theta": 10000.0})),
    # SmolLM3: four layers, the fourth without RoPE (transformers' default pattern, and the
    # one llama.cpp assumes).
    "smollm3": (SmolLM3Config, dict(num_hidden_layers=4, tie_word_embeddings=True, pad_token_id=0,
                rope_parameters={"rope_type": "default", "rope_theta": 5000000.0})),
}


def tiny_tokenizer():
    """A byte-level BPE over the 128 ids (enough for galley to load the folder)."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for ch in sorted(alphabet):
        if len(vocab) >= 128:
            break
        vocab[ch] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return tok


def multimodal():
    """Gemma 3's text model as the 4B and larger are published: beside a vision tower and a
    projector, under `language_model.`, its global layers' RoPE scaled by 8."""
    text = dict(FAMILIES["gemma3"][1])
    text["rope_parameters"] = {"full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1000000.0},
                               "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}}
    vision = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                  image_size=28, patch_size=14)
    cfg = Gemma3Config(text_config={**COMMON, **text}, vision_config=vision, mm_tokens_per_image=4,
                       boi_token_index=125, eoi_token_index=126, image_token_index=127)
    return Gemma3ForConditionalGeneration(cfg).to(torch.float32)


def tiny_models(only=None):
    torch.manual_seed(0)
    for name, (cls, extra) in [*FAMILIES.items(), ("gemma3-multimodal", (None, None))]:
        if only and name != only:
            continue
        if cls is None:
            model = multimodal()
        else:
            cfg = cls(**{**COMMON, **extra})
            model = AutoModelForCausalLM.from_config(cfg, torch_dtype=torch.float32, attn_implementation="eager")
        # Random biases and norm scales too, so every switch changes the numbers.
        with torch.no_grad():
            for pname, p in model.named_parameters():
                if pname.endswith("bias") or "norm" in pname:
                    p.add_(torch.randn_like(p) * 0.1)
        model.eval()
        out = os.path.join(FIX, "tiny", name)
        os.makedirs(out, exist_ok=True)
        model.save_pretrained(out, safe_serialization=True)
        tiny_tokenizer().save(os.path.join(out, "tokenizer.json"))
        with torch.no_grad():
            logits = model(torch.tensor([IDS])).logits[0].float().numpy()
        with open(os.path.join(out, "logits.json"), "w") as f:
            json.dump({"ids": IDS, "logits": logits.round(7).tolist()}, f)
        for junk in ("generation_config.json",):
            p = os.path.join(out, junk)
            if os.path.exists(p):
                os.remove(p)
        print(name, logits.shape)
        if cls is None:
            peft_adapter(model, out)


def peft_adapter(model, out):
    """A LoRA PEFT trains on the multimodal model (its default targets reach the vision
    tower's projections too, by the same names), B made non-zero, and the logits with it."""
    from peft import LoraConfig, get_peft_model
    lora = get_peft_model(model, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj", "down_proj"]))
    with torch.no_grad():
        for pname, p in lora.named_parameters():
            if "lora_B" in pname:
                p.copy_(torch.randn_like(p) * 0.5)
    lora.eval()
    path = os.path.join(out, "peft")
    lora.save_pretrained(path)
    with torch.no_grad():
        logits = lora(torch.tensor([IDS])).logits[0].float().numpy()
    with open(os.path.join(path, "logits.json"), "w") as f:
        json.dump({"ids": IDS, "logits": logits.round(7).tolist()}, f)
    if os.path.exists(os.path.join(path, "README.md")):
        os.remove(os.path.join(path, "README.md"))
    print("gemma3-multimodal + peft", logits.shape)


TEXTS = [
    "Hello world! 12345 67.89",
    "Grüße aus München — ça va? Ελληνικά, русский, 日本語のテキスト, 中文, العربية",
    "emoji: 🚀🔥👍🏽 ❤️ 🇫🇷",
    "def f(x):\n    return x**2  # tab\tend\r\n",
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n",
]


def smollm2(gguf):
    d, f = os.path.split(os.path.abspath(gguf))
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    out = os.path.join(FIX, "smollm2")
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "tokens.json"), "w") as fh:
        json.dump([{"text": t, "ids": tok(t, add_special_tokens=False)["input_ids"]} for t in TEXTS], fh, ensure_ascii=False, indent=0)
    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32)
    model.eval()
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0, -2:].float().numpy()
    logits.astype("<f4").tofile(os.path.join(out, "logits.f32"))
    with open(os.path.join(out, "prompt.json"), "w") as fh:
        json.dump({"text": text, "ids": ids, "positions": [len(ids) - 2, len(ids) - 1], "vocab": int(logits.shape[1])}, fh)
    greedy = model.generate(torch.tensor([ids]), max_new_tokens=12, do_sample=False)[0][len(ids):]
    print("smollm2 greedy:", repr(tok.decode(greedy)))


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--only":
        tiny_models(sys.argv[2])
        sys.exit(0)
    tiny_models()
    if len(sys.argv) > 1:
        smollm2(sys.argv[1])
