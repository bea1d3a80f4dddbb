/* The galley C SDK over the bindings wit-bindgen generates for one world. `galley plugin
 * build` compiles this file with -DGALLEY_WORLD_<WORLD>; it implements the world's exports
 * by calling the plugin's galley_* functions, and owns every allocation that crosses. */
#include "galley.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#if defined(GALLEY_WORLD_REWARD_PLUGIN)
#include "reward_plugin.h"
#define W(x) reward_plugin_##x
#elif defined(GALLEY_WORLD_DATA_LOADER_PLUGIN)
#include "data_loader_plugin.h"
#define W(x) data_loader_plugin_##x
#elif defined(GALLEY_WORLD_EVALUATOR_PLUGIN)
#include "evaluator_plugin.h"
#define W(x) evaluator_plugin_##x
#elif defined(GALLEY_WORLD_RECIPE_PLUGIN)
#include "recipe_plugin.h"
#define W(x) recipe_plugin_##x
#else
#error "compile with -DGALLEY_WORLD_<WORLD> (galley plugin build does)"
#endif

typedef W(string_t) wstr;

/* The generated bindings reference this to keep a component-type object linked; galley
 * embeds the component type itself, so it only has to exist. */
#define FORCE_LINK2(w) void __component_type_object_force_link_##w(void) {}
#define FORCE_LINK(w) FORCE_LINK2(w)
#if defined(GALLEY_WORLD_REWARD_PLUGIN)
FORCE_LINK(reward_plugin)
#elif defined(GALLEY_WORLD_DATA_LOADER_PLUGIN)
FORCE_LINK(data_loader_plugin)
#elif defined(GALLEY_WORLD_EVALUATOR_PLUGIN)
FORCE_LINK(evaluator_plugin)
#else
FORCE_LINK(recipe_plugin)
#endif

static galley_str view(const wstr *s) { galley_str v = {(const char *)s->ptr, s->len}; return v; }

static void dup_into(wstr *out, const char *s) { W(string_dup)(out, s); }

bool galley_str_eq(galley_str s, const char *c) { return strlen(c) == s.len && memcmp(s.ptr, c, s.len) == 0; }

/* ---- errors and logging ---- */

int galley_fail(galley_error *err, galley_error_kind kind, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    err->kind = kind;
    vsnprintf(err->message, sizeof err->message, fmt, ap);
    va_end(ap);
    return -1;
}

static void error_out(const galley_error *e, galley_plugin_types_plugin_error_t *out) {
    out->tag = e->kind == GALLEY_ERR_CONFIG ? GALLEY_PLUGIN_TYPES_PLUGIN_ERROR_INVALID_CONFIG
             : e->kind == GALLEY_ERR_INPUT  ? GALLEY_PLUGIN_TYPES_PLUGIN_ERROR_INVALID_INPUT
                                            : GALLEY_PLUGIN_TYPES_PLUGIN_ERROR_FAILED;
    /* All three cases hold one string at the same place. */
    dup_into(&out->val.failed, e->message[0] ? e->message : "plugin error");
}

void galley_log(int level, const char *message) {
    wstr s;
    W(string_set)(&s, message);
    galley_plugin_log_log((galley_plugin_log_level_t)level, &s);
}

/* ---- metadata ---- */

struct galley_metadata { const galley_plugin_types_entry_t *ptr; size_t len; };

bool galley_meta_get(const galley_metadata *m, const char *key, galley_value *out) {
    for (size_t i = 0; i < m->len; i++) {
        const galley_plugin_types_entry_t *e = &m->ptr[i];
        if (!galley_str_eq(view(&e->key), key)) continue;
        memset(out, 0, sizeof *out);
        switch (e->value.tag) {
        case GALLEY_PLUGIN_TYPES_VALUE_NULL: out->kind = GALLEY_NULL; break;
        case GALLEY_PLUGIN_TYPES_VALUE_BOOLEAN: out->kind = GALLEY_BOOL; out->b = e->value.val.boolean; break;
        case GALLEY_PLUGIN_TYPES_VALUE_INTEGER: out->kind = GALLEY_INT; out->i = e->value.val.integer; break;
        case GALLEY_PLUGIN_TYPES_VALUE_NUMBER: out->kind = GALLEY_FLOAT; out->f = e->value.val.number; break;
        case GALLEY_PLUGIN_TYPES_VALUE_TEXT: out->kind = GALLEY_TEXT; out->s = view(&e->value.val.text); break;
        default: out->kind = GALLEY_JSON; out->s = view(&e->value.val.json); break;
        }
        return true;
    }
    return false;
}

/* The shortest decimal that reads back as `f`, without exponent for integral values, as
 * Rust's `Display` prints floats. */
static void print_float(double f, char *buf, size_t cap) {
    if (f == floor(f) && fabs(f) < 1e16) {
        snprintf(buf, cap, "%.0f", f);
        return;
    }
    for (int p = 1; p <= 17; p++) {
        snprintf(buf, cap, "%.*g", p, f);
        if (strtod(buf, NULL) == f) return;
    }
}

bool galley_meta_text(const galley_metadata *m, const char *key, char *buf, size_t cap, galley_str *out) {
    galley_value v;
    if (!galley_meta_get(m, key, &v)) return false;
    switch (v.kind) {
    case GALLEY_TEXT: *out = v.s; return true;
    case GALLEY_INT: snprintf(buf, cap, "%lld", (long long)v.i); break;
    case GALLEY_FLOAT: print_float(v.f, buf, cap); break;
    default: return false;
    }
    out->ptr = buf;
    out->len = strlen(buf);
    return true;
}

/* ---- config: a small scanner for top-level keys ---- */

static const char *config_find(galley_config c, const char *key) {
    size_t klen = strlen(key);
    const char *p = c.json.ptr, *end = c.json.ptr + c.json.len;
    for (; p + klen + 2 <= end; p++) {
        if (*p == '"' && memcmp(p + 1, key, klen) == 0 && p[klen + 1] == '"') {
            const char *q = p + klen + 2;
            while (q < end && (*q == ' ' || *q == '\t' || *q == '\n' || *q == '\r')) q++;
            if (q < end && *q == ':') {
                q++;
                while (q < end && (*q == ' ' || *q == '\t' || *q == '\n' || *q == '\r')) q++;
                return q < end ? q : NULL;
            }
        }
    }
    return NULL;
}

double galley_config_number(galley_config c, const char *key, double fallback) {
    const char *v = config_find(c, key);
    if (!v) return fallback;
    char buf[64];
    size_t n = 0, avail = c.json.len - (size_t)(v - c.json.ptr);
    while (n < avail && n < sizeof buf - 1 && strchr("+-0123456789.eE", v[n])) { buf[n] = v[n]; n++; }
    buf[n] = 0;
    char *endp;
    double d = strtod(buf, &endp);
    return endp == buf ? fallback : d;
}

bool galley_config_bool(galley_config c, const char *key, bool fallback) {
    const char *v = config_find(c, key);
    size_t avail = v ? c.json.len - (size_t)(v - c.json.ptr) : 0;
    if (v && avail >= 4 && memcmp(v, "true", 4) == 0) return true;
    if (v && avail >= 5 && memcmp(v, "false", 5) == 0) return false;
    return fallback;
}

bool galley_config_string(galley_config c, const char *key, galley_str *out) {
    const char *v = config_find(c, key);
    if (!v || *v != '"') return false;
    const char *end = c.json.ptr + c.json.len, *q = v + 1;
    while (q < end && *q != '"') q++;
    if (q >= end) return false;
    out->ptr = v + 1;
    out->len = (size_t)(q - v - 1);
    return true;
}

static galley_config config_of(const wstr *s) { galley_config c = {view(s)}; return c; }

/* ---- reward ---- */
#if defined(GALLEY_WORLD_REWARD_PLUGIN)

__attribute__((weak)) int galley_reward_init(galley_config config, galley_error *err) { (void)config; (void)err; return 0; }
int galley_reward_score(const galley_reward_input *in, galley_score *out, galley_error *err);

static char *g_config;
static size_t g_config_len;

bool exports_galley_plugin_reward_init(reward_plugin_string_t *config, exports_galley_plugin_reward_plugin_error_t *err) {
    galley_error e = {GALLEY_ERR_FAILED, {0}};
    free(g_config);
    g_config = malloc(config->len + 1);
    memcpy(g_config, config->ptr, config->len);
    g_config[config->len] = 0;
    g_config_len = config->len;
    reward_plugin_string_free(config);
    galley_config c = {{g_config, g_config_len}};
    if (galley_reward_init(c, &e) != 0) { error_out(&e, err); return false; }
    return true;
}

bool exports_galley_plugin_reward_score(exports_galley_plugin_reward_list_reward_group_t *groups,
                                        reward_plugin_list_option_f64_t *ret,
                                        exports_galley_plugin_reward_plugin_error_t *err) {
    size_t total = 0;
    for (size_t g = 0; g < groups->len; g++) total += groups->ptr[g].completions.len;
    ret->ptr = malloc((total ? total : 1) * sizeof *ret->ptr);
    ret->len = 0;
    galley_error e = {GALLEY_ERR_FAILED, {0}};
    bool ok = true;
    for (size_t g = 0; g < groups->len && ok; g++) {
        exports_galley_plugin_reward_reward_group_t *grp = &groups->ptr[g];
        galley_message *prompt = malloc((grp->prompt.len ? grp->prompt.len : 1) * sizeof *prompt);
        for (size_t i = 0; i < grp->prompt.len; i++) {
            prompt[i].role = view(&grp->prompt.ptr[i].role);
            prompt[i].content = view(&grp->prompt.ptr[i].content);
        }
        galley_metadata meta = {grp->metadata.ptr, grp->metadata.len};
        for (size_t c = 0; c < grp->completions.len; c++) {
            exports_galley_plugin_reward_completion_t *comp = &grp->completions.ptr[c];
            galley_plugin_types_message_t *msg = &comp->message;
            galley_tool_call *calls = malloc((msg->tool_calls.len ? msg->tool_calls.len : 1) * sizeof *calls);
            for (size_t k = 0; k < msg->tool_calls.len; k++) {
                galley_plugin_types_tool_call_t *tc = &msg->tool_calls.ptr[k];
                calls[k].has_id = tc->id.is_some;
                calls[k].id = tc->id.is_some ? view(&tc->id.val) : (galley_str){"", 0};
                calls[k].name = view(&tc->name);
                calls[k].arguments = view(&tc->arguments);
            }
            galley_reward_input in = {prompt, grp->prompt.len, view(&comp->text), &meta,
                                      view(&msg->content), calls, msg->tool_calls.len,
                                      msg->reasoning.is_some,
                                      msg->reasoning.is_some ? view(&msg->reasoning.val) : (galley_str){"", 0},
                                      comp->truncated};
            galley_score s = {false, 0.0};
            int rc = galley_reward_score(&in, &s, &e);
            free(calls);
            if (rc != 0) { ok = false; break; }
            ret->ptr[ret->len].is_some = s.has_value;
            ret->ptr[ret->len].val = s.value;
            ret->len++;
        }
        free(prompt);
    }
    exports_galley_plugin_reward_list_reward_group_free(groups);
    if (!ok) {
        free(ret->ptr);
        ret->ptr = NULL;
        ret->len = 0;
        error_out(&e, err);
    }
    return ok;
}
#endif

/* ---- data loader ---- */
#if defined(GALLEY_WORLD_DATA_LOADER_PLUGIN)

__attribute__((weak)) int galley_loader_init(galley_config config, uint64_t seed, galley_error *err) { (void)config; (void)seed; (void)err; return 0; }
int galley_loader_next(galley_example *ex, galley_error *err);

struct galley_example {
    galley_plugin_types_example_t *ex;
    size_t messages_cap, metadata_cap;
};

static void *grow(void *ptr, size_t *cap, size_t len, size_t size) {
    if (len < *cap) return ptr;
    *cap = *cap ? *cap * 2 : 4;
    return realloc(ptr, *cap * size);
}

void galley_example_id(galley_example *ex, const char *id) {
    data_loader_plugin_string_free(&ex->ex->id);
    dup_into(&ex->ex->id, id);
}

void galley_example_message(galley_example *ex, const char *role, const char *content) {
    galley_plugin_types_list_message_t *l = &ex->ex->messages;
    l->ptr = grow(l->ptr, &ex->messages_cap, l->len, sizeof *l->ptr);
    /* No calls, no call id, name or reasoning. */
    memset(&l->ptr[l->len], 0, sizeof *l->ptr);
    dup_into(&l->ptr[l->len].role, role);
    dup_into(&l->ptr[l->len].content, content);
    l->len++;
}

static galley_plugin_types_entry_t *new_entry(galley_example *ex, const char *key) {
    galley_plugin_types_list_entry_t *l = &ex->ex->metadata;
    l->ptr = grow(l->ptr, &ex->metadata_cap, l->len, sizeof *l->ptr);
    galley_plugin_types_entry_t *e = &l->ptr[l->len++];
    dup_into(&e->key, key);
    return e;
}

void galley_example_meta_int(galley_example *ex, const char *key, int64_t v) {
    galley_plugin_types_entry_t *e = new_entry(ex, key);
    e->value.tag = GALLEY_PLUGIN_TYPES_VALUE_INTEGER;
    e->value.val.integer = v;
}

void galley_example_meta_float(galley_example *ex, const char *key, double v) {
    galley_plugin_types_entry_t *e = new_entry(ex, key);
    e->value.tag = GALLEY_PLUGIN_TYPES_VALUE_NUMBER;
    e->value.val.number = v;
}

void galley_example_meta_text(galley_example *ex, const char *key, const char *v) {
    galley_plugin_types_entry_t *e = new_entry(ex, key);
    e->value.tag = GALLEY_PLUGIN_TYPES_VALUE_TEXT;
    dup_into(&e->value.val.text, v);
}

static uint64_t g_made;

bool exports_galley_plugin_data_loader_init(data_loader_plugin_string_t *config, uint64_t seed, exports_galley_plugin_data_loader_plugin_error_t *err) {
    galley_error e = {GALLEY_ERR_FAILED, {0}};
    int rc = galley_loader_init(config_of(config), seed, &e);
    data_loader_plugin_string_free(config);
    if (rc != 0) { error_out(&e, err); return false; }
    g_made = 0;
    return true;
}

bool exports_galley_plugin_data_loader_next_page(uint32_t max, exports_galley_plugin_data_loader_list_example_t *ret, exports_galley_plugin_data_loader_plugin_error_t *err) {
    ret->ptr = malloc((max ? max : 1) * sizeof *ret->ptr);
    ret->len = 0;
    galley_error e = {GALLEY_ERR_FAILED, {0}};
    while (ret->len < max) {
        galley_plugin_types_example_t *slot = &ret->ptr[ret->len];
        memset(slot, 0, sizeof *slot);
        galley_example ex = {slot, 0, 0};
        int rc = galley_loader_next(&ex, &e);
        if (rc < 0) {
            galley_plugin_types_example_free(slot);
            exports_galley_plugin_data_loader_list_example_free(ret);
            ret->ptr = NULL;
            ret->len = 0;
            error_out(&e, err);
            return false;
        }
        if (rc == 0) { galley_plugin_types_example_free(slot); break; }
        if (slot->id.len == 0) {
            char id[32];
            snprintf(id, sizeof id, "%llu", (unsigned long long)g_made);
            dup_into(&slot->id, id);
        }
        g_made++;
        ret->len++;
    }
    return true;
}
#endif

/* ---- evaluator ---- */
#if defined(GALLEY_WORLD_EVALUATOR_PLUGIN)

__attribute__((weak)) int galley_evaluator_init(galley_config config, galley_error *err) { (void)config; (void)err; return 0; }
int galley_evaluator_score(const galley_prediction *p, galley_metrics *out, galley_error *err);

struct galley_metrics { exports_galley_plugin_evaluator_list_metric_t *list; size_t cap; };

void galley_metric_add(galley_metrics *out, const char *name, double value) {
    if (out->list->len == out->cap) {
        out->cap = out->cap ? out->cap * 2 : 4;
        out->list->ptr = realloc(out->list->ptr, out->cap * sizeof *out->list->ptr);
    }
    galley_plugin_types_metric_t *m = &out->list->ptr[out->list->len++];
    dup_into(&m->name, name);
    m->value = value;
}

bool exports_galley_plugin_evaluator_init(evaluator_plugin_string_t *config, exports_galley_plugin_evaluator_plugin_error_t *err) {
    galley_error e = {GALLEY_ERR_FAILED, {0}};
    int rc = galley_evaluator_init(config_of(config), &e);
    evaluator_plugin_string_free(config);
    if (rc != 0) { error_out(&e, err); return false; }
    return true;
}

bool exports_galley_plugin_evaluator_score(exports_galley_plugin_evaluator_list_prediction_t *batch, exports_galley_plugin_evaluator_list_list_metric_t *ret, exports_galley_plugin_evaluator_plugin_error_t *err) {
    ret->ptr = calloc(batch->len ? batch->len : 1, sizeof *ret->ptr);
    ret->len = 0;
    galley_error e = {GALLEY_ERR_FAILED, {0}};
    bool ok = true;
    for (size_t i = 0; i < batch->len && ok; i++) {
        exports_galley_plugin_evaluator_prediction_t *p = &batch->ptr[i];
        galley_str *refs = malloc((p->references.len ? p->references.len : 1) * sizeof *refs);
        for (size_t r = 0; r < p->references.len; r++) refs[r] = view(&p->references.ptr[r]);
        galley_metadata meta = {p->metadata.ptr, p->metadata.len};
        galley_prediction pred = {view(&p->id), view(&p->prediction), refs, p->references.len, &meta};
        galley_metrics out = {&ret->ptr[i], 0};
        ret->len++;
        if (galley_evaluator_score(&pred, &out, &e) != 0) ok = false;
        free(refs);
    }
    exports_galley_plugin_evaluator_list_prediction_free(batch);
    if (!ok) {
        exports_galley_plugin_evaluator_list_list_metric_free(ret);
        ret->ptr = NULL;
        ret->len = 0;
        error_out(&e, err);
    }
    return ok;
}

/* The mean of each metric name, in first-seen order, then `count`. */
bool exports_galley_plugin_evaluator_aggregate(exports_galley_plugin_evaluator_list_list_metric_t *scores, exports_galley_plugin_evaluator_list_metric_t *ret, exports_galley_plugin_evaluator_plugin_error_t *err) {
    (void)err;
    exports_galley_plugin_evaluator_list_metric_t names = {NULL, 0};
    double *sums = NULL;
    size_t *counts = NULL, cap = 0;
    for (size_t i = 0; i < scores->len; i++) {
        for (size_t j = 0; j < scores->ptr[i].len; j++) {
            galley_plugin_types_metric_t *m = &scores->ptr[i].ptr[j];
            size_t k = 0;
            while (k < names.len && !(names.ptr[k].name.len == m->name.len && memcmp(names.ptr[k].name.ptr, m->name.ptr, m->name.len) == 0)) k++;
            if (k == names.len) {
                if (names.len == cap) {
                    cap = cap ? cap * 2 : 4;
                    names.ptr = realloc(names.ptr, cap * sizeof *names.ptr);
                    sums = realloc(sums, cap * sizeof *sums);
                    counts = realloc(counts, cap * sizeof *counts);
                }
                W(string_dup_n)(&names.ptr[k].name, (const char *)m->name.ptr, m->name.len);
                sums[k] = 0;
                counts[k] = 0;
                names.len++;
            }
            sums[k] += m->value;
            counts[k]++;
        }
    }
    ret->ptr = malloc((names.len + 1) * sizeof *ret->ptr);
    ret->len = 0;
    for (size_t k = 0; k < names.len; k++) {
        ret->ptr[ret->len].name = names.ptr[k].name;
        ret->ptr[ret->len].value = sums[k] / (double)counts[k];
        ret->len++;
    }
    dup_into(&ret->ptr[ret->len].name, "count");
    ret->ptr[ret->len].value = (double)scores->len;
    ret->len++;
    free(names.ptr);
    free(sums);
    free(counts);
    exports_galley_plugin_evaluator_list_list_metric_free(scores);
    return true;
}
#endif

/* ---- recipe ---- */
#if defined(GALLEY_WORLD_RECIPE_PLUGIN)

int galley_recipe_plan(galley_config config, galley_plan *plan, galley_error *err);

struct galley_plan { exports_galley_plugin_recipe_list_stage_t *list; size_t cap; };
struct galley_decision { exports_galley_plugin_recipe_decision_t *d; };

__attribute__((weak)) int galley_recipe_on_metrics(galley_str stage, uint64_t step, const galley_metric *metrics, size_t n, galley_decision *d, galley_error *err) {
    (void)stage; (void)step; (void)metrics; (void)n; (void)d; (void)err;
    return 0;
}

void galley_plan_stage(galley_plan *plan, const char *name, const char *kind, const char *config_json) {
    if (plan->list->len == plan->cap) {
        plan->cap = plan->cap ? plan->cap * 2 : 4;
        plan->list->ptr = realloc(plan->list->ptr, plan->cap * sizeof *plan->list->ptr);
    }
    exports_galley_plugin_recipe_stage_t *s = &plan->list->ptr[plan->list->len++];
    dup_into(&s->name, name);
    dup_into(&s->kind, kind);
    dup_into(&s->config, config_json ? config_json : "{}");
}

void galley_decide_next_stage(galley_decision *d) { d->d->tag = EXPORTS_GALLEY_PLUGIN_RECIPE_DECISION_NEXT_STAGE; }

void galley_decide_stop(galley_decision *d, const char *reason) {
    d->d->tag = EXPORTS_GALLEY_PLUGIN_RECIPE_DECISION_STOP;
    dup_into(&d->d->val.stop, reason);
}

bool exports_galley_plugin_recipe_plan(recipe_plugin_string_t *config, exports_galley_plugin_recipe_list_stage_t *ret, exports_galley_plugin_recipe_plugin_error_t *err) {
    ret->ptr = NULL;
    ret->len = 0;
    galley_plan plan = {ret, 0};
    galley_error e = {GALLEY_ERR_FAILED, {0}};
    int rc = galley_recipe_plan(config_of(config), &plan, &e);
    recipe_plugin_string_free(config);
    if (rc != 0) {
        exports_galley_plugin_recipe_list_stage_free(ret);
        ret->ptr = NULL;
        ret->len = 0;
        error_out(&e, err);
        return false;
    }
    return true;
}

bool exports_galley_plugin_recipe_on_metrics(recipe_plugin_string_t *stage, uint64_t step, exports_galley_plugin_recipe_list_metric_t *metrics, exports_galley_plugin_recipe_decision_t *ret, exports_galley_plugin_recipe_plugin_error_t *err) {
    galley_metric *ms = malloc((metrics->len ? metrics->len : 1) * sizeof *ms);
    for (size_t i = 0; i < metrics->len; i++) {
        ms[i].name = view(&metrics->ptr[i].name);
        ms[i].value = metrics->ptr[i].value;
    }
    memset(ret, 0, sizeof *ret);
    ret->tag = EXPORTS_GALLEY_PLUGIN_RECIPE_DECISION_PROCEED;
    galley_decision d = {ret};
    galley_error e = {GALLEY_ERR_FAILED, {0}};
    int rc = galley_recipe_on_metrics(view(stage), step, ms, metrics->len, &d, &e);
    free(ms);
    recipe_plugin_string_free(stage);
    exports_galley_plugin_recipe_list_metric_free(metrics);
    if (rc != 0) { error_out(&e, err); return false; }
    return true;
}
#endif
