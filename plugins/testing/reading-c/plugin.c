/* TEST ONLY. What the C SDK hands a reward beside the completion's text, as the one number
 * hostile-reward, hostile-py and hostile-js compute in mode `reading`:
 * 1000 x calls + 100 x the keys of the calls' arguments (flat JSON objects) + the reasoning's
 * length + 0.5 when the budget cut the completion. */
#include "galley.h"

/* Keys of a JSON object: colons outside strings at depth 1; -1 if it does not read as one
 * (no opening brace, or brackets that never close: a cut-off object). */
static int object_keys(galley_str s) {
    size_t i = 0;
    while (i < s.len && (s.ptr[i] == ' ' || s.ptr[i] == '\n' || s.ptr[i] == '\t')) i++;
    if (i >= s.len || s.ptr[i] != '{') return -1;
    int depth = 0, keys = 0, in_string = 0;
    for (; i < s.len; i++) {
        char c = s.ptr[i];
        if (in_string) {
            if (c == '\\') i++;
            else if (c == '"') in_string = 0;
        } else if (c == '"') {
            in_string = 1;
        } else if (c == '{' || c == '[') {
            depth++;
        } else if (c == '}' || c == ']') {
            depth--;
        } else if (c == ':' && depth == 1) {
            keys++;
        }
    }
    return depth == 0 && !in_string ? keys : -1;
}

int galley_reward_score(const galley_reward_input *in, galley_score *out, galley_error *err) {
    (void)err;
    double keys = 0;
    for (size_t i = 0; i < in->tool_calls_len; i++) {
        int k = object_keys(in->tool_calls[i].arguments);
        if (k > 0) keys += k;
    }
    double reasoning = in->has_reasoning ? (double)in->reasoning.len : 0.0;
    *out = galley_score_of(1000.0 * (double)in->tool_calls_len + 100.0 * keys + reasoning + (in->truncated ? 0.5 : 0.0));
    return 0;
}
