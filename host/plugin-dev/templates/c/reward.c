#include "galley.h"
#include <string.h>

/* 1.0 when the completion contains the example's `answer` column, else 0.0; no opinion
 * without one. */
int galley_reward_score(const galley_reward_input *in, galley_score *out, galley_error *err) {
    (void)err;
    char buf[64];
    galley_str answer;
    if (!galley_meta_text(in->metadata, "answer", buf, sizeof buf, &answer) || answer.len == 0) {
        *out = galley_no_opinion();
        return 0;
    }
    const char *c = in->completion.ptr;
    size_t n = in->completion.len;
    for (size_t i = 0; i + answer.len <= n; i++) {
        if (memcmp(c + i, answer.ptr, answer.len) == 0) {
            *out = galley_score_of(1.0);
            return 0;
        }
    }
    *out = galley_score_of(0.0);
    return 0;
}
