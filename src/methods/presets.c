/* presets.c: method presets (see presets.h). */
#include "sd/presets.h"
#include "sd/json_util.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

void sd_method_preset_default(sd_invert_method method, sd_method_preset *p) {
    memset(p, 0, sizeof *p);
    sd_invert_options_default(method, &p->invert);
    if (method == SD_INVERT_STYLEDIFFUSION) {
        /* stylediffusion.py argparse defaults */
        p->tau_v = 0.6f;
        p->tau_c = 0.6f;
        p->tau_s = 0.8f;
        p->tau_u = 0.5f;
    } else {
        /* the Null-text notebook's word-swap example */
        p->tau_v = 0.0f;
        p->tau_c = 0.8f;
        p->tau_s = 0.5f;
        p->tau_u = 0.0f;
    }
}

typedef struct {
    const char *key;
    enum { KEY_INT, KEY_FLOAT, KEY_DOUBLE, KEY_BOOL, KEY_SEED } type;
    size_t offset;
    double lo, hi;
} preset_key;

#define FIELD(f) offsetof(sd_method_preset, f)
static const preset_key keys[] = {
    {"steps", KEY_INT, FIELD(invert.n_steps), 1, 1000},
    {"guidance", KEY_FLOAT, FIELD(invert.guidance), 0, 100},
    {"inner_steps", KEY_INT, FIELD(invert.inner_steps), 0, 100000},
    {"early_stop", KEY_DOUBLE, FIELD(invert.early_stop), 0, 1e9},
    {"lr", KEY_DOUBLE, FIELD(invert.lr), 0, 10},
    {"attention_loss", KEY_BOOL, FIELD(invert.attention_loss), 0, 1},
    {"seed", KEY_SEED, FIELD(invert.seed), 0, 9007199254740991.0},
    {"tau_v", KEY_FLOAT, FIELD(tau_v), 0, 1},
    {"tau_c", KEY_FLOAT, FIELD(tau_c), 0, 1},
    {"tau_s", KEY_FLOAT, FIELD(tau_s), 0, 1},
    {"tau_u", KEY_FLOAT, FIELD(tau_u), 0, 1},
};

sd_status sd_method_preset_load(const char *path, sd_method_preset *p) {
    char *text;
    size_t len;
    SD_TRY(sd_read_file(path, &text, &len));
    cJSON *doc = NULL;
    sd_status parsed = sd_json_parse_object(text, path, &doc);
    free(text);
    if (parsed != SD_OK) return parsed;
    sd_status st = SD_OK;
    const cJSON *item;
    cJSON_ArrayForEach(item, doc) {
        if (item->string[0] == '_') continue;
        const preset_key *k = NULL;
        for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++)
            if (!strcmp(keys[i].key, item->string)) k = &keys[i];
        if (!k) {
            st = sd_fail(SD_ERR_FORMAT, "%s: unknown key \"%s\"", path, item->string);
            break;
        }
        char *field = (char *)p + k->offset;
        if (k->type == KEY_BOOL) {
            if (!cJSON_IsBool(item)) {
                st = sd_fail(SD_ERR_FORMAT, "%s: key \"%s\" must be true or false", path, k->key);
                break;
            }
            *(int *)field = cJSON_IsTrue(item);
            continue;
        }
        const double v = item->valuedouble;
        if (!cJSON_IsNumber(item) || !isfinite(v) || v < k->lo || v > k->hi ||
            ((k->type == KEY_INT || k->type == KEY_SEED) && v != floor(v))) {
            st = sd_fail(SD_ERR_FORMAT, "%s: key \"%s\" must be %s in [%g, %g]", path, k->key,
                         k->type == KEY_INT || k->type == KEY_SEED ? "an integer" : "a number", k->lo, k->hi);
            break;
        }
        if (k->type == KEY_INT) *(int *)field = (int)v;
        else if (k->type == KEY_SEED) *(uint64_t *)field = (uint64_t)v;
        else if (k->type == KEY_DOUBLE) *(double *)field = v;
        else *(float *)field = (float)v;
    }
    cJSON_Delete(doc);
    return st;
}
