"""SmolLM2's GGUF as the f32 HF folder PyTorch peers read: transformers dequantizes the GGUF
once and the folder is reused by eval_parity.py, rolling_parity.py and serve_lmeval.py."""

import json
import os

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


def hf_folder(gguf, hf_dir):
    if os.path.exists(os.path.join(hf_dir, "config.json")):
        return hf_dir
    d, f = os.path.dirname(gguf), os.path.basename(gguf)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    # transformers marks GGUF-loaded models "quantized" although every weight is dense f32.
    for attr in ("hf_quantizer", "is_quantized", "quantization_method"):
        if hasattr(model, attr):
            try:
                delattr(model, attr)
            except AttributeError:
                setattr(model, attr, None)
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(hf_dir, safe_serialization=True)
    AutoTokenizer.from_pretrained(d, gguf_file=f).save_pretrained(hf_dir)
    fix_pre_tokenizer(gguf, hf_dir)
    return hf_dir


def fix_pre_tokenizer(gguf, hf_dir):
    """transformers' GGUF converter gives every BPE model a plain byte-level pre-tokenizer, but
    a GGUF whose `tokenizer.ggml.pre` is `smollm` (SmolLM2's own tokenizer.json, and llama.cpp)
    splits digits off first: "A\n\n3" is ["A", "\n\n", "3"] there, ["A", "\n", "\n", "3"]
    without it. Peers must read the text as the model was trained to, as galley does."""
    from gguf import GGUFReader

    field = GGUFReader(gguf).fields.get("tokenizer.ggml.pre")
    if field is None or bytes(field.parts[field.data[0]]).decode() != "smollm":
        return
    path = os.path.join(hf_dir, "tokenizer.json")
    t = json.load(open(path))
    if t["pre_tokenizer"].get("type") == "Sequence":
        return
    t["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        {"type": "Digits", "individual_digits": True}, t["pre_tokenizer"]]}
    json.dump(t, open(path, "w"), ensure_ascii=False)
