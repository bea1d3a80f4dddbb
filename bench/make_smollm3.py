"""A random-weight model of SmolLM3-3B's shape, for speed measurements where no checkpoint can
be fetched: SmolLM3ForCausalLM with HuggingFaceTB/SmolLM3-3B's config.json values (36 layers,
hidden 2048, 16 query heads over 4 KV heads of 128, MLP 11008, 128,256 tokens, tied
embeddings, every fourth layer without RoPE, RoPE base 5,000,000), transformers'
initialisation, saved in bfloat16, with a tokenizer of as many tokens (bench/make_gemma3.py's
byte symbols, then filler). The numbers mean nothing; the shapes are the point.

Usage: python bench/make_smollm3.py OUT_DIR   (bench/.venv-train has torch and transformers)
"""

import os
import sys

import torch
from transformers import AutoModelForCausalLM, SmolLM3Config

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_gemma3  # noqa: E402

VOCAB = 128_256


def main(out):
    torch.manual_seed(0)
    cfg = SmolLM3Config(
        vocab_size=VOCAB, hidden_size=2048, intermediate_size=11008, num_hidden_layers=36,
        num_attention_heads=16, num_key_value_heads=4, max_position_embeddings=65_536,
        rms_norm_eps=1e-6, tie_word_embeddings=True, bos_token_id=2, eos_token_id=1,
        pad_token_id=0, rope_parameters={"rope_type": "default", "rope_theta": 5_000_000.0},
    )
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    os.makedirs(out, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    make_gemma3.VOCAB = VOCAB
    make_gemma3.tokenizer().save(os.path.join(out, "tokenizer.json"))
    n = sum(p.numel() for p in model.parameters())
    print(f"{out}: {n / 1e6:.1f}M parameters")


if __name__ == "__main__":
    main(sys.argv[1])
