"""The PyTorch peer of bench/gpu_train.rs: the same model shapes, sequence lengths and batches,
trained the way an ML engineer would in PyTorch today — HF transformers' LlamaForCausalLM with
f32 master weights under torch.autocast(bf16), SDPA attention (flash kernels), fused AdamW,
clipping at 1.0; LoRA through peft (r 16, alpha 32, every projection). Prints the same table.
`--gemma`: Gemma 3 1B's shape (Gemma3ForCausalLM, as gpu-train's `--gemma`).

    python3 bench/gpu_train_peer.py [--quick | --gemma]
"""

import os
import sys
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

SHAPES = {
    "135m": (576, 1536, 30, 9, 3),
    "1.7b": (2048, 8192, 24, 32, 32),
}
PEAK = float(os.environ.get("GALLEY_PEAK_TFLOPS", "989.4"))


def config(name):
    if name == "gemma3-1b":
        from transformers import Gemma3TextConfig
        return Gemma3TextConfig(
            vocab_size=262144, hidden_size=1152, intermediate_size=6912, num_hidden_layers=26,
            num_attention_heads=4, num_key_value_heads=1, head_dim=256, rms_norm_eps=1e-6,
            max_position_embeddings=32768, sliding_window=512, query_pre_attn_scalar=256,
            tie_word_embeddings=True, attn_implementation="sdpa",
        )
    d, f, l, h, kv = SHAPES[name]
    return LlamaConfig(
        vocab_size=49152, hidden_size=d, intermediate_size=f, num_hidden_layers=l,
        num_attention_heads=h, num_key_value_heads=kv, head_dim=d // h, rms_norm_eps=1e-5,
        rope_theta=130000.0, max_position_embeddings=8192, tie_word_embeddings=True,
        attn_implementation="sdpa",
    )


def matmul_params(c):
    hd = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    d, f = c.hidden_size, c.intermediate_size
    attn = d * c.num_attention_heads * hd * 2 + d * c.num_key_value_heads * hd * 2
    return c.num_hidden_layers * (attn + 3 * d * f) + c.vocab_size * d


def run(name, method, seq, batch, steps):
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    c = config(name)
    with torch.device("cuda"):
        if name == "gemma3-1b":
            from transformers import Gemma3ForCausalLM
            model = Gemma3ForCausalLM(c)
        else:
            model = LlamaForCausalLM(c)
    if method == "lora":
        from peft import LoraConfig, get_peft_model
        model = get_peft_model(model, LoraConfig(
            r=16, lora_alpha=32, lora_dropout=0.0,
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, fused=True)
    n = batch * seq
    ids = (torch.arange(n + 1, device="cuda") * 7919 + 13) % c.vocab_size
    inputs, labels = ids[:n].view(batch, seq), ids[1:].view(batch, seq)

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = model(input_ids=inputs).logits
        loss = torch.nn.functional.cross_entropy(logits.float().view(-1, c.vocab_size), labels.reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()

    for _ in range(2):
        step()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        loss = step()
    torch.cuda.synchronize()
    secs = time.perf_counter() - t0
    tok_s = steps * n / secs
    np_ = matmul_params(c)
    attn = attention_flops(c, seq)
    per_tok = (6 if method == "full" else 4) * np_ + attn
    peak = torch.cuda.max_memory_allocated() / 2**30
    print(f"| torch {name} | {method} | {seq} x {batch} | {tok_s:.0f} | {peak:.1f} | "
          f"{100 * tok_s * per_tok / (PEAK * 1e12):.1f}% | {loss:.3f} |", flush=True)
    del model, opt


def attention_flops(c, seq):
    """gpu-train's count: 12 * keys * heads * head_dim a layer, keys the sequence
    (causal-blind) or a sliding layer's window where shorter."""
    width = c.num_attention_heads * (getattr(c, "head_dim", None)
                                     or c.hidden_size // c.num_attention_heads)
    kinds = getattr(c, "layer_types", None) or ["full_attention"] * c.num_hidden_layers
    window = getattr(c, "sliding_window", None) or seq
    return sum(12 * (min(seq, window) if k == "sliding_attention" else seq) * width
               for k in kinds)


def main():
    quick, gemma = "--quick" in sys.argv, "--gemma" in sys.argv
    steps = 2 if quick or gemma else 5
    plan = [("135m", "lora", 256, 2)] if quick else [
        ("gemma3-1b", "full", 2048, 1), ("gemma3-1b", "lora", 2048, 1),
        ("gemma3-1b", "lora", 8192, 1),
    ] if gemma else [
        ("135m", "full", 2048, 8), ("135m", "lora", 2048, 8),
        ("1.7b", "full", 2048, 1), ("1.7b", "lora", 2048, 1), ("1.7b", "full", 512, 8),
    ]
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}")
    print("| model | method | seq x batch | tokens/s | peak GPU GiB | MFU | last loss |")
    print("| --- | --- | --- | ---: | ---: | ---: | ---: |")
    for name, method, seq, batch in plan:
        run(name, method, seq, batch, steps)


if __name__ == "__main__":
    main()
