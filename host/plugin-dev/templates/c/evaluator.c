#include "galley.h"
#include <ctype.h>

/* 1.0 when the prediction equals a reference after trimming and lower-casing; the summary is
 * the mean of each metric, plus `count`. */
static galley_str trim(galley_str s) {
    while (s.len && isspace((unsigned char)s.ptr[0])) { s.ptr++; s.len--; }
    while (s.len && isspace((unsigned char)s.ptr[s.len - 1])) s.len--;
    return s;
}

static int same(galley_str a, galley_str b) {
    a = trim(a);
    b = trim(b);
    if (a.len != b.len) return 0;
    for (size_t i = 0; i < a.len; i++)
        if (tolower((unsigned char)a.ptr[i]) != tolower((unsigned char)b.ptr[i])) return 0;
    return 1;
}

int galley_evaluator_score(const galley_prediction *p, galley_metrics *out, galley_error *err) {
    (void)err;
    int hit = 0;
    for (size_t i = 0; i < p->references_len && !hit; i++) hit = same(p->prediction, p->references[i]);
    galley_metric_add(out, "exact_match", hit ? 1.0 : 0.0);
    return 0;
}
