/* galley-sdk for C: write galley plugins as a few plain C functions.
 *
 * `galley plugin build` compiles plugin.c with this SDK and the bindings it generates from
 * the galley:plugin WIT, for wasm32-wasi, into a sandboxed component. Define the functions
 * of your plugin's kind (the `*_init` ones are optional):
 *
 *   reward:      int galley_reward_score(const galley_reward_input *in, galley_score *out, galley_error *err);
 *                int galley_reward_init(galley_config config, galley_error *err);
 *   data-loader: int galley_loader_next(galley_example *ex, galley_error *err);   1 = made one, 0 = done
 *                int galley_loader_init(galley_config config, uint64_t seed, galley_error *err);
 *   evaluator:   int galley_evaluator_score(const galley_prediction *p, galley_metrics *out, galley_error *err);
 *                int galley_evaluator_init(galley_config config, galley_error *err);
 *   recipe:      int galley_recipe_plan(galley_config config, galley_plan *plan, galley_error *err);
 *                int galley_recipe_on_metrics(galley_str stage, uint64_t step, const galley_metric *metrics,
 *                                             size_t n, galley_decision *d, galley_error *err);
 *
 * Return 0 on success (loaders: 1 or 0), or -1 after `galley_fail(err, ...)`. Strings the
 * host passes are `galley_str` views (not NUL-terminated) valid during the call; strings you
 * pass to the SDK are copied.
 */
#ifndef GALLEY_H
#define GALLEY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct { const char *ptr; size_t len; } galley_str;

/* A message's role and text (its content, without reasoning or call markup). */
typedef struct { galley_str role; galley_str content; } galley_message;

/* A function call in an assistant turn; `arguments` is JSON text as the model wrote it. */
typedef struct {
    bool has_id;
    galley_str id;
    galley_str name;
    galley_str arguments;
} galley_tool_call;

typedef enum { GALLEY_NULL, GALLEY_BOOL, GALLEY_INT, GALLEY_FLOAT, GALLEY_TEXT, GALLEY_JSON } galley_value_kind;

typedef struct {
    galley_value_kind kind;
    bool b;
    int64_t i;
    double f;
    galley_str s; /* TEXT and JSON */
} galley_value;

/* An example's metadata columns. */
typedef struct galley_metadata galley_metadata;

/* The value of column `key`; false when there is none. */
bool galley_meta_get(const galley_metadata *m, const char *key, galley_value *out);
/* Column `key` as text: strings as they are, numbers printed as Rust prints them (42, 0.5),
 * into `buf` when needed. False for other kinds or a missing column. */
bool galley_meta_text(const galley_metadata *m, const char *key, char *buf, size_t cap, galley_str *out);

/* The user's settings for the plugin, a JSON object. */
typedef struct { galley_str json; } galley_config;
/* Top-level number, boolean or string settings (a small scanner: no escapes in strings). */
double galley_config_number(galley_config c, const char *key, double fallback);
bool galley_config_bool(galley_config c, const char *key, bool fallback);
bool galley_config_string(galley_config c, const char *key, galley_str *out);

typedef enum { GALLEY_ERR_CONFIG, GALLEY_ERR_INPUT, GALLEY_ERR_FAILED } galley_error_kind;
typedef struct { galley_error_kind kind; char message[512]; } galley_error;
/* Records an error (printf-style) and returns -1, for `return galley_fail(...)`. */
int galley_fail(galley_error *err, galley_error_kind kind, const char *fmt, ...);

enum { GALLEY_TRACE, GALLEY_DEBUG, GALLEY_INFO, GALLEY_WARN, GALLEY_ERROR };
void galley_log(int level, const char *message);

bool galley_str_eq(galley_str s, const char *c);

/* ---- reward ---- */
typedef struct {
    const galley_message *prompt;
    size_t prompt_len;
    /* What the model wrote, reasoning and call markup included. */
    galley_str completion;
    const galley_metadata *metadata;
    /* The completion read as an assistant turn: its content, its calls, its reasoning. */
    galley_str content;
    const galley_tool_call *tool_calls;
    size_t tool_calls_len;
    bool has_reasoning;
    galley_str reasoning;
    /* The token budget cut the completion before the model ended it. */
    bool truncated;
} galley_reward_input;

typedef struct { bool has_value; double value; } galley_score;
static inline galley_score galley_score_of(double v) { galley_score s = {true, v}; return s; }
static inline galley_score galley_no_opinion(void) { galley_score s = {false, 0.0}; return s; }

/* ---- data loader ---- */
typedef struct galley_example galley_example;
void galley_example_id(galley_example *ex, const char *id);
void galley_example_message(galley_example *ex, const char *role, const char *content);
void galley_example_meta_int(galley_example *ex, const char *key, int64_t v);
void galley_example_meta_float(galley_example *ex, const char *key, double v);
void galley_example_meta_text(galley_example *ex, const char *key, const char *v);

/* ---- evaluator ---- */
typedef struct {
    galley_str id;
    galley_str prediction;
    const galley_str *references;
    size_t references_len;
    const galley_metadata *metadata;
} galley_prediction;
typedef struct galley_metrics galley_metrics;
void galley_metric_add(galley_metrics *out, const char *name, double value);

/* ---- recipe ---- */
typedef struct { galley_str name; double value; } galley_metric;
typedef struct galley_plan galley_plan;
/* Adds a stage; `config_json` is a JSON object ("{}" for none). */
void galley_plan_stage(galley_plan *plan, const char *name, const char *kind, const char *config_json);
typedef struct galley_decision galley_decision;
void galley_decide_next_stage(galley_decision *d);
void galley_decide_stop(galley_decision *d, const char *reason);

#endif
