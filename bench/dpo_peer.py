"""TRL peer of bench/dpo_bench.rs: TRL's own DPOTrainer (1.16: its chunked fused LM head, the
reference as the PEFT model with adapters off under LoRA, a frozen copy for full fine-tuning)
on the same SmolLM2-135M-Instruct (transformers reads the GGUF and dequantizes it to f32), the
same conversational preference pairs in file order (no shuffle), the same batch, max_length,
AdamW, constant learning rate and gradient clipping. Prints one JSON line: each optimizer
step's end time, loss, and the inputs it saw (non-padding, chosen and rejected), and the peak
resident memory."""

import argparse
import json
import os
import resource
import sys
import time
import warnings

import torch
from datasets import Dataset
from torch.utils.data import SequentialSampler
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

import trl

warnings.filterwarnings("ignore")
p = argparse.ArgumentParser()
p.add_argument("--mode", choices=["full", "lora"], required=True)
p.add_argument("--model", required=True)
p.add_argument("--data", required=True, help="JSONL of TRL's conversational preference rows")
p.add_argument("--steps", type=int, required=True)
p.add_argument("--batch", type=int, required=True, help="pairs per step")
p.add_argument("--max-length", type=int, required=True)
p.add_argument("--lr", type=float, required=True)
p.add_argument("--r", type=int, default=16)
p.add_argument("--alpha", type=float, default=32)
p.add_argument("--threads", type=int, default=2)
a = p.parse_args()

torch.set_num_threads(a.threads)
torch.manual_seed(0)
# The GGUF dequantized once into a plain f32 folder, with SmolLM2's own pre-tokenizer
# (bench/hf_f32.py): Trainer refuses a model loaded from a GGUF file, and transformers' GGUF
# tokenizer splits "\n\n1." differently from the model's.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hf_f32 import hf_folder  # noqa: E402

hf = hf_folder(a.model, os.path.join(os.path.dirname(a.data), "hf-f32"))
tok = AutoTokenizer.from_pretrained(hf)


def load():
    return AutoModelForCausalLM.from_pretrained(hf, dtype=torch.float32)


rows = [json.loads(l) for l in open(a.data) if l.strip()][: a.steps * a.batch]
ds = Dataset.from_list(rows)
peft_config, ref = None, None
if a.mode == "lora":
    from peft import LoraConfig

    peft_config = LoraConfig(
        r=a.r,
        lora_alpha=a.alpha,
        lora_dropout=0.0,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        task_type="CAUSAL_LM",
    )
else:
    # TRL would load the reference from the model's hub id; a GGUF file has none.
    ref = load()

args = trl.DPOConfig(
    output_dir=os.path.join(os.path.dirname(a.data), "trl-out"),
    per_device_train_batch_size=a.batch,
    gradient_accumulation_steps=1,
    max_steps=a.steps,
    learning_rate=a.lr,
    lr_scheduler_type="constant",
    warmup_steps=0,
    weight_decay=0.0,
    max_grad_norm=1.0,
    max_length=a.max_length,
    beta=0.1,
    loss_type=["sigmoid"],
    precompute_ref_log_probs=False,
    logging_steps=1,
    save_strategy="no",
    report_to=[],
    use_cpu=True,
    dataloader_num_workers=0,
    seed=0,
    disable_tqdm=True,
)


class InOrder(trl.DPOTrainer):
    """The pairs in file order, as galley's `data.shuffle: false` takes them."""

    def _get_train_sampler(self, *args, **kwargs):
        return SequentialSampler(self.train_dataset)

    def training_step(self, model, inputs, *rest, **kw):
        # Inputs, as galley counts them: each sequence's tokens but its last.
        m = inputs["attention_mask"]
        clock.tokens.append(int(m.sum()) - m.shape[0])
        return super().training_step(model, inputs, *rest, **kw)


class Clock(TrainerCallback):
    def __init__(self):
        self.ends, self.tokens, self.losses = [], [], []

    def on_step_end(self, args, state, control, **kw):
        self.ends.append(time.perf_counter())

    def on_log(self, args, state, control, logs=None, **kw):
        if logs and "loss" in logs:
            self.losses.append(logs["loss"])


clock = Clock()
trainer = InOrder(
    model=load(),
    ref_model=ref,
    args=args,
    train_dataset=ds,
    processing_class=tok,
    peft_config=peft_config,
    callbacks=[clock],
)
trainer.train()
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(
    json.dumps(
        {
            "mode": a.mode,
            "step_ends": [t - clock.ends[0] for t in clock.ends],
            "tokens": clock.tokens,
            "losses": clock.losses,
            "peak_rss_mb": peak,
        }
    )
)
