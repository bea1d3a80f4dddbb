"""math-answer in Python: 1.0 when the completion's final answer equals the example's
`answer` column, 0.0 when not, None (no opinion) without one. A line-for-line port of
plugins/math-answer/src/answer.rs; tests check that both give the same scores."""

from galley_sdk import ConfigError, reward

DEFAULTS = {"answer_key": "answer", "correct": 1.0, "incorrect": 0.0, "fallback_last_number": True}


def _lower_eq(text, at, word):
    seg = text[at:at + len(word)]
    return len(seg) == len(word) and all((c.lower() if c.isascii() else c) == w for c, w in zip(seg, word))


def _phrase_at(text, i):
    if not _lower_eq(text, i, "answer"):
        return None
    after = i + 6
    if text[after:after + 1] == ":":
        return after + 1
    preceded = (i >= 4 and _lower_eq(text, i - 4, "the ")) or (i >= 6 and _lower_eq(text, i - 6, "final "))
    return after + 3 if preceded and _lower_eq(text, after, " is") else None


def _balanced(text, start):
    depth = 1
    for i in range(start, len(text)):
        c = text[i]
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return text[start:i].strip()
    return None


def _sentence(text, start):
    end = len(text)
    for i in range(start, len(text)):
        c = text[i]
        nxt = text[i + 1:i + 2]
        if c == "\n" or c == "<" or (c == "." and not (nxt != "" and nxt in "0123456789")):
            end = i
            break
    out = text[start:end].strip().lstrip(":").strip()
    return out or None


def _last_number(text):
    end = None
    for i in range(len(text) - 1, -1, -1):
        if "0" <= text[i] <= "9":
            end = i + 1
            break
    if end is None:
        return None
    start = end
    while start > 0:
        b = text[start - 1]
        inner = start - 1 > 0 and "0" <= text[start - 2] <= "9"
        if "0" <= b <= "9" or (b in ",./" and inner):
            start -= 1
        else:
            break
    if start > 0 and text[start - 1] == "-":
        start -= 1
    return text[start:end]


def extract(text, fallback):
    boxed = hashes = phrase_end = None
    for i in range(len(text) - 1, -1, -1):
        c = text[i]
        if c == "\\" and boxed is None and text.startswith("\\boxed{", i):
            boxed = i + 7
        elif c == "#" and hashes is None and text.startswith("####", i):
            hashes = i + 4
        elif c in "aA" and phrase_end is None:
            phrase_end = _phrase_at(text, i)
    if boxed is not None:
        a = _balanced(text, boxed)
        if a is not None:
            return a
    if hashes is not None:
        line = text[hashes:].split("\n", 1)[0]
        rest = line.split("<", 1)[0].strip()
        if rest:
            return rest
    if phrase_end is not None:
        a = _sentence(text, phrase_end)
        if a is not None:
            return a
    return _last_number(text) if fallback else None


def _is_plain(s):
    return all(c.isascii() and (c.isalnum() or c in "-/ .%") for c in s)


def normalize(answer):
    s = answer.strip()
    if _is_plain(s) and not s.endswith("."):
        return s
    if "\\" in s:
        for wrapper in ("\\text{", "\\mathrm{", "\\textbf{", "\\boxed{"):
            while wrapper in s:
                p = s.index(wrapper)
                start = p + len(wrapper)
                q = s.find("}", start)
                if q < 0:
                    break
                s = s[:p] + s[start:q] + s[q + 1:]
        for a, b in (("\\dfrac", "\\frac"), ("\\tfrac", "\\frac"), ("\\!", ""), ("\\,", ""), ("\\$", "")):
            s = s.replace(a, b)
    t = s.strip().rstrip(".").strip()
    if t.startswith("+"):
        t = t[1:]
    out = []
    for i, c in enumerate(t):
        if c in "$\u20ac\u00a3":
            continue
        if c == "\u2212":
            out.append("-")
        elif c == ",":
            digit_before = i > 0 and "0" <= t[i - 1] <= "9"
            three_after = len(t) >= i + 4 and all("0" <= d <= "9" for d in t[i + 1:i + 4]) and not (
                i + 4 < len(t) and "0" <= t[i + 4] <= "9")
            if not (digit_before and three_after):
                out.append(",")
        else:
            out.append(c)
    return "".join(out).strip()


def _float(s):
    s = s.strip()
    if "_" in s or not s.isascii():
        return None
    try:
        v = float(s)
    except ValueError:
        return None
    if s.lower() in ("inf", "-inf", "+inf", "infinity", "-infinity", "nan", "+nan", "-nan") or v != v or v in (float("inf"), float("-inf")):
        return None
    return v


def numeric(answer):
    s = answer.strip().rstrip("%").strip()
    if s.startswith("\\frac{") or s.startswith("-\\frac{"):
        negative = s.startswith("-")
        rest = s[len("-\\frac{") if negative else len("\\frac{"):]
        if "}" not in rest:
            return None
        num, rest = rest.split("}", 1)
        if not (rest.startswith("{") and rest.endswith("}")):
            return None
        a, b = _float(num), _float(rest[1:-1])
        if a is None or b is None:
            return None
        v = a / b if b != 0 else (float("inf") if a > 0 else float("-inf") if a < 0 else float("nan"))
        return -v if negative else v
    if "/" in s:
        a, b = s.split("/", 1)
        a, b = _float(a), _float(b)
        if a is None or b is None or b == 0:
            return None
        return a / b
    return _float(s)


def _int(s):
    body = s[1:] if s[:1] in ("+", "-") else s
    if not body or not body.isascii() or not body.isdigit():
        return None
    v = int(s)
    return v if -(2 ** 63) <= v < 2 ** 63 else None


def same_answer(predicted, truth):
    p, t = normalize(predicted), normalize(truth)
    a, b = _int(p), _int(t)
    if a is not None and b is not None:
        return a == b
    x, y = numeric(p), numeric(t)
    if x is not None and y is not None:
        return abs(x - y) <= 1e-6 * max(abs(y), 1.0)
    if x is None and y is None:
        squash = lambda s: "".join(c for c in s if not c.isspace()).lower()
        return squash(p) == squash(t)
    return False


def truth_of(raw):
    p = raw.rfind("####")
    return raw[p + 4:].strip() if p >= 0 else raw.strip()


def _text(v):
    if isinstance(v, bool) or v is None:
        return None
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return _rust_float(v)
    return v if isinstance(v, str) else None


def _rust_float(v):
    # Rust prints 2.0 as "2" and 0.5 as "0.5"; match it so number ground truths agree.
    return str(int(v)) if v.is_integer() and abs(v) < 1e16 else repr(v)


@reward
def math_answer(completion, config=None, **columns):
    cfg = dict(DEFAULTS)
    unknown = set(config or {}) - set(DEFAULTS)
    if unknown:
        raise ConfigError(f"unknown setting(s): {', '.join(sorted(unknown))}")
    cfg.update(config or {})
    raw = _text(columns.get(cfg["answer_key"]))
    if raw is None:
        return None
    truth = truth_of(raw)
    if not truth:
        return None
    answer = extract(completion, cfg["fallback_last_number"])
    ok = answer is not None and same_answer(answer, truth)
    return cfg["correct"] if ok else cfg["incorrect"]
