#include "galley.h"
#include <stdio.h>

/* `count` questions "What is N + 1?", with the answer in the metadata. */
static long long next, count;

int galley_loader_init(galley_config config, uint64_t seed, galley_error *err) {
    (void)seed;
    double c = galley_config_number(config, "count", 10);
    if (c < 0) return galley_fail(err, GALLEY_ERR_CONFIG, "`count` must not be negative");
    next = 0;
    count = (long long)c;
    return 0;
}

int galley_loader_next(galley_example *ex, galley_error *err) {
    (void)err;
    if (next >= count) return 0;
    char id[32], question[64];
    snprintf(id, sizeof id, "count-%lld", next);
    snprintf(question, sizeof question, "What is %lld + 1?", next);
    galley_example_id(ex, id);
    galley_example_message(ex, "user", question);
    galley_example_meta_int(ex, "answer", next + 1);
    next++;
    return 1;
}
