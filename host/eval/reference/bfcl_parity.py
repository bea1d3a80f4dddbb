"""BFCL parity: BFCL's own verdicts on function-calling answers, for galley's test
(`host/eval/tests/bfcl_parity.rs`) to compare its reading and checking with, answer by answer.

BFCL's functions are taken from the bfcl-eval wheel's source (the parser and checker are
pure Python; the package's other imports — every provider's SDK — are not needed and are
not installed): the decoder (`default_decode_ast_prompting`, `ast_parse`,
`resolve_ast_by_type`), the format checks (`is_function_calling_format_output`,
`is_empty_output`), the AST checker module, and the default system prompt
(`formulate_system_prompt` after `_func_doc_language_specific_pre_processing`).

The answers: for every entry of the categories, the ground truth written as Python calls
(which must pass), and mutations of it that each break one rule or probe one reading (a
changed value, a dropped or extra parameter, a wrong type, an int for a float, quoting,
order, markdown fences, plain text, arithmetic, nested calls...). With --answers FILE, a
model's own answers (galley's samples.jsonl: `task`, `doc_id`, `prediction`) are added.

Usage: bfcl_parity.py WHEEL DATA_DIR OUT.jsonl [--limit N] [--answers samples.jsonl]
Writes one line per answer: category, entry, label, answer, BFCL's verdict (`valid`,
`error_type`) and, on an entry's first line, the system prompt BFCL sends.
"""

import argparse
import ast
import copy
import enum
import json
import random
import sys
import types
import zipfile

CATEGORIES = ["simple_python", "multiple", "parallel", "parallel_multiple", "irrelevance",
              "live_simple", "live_multiple", "live_parallel", "live_parallel_multiple",
              "live_irrelevance", "live_relevance"]


def load_bfcl(wheel):
    z = zipfile.ZipFile(wheel)
    src = lambda p: z.read("bfcl_eval/" + p).decode()
    ns = {"__builtins__": __builtins__}
    # Enums and prompt constants: plain modules.
    exec(compile(src("constants/enums.py"), "enums.py", "exec"), ns)
    exec(compile(src("constants/default_prompts.py"), "default_prompts.py", "exec"), ns)
    exec(compile(src("constants/type_mappings.py"), "type_mappings.py", "exec"), ns)
    import builtins, operator, re
    from functools import reduce
    ns.update(ast=ast, builtins=builtins, copy=copy, json=json, operator=operator, re=re, reduce=reduce)

    def pick(path, names):
        tree = ast.parse(src(path))
        keep = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in names]
        missing = set(names) - {n.name for n in keep}
        assert not missing, f"{path}: {missing}"
        exec(compile(ast.Module(body=keep, type_ignores=[]), path, "exec"), ns)

    pick("utils.py", ["is_function_calling_format_output", "is_empty_output", "is_java", "is_js",
                      "_get_language_specific_hint", "_func_doc_language_specific_pre_processing"])
    pick("model_handler/utils.py", ["default_decode_ast_prompting", "ast_parse", "resolve_ast_call",
                                    "resolve_ast_by_type", "formulate_system_prompt",
                                    "format_function_doc", "parse_prompt_variation_params",
                                    "convert_to_tool", "_cast_to_openai_type"])
    # The checker module, its package imports replaced by what it needs for Python.
    tree = ast.parse(src("eval_checker/ast_eval/ast_checker.py"))
    tree.body = [n for n in tree.body if not isinstance(n, ast.ImportFrom)]
    checker = {"Language": ns["Language"],
               "MODEL_CONFIG_MAPPING": {"galley": types.SimpleNamespace(underscore_to_dot=False),
                                        "galley-FC": types.SimpleNamespace(underscore_to_dot=True)},
               "JAVA_TYPE_CONVERSION": {}, "JS_TYPE_CONVERSION": {}, "re": re,
               "java_type_converter": None, "js_type_converter": None}
    exec(compile(tree, "ast_checker.py", "exec"), checker)
    ns["ast_checker"] = checker["ast_checker"]
    return ns


def decode_fc(calls):
    """BFCL's OpenAI FC decode: each call's arguments parsed as JSON; an answer without calls
    is text, which does not decode."""
    if not calls:
        raise ValueError("no tool calls")
    return [{c["name"]: json.loads(c["arguments"])} for c in calls]


def bfcl_verdict(b, category, entry, answer, native=False):
    ReturnFormat, Language = b["ReturnFormat"], b["Language"]
    relevance = "relevance" in category
    try:
        if native:
            decoded = decode_fc(answer)
        else:
            decoded = b["default_decode_ast_prompting"](answer, ReturnFormat.PYTHON, False)
    except Exception as e:
        if relevance:
            return {"valid": "irrelevance" in category, "error_type": "decoder_failed"}
        return {"valid": False, "error_type": "ast_decoder:decoder_failed"}
    if relevance:
        has_call = not b["is_empty_output"](decoded)
        return {"valid": has_call != ("irrelevance" in category), "error_type": "relevance"}
    if not b["is_function_calling_format_output"](decoded):
        return {"valid": False, "error_type": "ast_decoder:decoder_wrong_output_format"}
    try:
        r = b["ast_checker"](entry["function"], decoded, entry["ground_truth"], Language.PYTHON,
                             category, "galley-FC" if native else "galley")
    except Exception as e:
        return {"valid": False, "error_type": f"crash:{type(e).__name__}"}
    return {"valid": r["valid"], "error_type": r.get("error_type", "") if not r["valid"] else ""}


def call_text(name, params, quote="'"):
    args = []
    for k, v in params.items():
        text = repr(v)
        if quote == '"' and isinstance(v, str):
            text = json.dumps(v)
        args.append(f"{k}={text}")
    return f"{name}({', '.join(args)})"


def first_answers(gt_call):
    (name, params), = gt_call.items()
    chosen = {}
    for k, options in params.items():
        real = [o for o in options if o != ""]
        if real:
            chosen[k] = real[0]
    return name, chosen


def mutate(rng, entry, category):
    """Answers for one entry: (label, text)."""
    out = []
    gts = entry.get("ground_truth") or []
    calls = [first_answers(g) for g in gts]
    if calls:
        out.append(("truth", "[" + ", ".join(call_text(n, p) for n, p in calls) + "]"))
        out.append(("truth-dq", "[" + ", ".join(call_text(n, p, '"') for n, p in calls) + "]"))
        out.append(("truth-fenced", "```\n" + ", ".join(call_text(n, p) for n, p in calls) + "\n```"))
        n, p = calls[0]
        rest = [call_text(a, b) for a, b in calls[1:]]
        def with_first(params, name=n):
            return "[" + ", ".join([call_text(name, params)] + rest) + "]"
        out.append(("reversed", "[" + ", ".join(call_text(a, b) for a, b in reversed(calls)) + "]"))
        out.append(("one-less", "[" + ", ".join(call_text(a, b) for a, b in calls[:-1]) + "]"))
        out.append(("one-more", "[" + ", ".join(call_text(a, b) for a, b in calls + calls[:1]) + "]"))
        out.append(("wrong-name", with_first(p, n + "_x")))
        out.append(("underscored", with_first(p, n.replace(".", "_"))))
        out.append(("extra-param", with_first({**p, "zz_extra": 1})))
        for k, v in p.items():
            q = dict(p)
            del q[k]
            out.append((f"drop:{k}", with_first(q)))
            q = dict(p)
            if isinstance(v, bool):
                q[k] = not v
            elif isinstance(v, int):
                out.append((f"float:{k}", with_first({**p, k: float(v)})))
                out.append((f"str:{k}", with_first({**p, k: str(v)})))
                out.append((f"arith:{k}", with_first(p).replace(f"{k}={v!r}", f"{k}={v}*1")))
                q[k] = v + 1
            elif isinstance(v, float):
                q[k] = v * 2 + 1
                out.append((f"int:{k}", with_first({**p, k: int(v)})))
            elif isinstance(v, str):
                q[k] = v + "x"
                out.append((f"case:{k}", with_first({**p, k: v.upper().replace(" ", "-")})))
                out.append((f"name:{k}", with_first(p).replace(f"{k}={v!r}", f"{k}=some_var")))
            elif isinstance(v, list):
                q[k] = list(reversed(v)) if len(v) > 1 else v + v
                out.append((f"tuple:{k}", with_first(p).replace(f"{k}={v!r}", f"{k}={tuple(v)!r}")))
                if v and isinstance(v[0], str):
                    out.append((f"list-case:{k}", with_first({**p, k: [s.upper() for s in v]})))
                if v and isinstance(v[0], (int, float)) and not isinstance(v[0], bool):
                    out.append((f"list-strs:{k}", with_first({**p, k: [str(x) for x in v]})))
            elif isinstance(v, dict):
                if v:
                    kk = next(iter(v))
                    q[k] = {**v, kk: "changed"}
                    out.append((f"dict-drop:{k}", with_first({**p, k: {a: b for a, b in v.items() if a != kk}})))
                else:
                    q[k] = {"a": 1}
            else:
                q[k] = None
            out.append((f"change:{k}", with_first(q)))
    fns = entry["function"]
    f = rng.choice(fns) if fns else {"name": "lookup", "parameters": {}}
    req = f["parameters"].get("required", [])
    guess = {r: 1 for r in req}
    out.append(("guess-call", "[" + call_text(f["name"], guess) + "]"))
    out.append(("text", "I cannot answer that with the given functions."))
    out.append(("empty", "[]"))
    out.append(("positional", f"[{f['name']}(1, 'a')]"))
    out.append(("plus-minus", f"[{f['name']}(a=+5, b=-2.5, c=not True)]"))
    out.append(("nested", f"[{f['name']}(a=np.array([1,2]), b=g(k=1), c=x[0], d=...)]"))
    out.append(("attr", f"[{f['name']}(a=math.pi)]"))
    out.append(("lambda", f"[{f['name']}(a=lambda x: x)]"))
    out.append(("compare-pos", f"[{f['name']}(x > 1)]"))
    out.append(("two-lists", f"[{f['name']}()] [{f['name']}()]"))
    out.append(("json", json.dumps([{"function": f["name"], "parameters": guess}])))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("wheel")
    ap.add_argument("data")
    ap.add_argument("out")
    ap.add_argument("--limit", type=int)
    ap.add_argument("--answers", action="append", default=[])
    a = ap.parse_args()
    b = load_bfcl(a.wheel)
    rng = random.Random(0)
    rows = []
    for cat in CATEGORIES:
        path = f"{a.data}/gorilla-llm/Berkeley-Function-Calling-Leaderboard/{cat}/test.jsonl"
        entries = [json.loads(l) for l in open(path, encoding="utf-8")]
        if a.limit:
            entries = entries[: a.limit]
        for e in entries:
            for label, text in mutate(rng, e, cat):
                rows.append((cat, e, label, text))
    for path in a.answers:
        by_id = {}
        for cat in CATEGORIES:
            p = f"{a.data}/gorilla-llm/Berkeley-Function-Calling-Leaderboard/{cat}/test.jsonl"
            for i, l in enumerate(open(p, encoding="utf-8")):
                by_id[(f"bfcl_{cat}", i)] = (cat, json.loads(l))
        for l in open(path, encoding="utf-8"):
            s = json.loads(l)
            key = (s["task"], s["doc_id"])
            if key in by_id and s.get("prediction") is not None:
                cat, e = by_id[key]
                rows.append((cat, e, "model", s["prediction"]))
    seen = set()
    with open(a.out, "w", encoding="utf-8") as f:
        for cat, e, label, text in rows:
            system = None
            if e["id"] not in seen:
                seen.add(e["id"])
                fns = b["_func_doc_language_specific_pre_processing"](copy.deepcopy(e["function"]), cat)
                system = b["formulate_system_prompt"](b["DEFAULT_SYSTEM_PROMPT_FORMAT"], fns)
                first = e["question"][0][0]
                if first["role"] == "system":
                    system = system + "\n\n" + first["content"]
            tools = None
            if system is not None:
                hinted = b["_func_doc_language_specific_pre_processing"](copy.deepcopy(e["function"]), cat)
                tools = b["convert_to_tool"](hinted, b["GORILLA_TO_OPENAPI"], b["ModelStyle"].OPENAI_COMPLETIONS)
            row = {"category": cat, "entry": e, "label": label, "answer": text,
                   "bfcl": bfcl_verdict(b, cat, e, text), "system": system, "tools": tools}
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            # The same answer as native tool calls (names underscored, arguments as JSON),
            # where it reads as calls at all.
            try:
                calls = b["default_decode_ast_prompting"](text, b["ReturnFormat"].PYTHON, False)
                native = [{"name": n.replace(".", "_"), "arguments": json.dumps(a)}
                          for c in calls for n, a in c.items()]
            except Exception:  # not calls, or values JSON cannot hold
                native = []
            if label.startswith("truth") or label in ("text", "empty") or rng.random() < 0.3:
                row = {"category": cat, "entry": e, "label": label + "/native", "answer": native,
                       "bfcl": bfcl_verdict(b, cat, e, native, True), "system": None, "tools": None}
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"bfcl_parity.py: {len(rows)} answers with BFCL's verdicts in {a.out}")


if __name__ == "__main__":
    main()
