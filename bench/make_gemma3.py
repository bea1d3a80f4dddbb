"""A random-weight model of Gemma 3 270M's shape, for speed measurements where no checkpoint
can be fetched: Gemma3ForCausalLM with google/gemma-3-270m's config.json values (18 layers,
hidden 640, 4 query heads over 1 KV head of 256, MLP 2048, 262,144 tokens, a 512-token
sliding window on five layers of six, RoPE bases 10,000 local and 1,000,000 global,
query_pre_attn_scalar 256), transformers' initialisation, saved in bfloat16 as Google ships
it, with a tokenizer of as many tokens (the 256 byte symbols, then filler) so that llama.cpp
accepts the exported GGUF's vocabulary. The numbers mean nothing; the shapes are the point.

With `--gemma2`, the same shape as a Gemma2ForCausalLM with Gemma 2's own settings (every other
layer sliding over 4,096 tokens, one RoPE base of 10,000, scores soft-capped at 50 and logits
at 30): the soft-capped attention's cost against llama.cpp's on one file.

Usage: python bench/make_gemma3.py OUT_DIR [--gemma2]   (bench/.venv-train has torch and transformers)
"""

import os
import sys

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import AutoModelForCausalLM, Gemma2Config, Gemma3TextConfig

VOCAB = 262_144


def tokenizer():
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2}
    for ch in alphabet:
        vocab[ch] = len(vocab)
    i = 0
    while len(vocab) < VOCAB:
        vocab[f"<filler{i}>"] = len(vocab)
        i += 1
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return tok


def main(out, gemma2=False):
    torch.manual_seed(0)
    shape = dict(
        vocab_size=VOCAB, hidden_size=640, intermediate_size=2048, num_hidden_layers=18,
        num_attention_heads=4, num_key_value_heads=1, head_dim=256,
        max_position_embeddings=32_768, rms_norm_eps=1e-6,
        query_pre_attn_scalar=256, tie_word_embeddings=True, bos_token_id=2, eos_token_id=1,
        pad_token_id=0,
    )
    if gemma2:
        cfg = Gemma2Config(**shape, sliding_window=4096, attn_logit_softcapping=50.0,
                           final_logit_softcapping=30.0,
                           rope_parameters={"rope_type": "default", "rope_theta": 10_000.0})
    else:
        cfg = Gemma3TextConfig(
            **shape, sliding_window=512,
            rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 1_000_000.0},
                             "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0}},
        )
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    os.makedirs(out, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer().save(os.path.join(out, "tokenizer.json"))
    n = sum(p.numel() for p in model.parameters())
    print(f"{out}: {n / 1e6:.1f}M parameters")


if __name__ == "__main__":
    main(sys.argv[1], gemma2="--gemma2" in sys.argv[2:])
