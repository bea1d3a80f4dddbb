"""galley's quantization against llama.cpp's own. `quantize SRC OUT TYPE` (with
bench/.venv-llama's python) quantizes galley's f32 export with llama.cpp's quantizer
(llama_model_quantize, through llama-cpp-python); `compare MINE THEIRS` (with a python that
has gguf-py, llama.cpp's reader: .cache/tools-venv) compares the two files tensor by tensor
and prints one JSON line."""
import json, sys

FTYPES = {"q8_0": 7, "q4_0": 2, "q4_1": 3, "f16": 1}

if sys.argv[1] == "quantize":
    import ctypes
    import llama_cpp

    src, out, kind = sys.argv[2:5]
    p = llama_cpp.llama_model_quantize_default_params()
    p.ftype = FTYPES[kind]
    p.nthread = 2
    assert llama_cpp.llama_model_quantize(src.encode(), out.encode(), ctypes.byref(p)) == 0
else:
    import numpy as np
    from gguf import GGUFReader

    mine, theirs = (GGUFReader(f) for f in sys.argv[2:4])
    a = {t.name: t for t in mine.tensors}
    b = {t.name: t for t in theirs.tensors}
    same = [n for n in a if n in b and a[n].tensor_type == b[n].tensor_type
            and np.array_equal(np.asarray(a[n].data), np.asarray(b[n].data))]
    print(json.dumps({
        "file": sys.argv[2], "tensors": len(a), "identical_to_llama_cpp": len(same),
        "different": {n: [a[n].tensor_type.name, b[n].tensor_type.name if n in b else None]
                      for n in a if n not in same},
        "metadata_keys_only_in_one": sorted(set(mine.fields) ^ set(theirs.fields)),
    }))
