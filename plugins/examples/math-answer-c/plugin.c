/* math-answer in C: 1.0 when the completion's final answer equals the example's `answer`
 * column, 0.0 when not, no opinion without one. A line-for-line port of
 * plugins/math-answer/src/answer.rs; tests check that both give the same scores. */
#include "galley.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef struct { const char *p; size_t n; } str;

static int is_digit(char c) { return c >= '0' && c <= '9'; }
static int is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }
static char lower(char c) { return c >= 'A' && c <= 'Z' ? (char)(c + 32) : c; }

static str trim(str s) {
    while (s.n && is_space(s.p[0])) { s.p++; s.n--; }
    while (s.n && is_space(s.p[s.n - 1])) s.n--;
    return s;
}

static int starts(str s, size_t at, const char *w) {
    size_t k = strlen(w);
    return at + k <= s.n && memcmp(s.p + at, w, k) == 0;
}

static int lower_eq(str s, size_t at, const char *w) {
    size_t k = strlen(w);
    if (at + k > s.n) return 0;
    for (size_t i = 0; i < k; i++) if (lower(s.p[at + i]) != w[i]) return 0;
    return 1;
}

/* Where the answer starts after "the answer is", "final answer is", "final answer:" or
 * "answer:" with `answer` at i; 0 when none (an answer never starts at 0). */
static size_t phrase_at(str t, size_t i) {
    if (!lower_eq(t, i, "answer")) return 0;
    size_t after = i + 6;
    if (after < t.n && t.p[after] == ':') return after + 1;
    int preceded = (i >= 4 && lower_eq(t, i - 4, "the ")) || (i >= 6 && lower_eq(t, i - 6, "final "));
    return preceded && lower_eq(t, after, " is") ? after + 3 : 0;
}

static int balanced(str t, size_t start, str *out) {
    size_t depth = 1;
    for (size_t i = start; i < t.n; i++) {
        if (t.p[i] == '{') depth++;
        else if (t.p[i] == '}' && --depth == 0) {
            str s = {t.p + start, i - start};
            *out = trim(s);
            return 1;
        }
    }
    return 0;
}

static int sentence(str t, size_t start, str *out) {
    size_t end = t.n;
    for (size_t i = start; i < t.n; i++) {
        char c = t.p[i];
        if (c == '\n' || c == '<' || (c == '.' && !(i + 1 < t.n && is_digit(t.p[i + 1])))) { end = i; break; }
    }
    str s = {t.p + start, end - start};
    s = trim(s);
    while (s.n && s.p[0] == ':') { s.p++; s.n--; }
    s = trim(s);
    *out = s;
    return s.n > 0;
}

static int last_number(str t, str *out) {
    size_t end = 0;
    int found = 0;
    for (size_t i = t.n; i > 0; i--) if (is_digit(t.p[i - 1])) { end = i; found = 1; break; }
    if (!found) return 0;
    size_t start = end;
    while (start > 0) {
        char b = t.p[start - 1];
        int inner = start - 1 > 0 && is_digit(t.p[start - 2]);
        if (is_digit(b) || ((b == ',' || b == '.' || b == '/') && inner)) start--;
        else break;
    }
    if (start > 0 && t.p[start - 1] == '-') start--;
    out->p = t.p + start;
    out->n = end - start;
    return 1;
}

static int extract(str t, int fallback, str *out) {
    size_t boxed = 0, hashes = 0, phrase = 0;
    int has_boxed = 0, has_hashes = 0, has_phrase = 0;
    for (size_t i = t.n; i > 0; i--) {
        size_t k = i - 1;
        char c = t.p[k];
        if (c == '\\' && !has_boxed && starts(t, k, "\\boxed{")) { boxed = k + 7; has_boxed = 1; }
        else if (c == '#' && !has_hashes && starts(t, k, "####")) { hashes = k + 4; has_hashes = 1; }
        else if ((c == 'a' || c == 'A') && !has_phrase) { phrase = phrase_at(t, k); has_phrase = phrase != 0; }
    }
    if (has_boxed && balanced(t, boxed, out)) return 1;
    if (has_hashes) {
        size_t end = hashes;
        while (end < t.n && t.p[end] != '\n' && t.p[end] != '<') end++;
        str s = {t.p + hashes, end - hashes};
        s = trim(s);
        if (s.n) { *out = s; return 1; }
    }
    if (has_phrase && sentence(t, phrase, out)) return 1;
    return fallback ? last_number(t, out) : 0;
}

/* A growable byte buffer for normalized answers. */
typedef struct { char *p; size_t n, cap; } buf;
static void put(buf *b, const char *s, size_t n) {
    if (b->n + n + 1 > b->cap) { b->cap = (b->n + n + 1) * 2; b->p = realloc(b->p, b->cap); }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
}

static int is_plain(str s) {
    for (size_t i = 0; i < s.n; i++) {
        char c = s.p[i];
        if (!(is_digit(c) || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '-' || c == '/' || c == ' ' || c == '.' || c == '%')) return 0;
    }
    return 1;
}

static size_t find(str s, size_t from, const char *w) {
    size_t k = strlen(w);
    for (size_t i = from; i + k <= s.n; i++) if (memcmp(s.p + i, w, k) == 0) return i;
    return (size_t)-1;
}

/* Replaces every `from` by `to` in b (in place, through a copy). */
static void replace_all(buf *b, const char *from, const char *to) {
    str s = {b->p, b->n};
    if (find(s, 0, from) == (size_t)-1) return;
    buf o = {0};
    put(&o, "", 0);
    size_t i = 0, k = strlen(from);
    while (i < s.n) {
        if (i + k <= s.n && memcmp(s.p + i, from, k) == 0) { put(&o, to, strlen(to)); i += k; }
        else { put(&o, s.p + i, 1); i++; }
    }
    free(b->p);
    *b = o;
}

/* The normalized answer, in a fresh buffer the caller frees. */
static buf normalize(str answer) {
    buf b = {0};
    str s = trim(answer);
    if (is_plain(s) && !(s.n && s.p[s.n - 1] == '.')) { put(&b, s.p, s.n); return b; }
    put(&b, s.p, s.n);
    if (memchr(b.p, '\\', b.n)) {
        const char *wrappers[] = {"\\text{", "\\mathrm{", "\\textbf{", "\\boxed{"};
        for (int w = 0; w < 4; w++) {
            for (;;) {
                str cur = {b.p, b.n};
                size_t p = find(cur, 0, wrappers[w]);
                if (p == (size_t)-1) break;
                size_t start = p + strlen(wrappers[w]);
                size_t q = find(cur, start, "}");
                if (q == (size_t)-1) break;
                buf o = {0};
                put(&o, b.p, p);
                put(&o, b.p + start, q - start);
                put(&o, b.p + q + 1, b.n - q - 1);
                free(b.p);
                b = o;
            }
        }
        replace_all(&b, "\\dfrac", "\\frac");
        replace_all(&b, "\\tfrac", "\\frac");
        replace_all(&b, "\\!", "");
        replace_all(&b, "\\,", "");
        replace_all(&b, "\\$", "");
    }
    str t = {b.p, b.n};
    t = trim(t);
    while (t.n && t.p[t.n - 1] == '.') t.n--;
    t = trim(t);
    if (t.n && t.p[0] == '+') { t.p++; t.n--; }
    buf o = {0};
    put(&o, "", 0);
    for (size_t i = 0; i < t.n; i++) {
        unsigned char c = (unsigned char)t.p[i];
        if (c == '$') continue;
        if (c == 0xE2 && i + 2 < t.n && (unsigned char)t.p[i + 1] == 0x82 && (unsigned char)t.p[i + 2] == 0xAC) { i += 2; continue; } /* € */
        if (c == 0xC2 && i + 1 < t.n && (unsigned char)t.p[i + 1] == 0xA3) { i += 1; continue; }                                    /* £ */
        if (c == 0xE2 && i + 2 < t.n && (unsigned char)t.p[i + 1] == 0x88 && (unsigned char)t.p[i + 2] == 0x92) { put(&o, "-", 1); i += 2; continue; } /* − */
        if (c == ',') {
            int digit_before = i > 0 && is_digit(t.p[i - 1]);
            int three_after = t.n >= i + 4 && is_digit(t.p[i + 1]) && is_digit(t.p[i + 2]) && is_digit(t.p[i + 3]) && !(i + 4 < t.n && is_digit(t.p[i + 4]));
            if (!(digit_before && three_after)) put(&o, ",", 1);
            continue;
        }
        put(&o, (const char *)&t.p[i], 1);
    }
    free(b.p);
    str r = {o.p, o.n};
    r = trim(r);
    buf out = {0};
    put(&out, r.p, r.n);
    free(o.p);
    return out;
}

/* Rust's f64 grammar: sign, digits with an optional point, optional exponent, or
 * inf/infinity/nan in any case; non-finite results count as "not a number". */
static int parse_float(str s, double *out) {
    s = trim(s);
    if (!s.n || s.n > 300) return 0;
    char tmp[320];
    memcpy(tmp, s.p, s.n);
    tmp[s.n] = 0;
    size_t i = 0;
    if (tmp[i] == '+' || tmp[i] == '-') i++;
    size_t digits = 0;
    while (is_digit(tmp[i])) { i++; digits++; }
    if (tmp[i] == '.') { i++; while (is_digit(tmp[i])) { i++; digits++; } }
    if (digits == 0) return 0; /* inf/nan parse but are not finite: no number either way */
    if (tmp[i] == 'e' || tmp[i] == 'E') {
        i++;
        if (tmp[i] == '+' || tmp[i] == '-') i++;
        if (!is_digit(tmp[i])) return 0;
        while (is_digit(tmp[i])) i++;
    }
    if (tmp[i]) return 0;
    double v = strtod(tmp, NULL);
    if (!isfinite(v)) return 0;
    *out = v;
    return 1;
}

static int numeric(str a, double *out) {
    str s = trim(a);
    while (s.n && s.p[s.n - 1] == '%') s.n--;
    s = trim(s);
    int negative = starts(s, 0, "-\\frac{");
    if (starts(s, 0, "\\frac{") || negative) {
        str rest = {s.p + (negative ? 7 : 6), s.n - (negative ? 7 : 6)};
        size_t close = find(rest, 0, "}");
        if (close == (size_t)-1) return 0;
        str num = {rest.p, close};
        str tail = {rest.p + close + 1, rest.n - close - 1};
        if (!(tail.n >= 2 && tail.p[0] == '{' && tail.p[tail.n - 1] == '}')) return 0;
        str den = {tail.p + 1, tail.n - 2};
        double x, y;
        if (!parse_float(num, &x) || !parse_float(den, &y)) return 0;
        double v = x / y;
        *out = negative ? -v : v;
        return 1;
    }
    size_t slash = find(s, 0, "/");
    if (slash != (size_t)-1) {
        str l = {s.p, slash}, r = {s.p + slash + 1, s.n - slash - 1};
        double x, y;
        if (!parse_float(l, &x) || !parse_float(r, &y)) return 0;
        double v = x / y;
        if (!isfinite(v)) return 0;
        *out = v;
        return 1;
    }
    return parse_float(s, out);
}

/* i64 as Rust parses it: optional sign, digits only, in range. */
static int parse_int(str s, long long *out) {
    if (!s.n || s.n > 30) return 0;
    size_t i = (s.p[0] == '+' || s.p[0] == '-') ? 1 : 0;
    if (i == s.n) return 0;
    for (size_t k = i; k < s.n; k++) if (!is_digit(s.p[k])) return 0;
    char tmp[32];
    memcpy(tmp, s.p, s.n);
    tmp[s.n] = 0;
    errno = 0;
    long long v = strtoll(tmp, NULL, 10);
    if (errno == ERANGE) return 0;
    *out = v;
    return 1;
}

static int same_answer(str predicted, str truth) {
    buf p = normalize(predicted), t = normalize(truth);
    str ps = {p.p ? p.p : "", p.n}, ts = {t.p ? t.p : "", t.n};
    int result;
    long long a, b;
    double x, y;
    if (parse_int(ps, &a) && parse_int(ts, &b)) result = a == b;
    else {
        int hx = numeric(ps, &x), hy = numeric(ts, &y);
        if (hx && hy) result = fabs(x - y) <= 1e-6 * fmax(fabs(y), 1.0);
        else if (!hx && !hy) {
            /* Compare ignoring whitespace and ASCII case. */
            size_t i = 0, j = 0;
            result = 1;
            for (;;) {
                while (i < ps.n && is_space(ps.p[i])) i++;
                while (j < ts.n && is_space(ts.p[j])) j++;
                if (i == ps.n || j == ts.n) { result = i == ps.n && j == ts.n; break; }
                if (lower(ps.p[i]) != lower(ts.p[j])) { result = 0; break; }
                i++;
                j++;
            }
        } else result = 0;
    }
    free(p.p);
    free(t.p);
    return result;
}

static str truth_of(str raw) {
    for (size_t i = raw.n; i >= 4; i--) {
        if (starts(raw, i - 4, "####")) {
            str s = {raw.p + i, raw.n - i};
            return trim(s);
        }
    }
    return trim(raw);
}

static double correct = 1.0, incorrect = 0.0;
static int fallback = 1;
static char answer_key[64] = "answer";

int galley_reward_init(galley_config config, galley_error *err) {
    correct = galley_config_number(config, "correct", 1.0);
    incorrect = galley_config_number(config, "incorrect", 0.0);
    fallback = galley_config_bool(config, "fallback_last_number", 1);
    galley_str key;
    if (galley_config_string(config, "answer_key", &key)) {
        if (key.len >= sizeof answer_key) return galley_fail(err, GALLEY_ERR_CONFIG, "`answer_key` is too long");
        memcpy(answer_key, key.ptr, key.len);
        answer_key[key.len] = 0;
    }
    return 0;
}

int galley_reward_score(const galley_reward_input *in, galley_score *out, galley_error *err) {
    (void)err;
    char numbuf[64];
    galley_str raw;
    if (!galley_meta_text(in->metadata, answer_key, numbuf, sizeof numbuf, &raw)) {
        *out = galley_no_opinion();
        return 0;
    }
    str r = {raw.ptr, raw.len};
    str truth = truth_of(r);
    if (!truth.n) {
        *out = galley_no_opinion();
        return 0;
    }
    str completion = {in->completion.ptr, in->completion.len}, answer;
    int ok = extract(completion, fallback, &answer) && same_answer(answer, truth);
    *out = galley_score_of(ok ? correct : incorrect);
    return 0;
}
