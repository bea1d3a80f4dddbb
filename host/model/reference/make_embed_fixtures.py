"""Reference embeddings for galley-model's embedding tests, computed by sentence-transformers.

Run once (not part of the test suite; its outputs are committed under fixtures/embed/):

    scripts/torch-venv.sh && bench/.venv-train/bin/pip install sentence-transformers
    bench/.venv-train/bin/python host/model/reference/make_embed_fixtures.py

It writes two tiny random sentence-transformers folders, as `SentenceTransformer.save` writes
them (the transformer saved as a bare base model: `embed_tokens.weight`, `layers.*`), and
`expected.json` in each: the texts, the ids the folder's tokenizer gives them, and the vectors
`encode` returns for them as one batch.

  fixtures/embed/qwen3-last
      Qwen3-Embedding's recipe: a Qwen3 base, a tokenizer that ends every text with EOS and
      pads on the left, last-token pooling, normalized, a `query` prompt; its modules.json and
      pooling config rewritten in the older spelling the hub's Qwen3-Embedding folders use
      (`sentence_transformers.models.*`, `pooling_mode_lasttoken: true`), which
      sentence-transformers 6 still reads (the vectors are computed after the rewrite).
      Vectors: plain, with `prompt_name="query"`, and truncated to 16 dimensions.
  fixtures/embed/llama-pools-dense
      A Llama base, BOS first, right padding, the six pooling modes concatenated (192 values),
      then Dense(192 -> 24, tanh) and Dense(24 -> 16, no bias, identity), not normalized.
  fixtures/embed/gemma3-bidirectional
      EmbeddingGemma's recipe: a Gemma 3 base with `use_bidirectional_attention` (its full
      layer sees every token, its sliding layer the tokens within half its window on either
      side: a window of 6 here, over texts of up to 122 tokens), BOS first and EOS last, mean
      pooling, Dense(32 -> 48) and Dense(48 -> 32) without bias or activation, normalized, and
      EmbeddingGemma's kind of prompts. Vectors: plain and with `prompt_name="query"`.
"""

import json
import os

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import AutoModel, Gemma3TextConfig, LlamaConfig, PreTrainedTokenizerFast, Qwen3Config
from sentence_transformers import SentenceTransformer
from sentence_transformers.base.modules import Dense, Normalize, Transformer
from sentence_transformers.sentence_transformer.modules import Pooling

HERE = os.path.dirname(os.path.abspath(__file__))
FIX = os.path.join(HERE, "..", "tests", "fixtures", "embed")
TEXTS = ["hello world", "hi", "A longer sentence, so padding matters.", "x", "embeddings!"]
COMMON = dict(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
              rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2)


def tokenizer(post):
    """A byte-level BPE over 128 ids, every printable ASCII byte among them (the space's `Ġ`
    too, so that no text of the tests meets `<unk>`), with a post-processor."""
    alphabet = set(pre_tokenizers.ByteLevel.alphabet())
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    printable = {ch for ch in alphabet if ch.isascii() and ch.isprintable()} | {"\u0120"}
    for ch in sorted(printable) + sorted(alphabet - printable):
        if len(vocab) >= 128:
            break
        vocab[ch] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = post
    return tok


def base(name, cfg, post, side):
    torch.manual_seed(len(name))
    model = AutoModel.from_config(cfg, torch_dtype=torch.float32, attn_implementation="eager")
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if "norm" in pname:
                p.add_(torch.randn_like(p) * 0.1)
    path = os.path.join("/tmp", "galley-embed-" + name)
    model.save_pretrained(path)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer(post), unk_token="<unk>",
                                   pad_token="<unk>", bos_token="<s>", eos_token="</s>",
                                   padding_side=side)
    fast.save_pretrained(path)
    return Transformer(path)


def write(st, name, extra, rewrite=None, texts=TEXTS):
    out = os.path.join(FIX, name)
    st.save(out)
    for junk in ("README.md",):
        os.remove(os.path.join(out, junk))
    if rewrite:
        rewrite(out)
    st = SentenceTransformer(out, device="cpu")
    ids = [st.tokenize([t])["input_ids"][0].tolist() for t in texts]
    expected = {"texts": texts, "ids": ids,
                "plain": st.encode(texts, convert_to_numpy=True).tolist()}
    for key, kwargs in extra.items():
        expected[key] = st.encode(texts, convert_to_numpy=True, **kwargs).tolist()
    with open(os.path.join(out, "expected.json"), "w") as f:
        json.dump(expected, f)
    print(name, len(expected["plain"][0]), [len(i) for i in ids])


def legacy(out):
    """The hub's Qwen3-Embedding spelling of modules.json and the pooling config."""
    path = os.path.join(out, "modules.json")
    modules = json.load(open(path))
    for m in modules:
        m["type"] = "sentence_transformers.models." + m["type"].rsplit(".", 1)[1]
    json.dump(modules, open(path, "w"), indent=2)
    path = os.path.join(out, "1_Pooling", "config.json")
    cfg = json.load(open(path))
    json.dump({"word_embedding_dimension": cfg["embedding_dimension"],
               "pooling_mode_cls_token": False, "pooling_mode_mean_tokens": False,
               "pooling_mode_max_tokens": False, "pooling_mode_mean_sqrt_len_tokens": False,
               "pooling_mode_weightedmean_tokens": False, "pooling_mode_lasttoken": True,
               "include_prompt": True}, open(path, "w"), indent=2)


def main():
    eos = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 2)])
    qwen = Qwen3Config(**COMMON, head_dim=16, tie_word_embeddings=True, rope_theta=1000000.0)
    st = SentenceTransformer(
        modules=[base("qwen3", qwen, eos, "left"), Pooling(32, pooling_mode="lasttoken"), Normalize()],
        prompts={"query": "Instruct: find it\nQuery:", "document": ""}, device="cpu")
    write(st, "qwen3-last", {"query": dict(prompt_name="query"), "dims16": dict(truncate_dim=16)},
          rewrite=legacy)

    bos = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    llama = LlamaConfig(**COMMON, tie_word_embeddings=False, rope_theta=10000.0)
    modes = ["cls", "max", "mean", "mean_sqrt_len_tokens", "weightedmean", "lasttoken"]
    torch.manual_seed(7)
    st = SentenceTransformer(
        modules=[base("llama", llama, bos, "right"), Pooling(32, pooling_mode=modes),
                 Dense(192, 24, activation_function=torch.nn.Tanh()),
                 Dense(24, 16, bias=False, activation_function=torch.nn.Identity())],
        device="cpu")
    write(st, "llama-pools-dense", {})

    both = processors.TemplateProcessing(single="<s> $A </s>", special_tokens=[("<s>", 1), ("</s>", 2)])
    gemma = Gemma3TextConfig(**{**COMMON, "max_position_embeddings": 160}, head_dim=16, tie_word_embeddings=True, sliding_window=6,
                             use_bidirectional_attention=True, query_pre_attn_scalar=16,
                             layer_types=["sliding_attention", "full_attention"],
                             rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 1000000.0},
                                              "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}})
    torch.manual_seed(11)
    st = SentenceTransformer(
        modules=[base("gemma3", gemma, both, "right"), Pooling(32, pooling_mode="mean"),
                 Dense(32, 48, bias=False, activation_function=torch.nn.Identity()),
                 Dense(48, 32, bias=False, activation_function=torch.nn.Identity()), Normalize()],
        prompts={"query": "task: search result | query: ", "document": "title: none | text: "},
        device="cpu")
    # One text past 64 tokens: galley's attention takes long passes in blocks of 64 queries.
    long = "Every token of this text sees its neighbours on both sides, " * 2
    write(st, "gemma3-bidirectional", {"query": dict(prompt_name="query")}, texts=TEXTS + [long])


if __name__ == "__main__":
    main()
