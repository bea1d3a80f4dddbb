"""llama.cpp tokenizes with the SentencePiece vocabulary `galley export` wrote (a tiny model
with Llama 2's vocabulary, kept as transformers keeps it, exported by the e2e test
`a_sentencepiece_vocabulary_exports_as_llama_cpps_llama_tokenizer`): every text of llama.cpp's
own llama-spm test file must give the ids its .out file lists. Run by scripts/gguf-check.sh."""

import sys

import llama_cpp

gguf, vocab = sys.argv[1], sys.argv[2]
texts = open(vocab + ".inp", encoding="utf-8").read().split("\n__ggml_vocab_test__\n")
if texts and texts[-1] == "":
    texts.pop()
want = [[int(x) for x in line.split()] for line in open(vocab + ".out", encoding="utf-8").read().split("\n")]
m = llama_cpp.Llama(model_path=gguf, vocab_only=True, verbose=False)
bad = 0
for text, ids in zip(texts, want):
    got = m.tokenize(text.encode(), add_bos=False, special=False)
    if got != ids:
        bad += 1
        print(f"differs: {text!r}: llama.cpp on galley's export {got}, llama.cpp's test file {ids}")
print(f"llama.cpp on galley's SentencePiece export: {len(texts) - bad}/{len(texts)} texts give the test file's ids")
bos = m.tokenize(b"Hello", add_bos=True, special=False)
print(f"BOS first: {bos[0] == m.token_bos() == 1}")
sys.exit(1 if bad else 0)
