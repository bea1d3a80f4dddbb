"""SmolLM2's GGUF as the f32 HF folder PyTorch peers read: transformers dequantizes the GGUF
once and the folder is reused by eval_parity.py, rolling_parity.py and serve_lmeval.py."""

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
    return hf_dir
