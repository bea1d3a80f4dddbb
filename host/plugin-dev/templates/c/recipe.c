#include "galley.h"
#include <math.h>
#include <stdio.h>

/* SFT, then GRPO until the mean reward reaches `target`, then evaluation. */
static double target = 0.9;

int galley_recipe_plan(galley_config config, galley_plan *plan, galley_error *err) {
    (void)err;
    target = galley_config_number(config, "target", 0.9);
    galley_plan_stage(plan, "sft", "sft", "{\"epochs\": 1}");
    galley_plan_stage(plan, "grpo", "grpo", "{\"num_generations\": 8}");
    galley_plan_stage(plan, "eval", "evaluate", "{}");
    return 0;
}

int galley_recipe_on_metrics(galley_str stage, uint64_t step, const galley_metric *metrics, size_t n,
                             galley_decision *d, galley_error *err) {
    (void)err;
    for (size_t i = 0; i < n; i++) {
        if (galley_str_eq(metrics[i].name, "loss") && !isfinite(metrics[i].value)) {
            char why[64];
            snprintf(why, sizeof why, "non-finite loss at step %llu", (unsigned long long)step);
            galley_decide_stop(d, why);
            return 0;
        }
        if (galley_str_eq(stage, "grpo") && galley_str_eq(metrics[i].name, "reward") && metrics[i].value >= target)
            galley_decide_next_stage(d);
    }
    return 0;
}
