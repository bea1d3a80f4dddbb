#include "galley.h"
#include <string.h>

/* 1.0 when the answer contains the example's `answer` column, else 0.0; no opinion
 * without one. `in->content` is the answer without a thinking model's reasoning
 * (`in->completion` is the whole text as written). */
int galley_reward_score(const galley_reward_input *in, galley_score *out, galley_error *err) {
    (void)err;
    char buf[64];
    galley_str answer;
    if (!galley_meta_text(in->metadata, "answer", buf, sizeof buf, &answer) || answer.len == 0) {
        *out = galley_no_opinion();
        return 0;
    }
    const char *c = in->content.ptr;
    size_t n = in->content.len;
    for (size_t i = 0; i + answer.len <= n; i++) {
        if (memcmp(c + i, answer.ptr, answer.len) == 0) {
            *out = galley_score_of(1.0);
            return 0;
        }
    }
    *out = galley_score_of(0.0);
    return 0;
}
