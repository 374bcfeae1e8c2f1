/* csv_rows.c: the reference editing CSV (see csv_rows.h). */
#include "csv_rows.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

sd_status csv_read(const char *path, csv_table *out) {
    memset(out, 0, sizeof *out);
    char *text;
    size_t len;
    SD_TRY(sd_read_file(path, &text, &len));
    /* cells are unescaped in place into `storage` (never longer than the text) */
    out->storage = malloc(len + 1);
    char ***rows = NULL;
    int *lines = NULL, n_rows = 0, cap = 0;
    if (!out->storage) {
        free(text);
        return sd_fail(SD_ERR_OOM, "%s: out of memory", path);
    }
    char *w = out->storage;
    size_t i = 0;
    int line = 1;
    if (len >= 3 && (unsigned char)text[0] == 0xef && (unsigned char)text[1] == 0xbb && (unsigned char)text[2] == 0xbf)
        i = 3; /* UTF-8 byte-order mark */
    sd_status st = SD_OK;
    while (i < len && st == SD_OK) {
        char **cells = calloc(CSV_MAX_COLUMNS, sizeof *cells);
        if (!cells) {
            st = sd_fail(SD_ERR_OOM, "%s: out of memory", path);
            break;
        }
        const int row_line = line;
        int n = 0;
        for (;;) {
            if (n == CSV_MAX_COLUMNS) {
                st = sd_fail(SD_ERR_FORMAT, "%s:%d: more than %d columns", path, row_line, CSV_MAX_COLUMNS);
                break;
            }
            cells[n++] = w;
            if (i < len && text[i] == '"') {
                const int quote_line = line;
                i++;
                for (;;) {
                    if (i >= len) {
                        st = sd_fail(SD_ERR_FORMAT, "%s:%d: unterminated quoted cell", path, quote_line);
                        break;
                    }
                    if (text[i] == '"') {
                        if (i + 1 < len && text[i + 1] == '"') {
                            *w++ = '"';
                            i += 2;
                            continue;
                        }
                        i++;
                        break;
                    }
                    if (text[i] == '\n') line++;
                    *w++ = text[i++];
                }
                if (st) break;
            }
            while (i < len && text[i] != ',' && text[i] != '\n' && text[i] != '\r') *w++ = text[i++];
            *w++ = '\0';
            if (i < len && text[i] == ',') {
                i++;
                continue;
            }
            if (i < len && text[i] == '\r') i++;
            if (i < len && text[i] == '\n') {
                i++;
                line++;
            }
            break;
        }
        if (st) {
            free(cells);
            break;
        }
        if (n == 1 && cells[0][0] == '\0') { /* blank line */
            free(cells);
            continue;
        }
        if (n_rows == cap) {
            cap = cap ? 2 * cap : 16;
            char ***r = realloc(rows, (size_t)cap * sizeof *rows);
            int *l = realloc(lines, (size_t)cap * sizeof *lines);
            if (!r || !l) {
                free(r ? r : rows);
                free(l ? l : lines);
                rows = NULL;
                lines = NULL;
                free(cells);
                st = sd_fail(SD_ERR_OOM, "%s: out of memory", path);
                break;
            }
            rows = r;
            lines = l;
        }
        rows[n_rows] = cells;
        lines[n_rows++] = row_line;
    }
    free(text);
    if (!st && n_rows == 0) st = sd_fail(SD_ERR_FORMAT, "%s: empty file (expected a header row)", path);
    if (st) {
        for (int r = 0; r < n_rows; r++) free(rows[r]);
        free(rows);
        free(lines);
        free(out->storage);
        memset(out, 0, sizeof *out);
        return st;
    }
    out->header = rows[0];
    for (out->n_columns = 0; out->n_columns < CSV_MAX_COLUMNS && rows[0][out->n_columns]; out->n_columns++) {
    }
    out->cells = rows + 1;
    out->line = lines + 1;
    out->n_rows = n_rows - 1;
    return SD_OK;
}

void csv_free(csv_table *t) {
    if (!t->cells) return;
    free(t->header);
    for (int r = 0; r < t->n_rows; r++) free(t->cells[r]);
    free(t->cells - 1);
    free(t->line - 1);
    free(t->storage);
    memset(t, 0, sizeof *t);
}

const char *csv_cell(const csv_table *t, int row, const char *name) {
    for (int c = 0; c < t->n_columns; c++)
        if (!strcmp(t->header[c], name)) return t->cells[row][c];
    return NULL;
}

/* ------------------------------------------------------------------------------------------------
 * Python literals: nested lists/tuples of quoted strings and numbers, flattened per group:
 * "[('cat',),('tiger',)]" -> groups {cat} {tiger}; "[.5,]" -> one group {.5}.
 * --------------------------------------------------------------------------------------------- */

#define LIT_MAX_GROUPS 4

typedef struct {
    const char *items[LIT_MAX_GROUPS][CSV_MAX_WORDS];
    int n_items[LIT_MAX_GROUPS];
    int n_groups;
} literal;

/* Parses into groups (the second nesting level; a flat list is one group). Strings are unquoted
 * into `store`. Returns 0 on success, -1 on a syntax error. */
static int parse_literal(const char *s, char *store, size_t cap, literal *out) {
    memset(out, 0, sizeof *out);
    size_t used = 0;
    int depth = 0, group = -1;
    for (const char *p = s; *p; p++) {
        if (*p == ' ' || *p == '\t') continue;
        if (*p == '[' || *p == '(') {
            depth++;
            if (depth == 2) {
                if (out->n_groups == LIT_MAX_GROUPS) return -1;
                group = out->n_groups++;
            }
            continue;
        }
        if (*p == ']' || *p == ')') {
            if (--depth < 0) return -1;
            if (depth < 2) group = -1;
            continue;
        }
        if (*p == ',') continue;
        /* an item: quoted string or bare number */
        if (depth == 0) return -1;
        const int g = group >= 0 ? group : (out->n_groups ? out->n_groups - 1 : (out->n_groups = 1) - 1);
        if (out->n_items[g] == CSV_MAX_WORDS) return -1;
        const char *start, *end;
        if (*p == '\'' || *p == '"') {
            const char q = *p;
            start = p + 1;
            end = strchr(start, q);
            if (!end) return -1;
            p = end;
        } else {
            start = p;
            while (p[1] && !strchr(",)] \t", p[1])) p++;
            end = p + 1;
        }
        const size_t n = (size_t)(end - start);
        if (used + n + 1 > cap) return -1;
        memcpy(store + used, start, n);
        store[used + n] = '\0';
        out->items[g][out->n_items[g]++] = store + used;
        used += n + 1;
    }
    return depth == 0 ? 0 : -1;
}

static sd_status bad_cell(const char *path, int line, const char *column, const char *value, const char *expected) {
    return sd_fail(SD_ERR_FORMAT, "%s:%d: column '%s' = \"%s\": expected %s", path, line, column,
                   value ? value : "", expected);
}

static sd_status decode_tau(const csv_table *t, int row, const char *path, const char *column, double *out) {
    const char *v = csv_cell(t, row, column);
    *out = NAN;
    if (!v || !*v) return SD_OK; /* absent: the method's default */
    literal lit;
    char store[128];
    const char *number = v;
    if (strchr(v, '[') || strchr(v, '(')) {
        if (parse_literal(v, store, sizeof store, &lit) || lit.n_groups != 1 || lit.n_items[0] < 1)
            return bad_cell(path, t->line[row], column, v, "a number or a one-element list like [.5,]");
        number = lit.items[0][0];
    }
    char *end;
    *out = strtod(number, &end);
    if (*end || !(*out >= 0.0 && *out <= 1.0)) return bad_cell(path, t->line[row], column, v, "a number in [0, 1]");
    return SD_OK;
}

sd_status csv_edit_decode(const csv_table *t, int row, const char *path, csv_edit *out) {
    memset(out, 0, sizeof *out);
    const int line = t->line[row];
    const char *required[] = {"case_number", "prompt", "image_path", "target"};
    for (size_t k = 0; k < sizeof required / sizeof required[0]; k++) {
        const char *v = csv_cell(t, row, required[k]);
        if (!v || !*v)
            return sd_fail(SD_ERR_FORMAT, "%s:%d: missing column '%s'", path, line, required[k]);
    }
    char *end;
    const char *num = csv_cell(t, row, "case_number");
    out->case_number = strtol(num, &end, 10);
    if (*end || out->case_number < 0) return bad_cell(path, line, "case_number", num, "a non-negative integer");
    out->prompt = csv_cell(t, row, "prompt");
    out->image_path = csv_cell(t, row, "image_path");
    out->target = csv_cell(t, row, "target");
    const char *type = csv_cell(t, row, "edit_type");
    if (!type || !*type || !strcmp(type, "Replacement")) out->refine = 0;
    else if (!strcmp(type, "Refinement")) out->refine = 1;
    else return bad_cell(path, line, "edit_type", type, "Replacement or Refinement");

    size_t used = 0;
    const char *blend = csv_cell(t, row, "blend_word");
    if (blend && *blend && strcmp(blend, "None") && strcmp(blend, "nan")) {
        literal lit;
        if (parse_literal(blend, out->literal_storage, sizeof out->literal_storage / 2, &lit) || lit.n_groups != 2)
            return bad_cell(path, line, "blend_word", blend, "[('source word',), ('target word',)]");
        for (int g = 0; g < 2; g++) {
            out->n_blend[g] = lit.n_items[g];
            for (int k = 0; k < lit.n_items[g]; k++) out->blend[g][k] = lit.items[g][k];
        }
        used = sizeof out->literal_storage / 2;
    }
    const char *eq = csv_cell(t, row, "eq_params");
    if (eq && *eq && strcmp(eq, "None") && strcmp(eq, "nan")) {
        literal lit;
        if (parse_literal(eq, out->literal_storage + used, sizeof out->literal_storage - used, &lit) ||
            lit.n_groups != 2 || lit.n_items[0] != lit.n_items[1])
            return bad_cell(path, line, "eq_params", eq, "[('word', ...), (value, ...)] with as many values as words");
        out->n_eq = lit.n_items[0];
        for (int k = 0; k < out->n_eq; k++) {
            out->eq_words[k] = lit.items[0][k];
            out->eq_values[k] = strtod(lit.items[1][k], &end);
            if (*end) return bad_cell(path, line, "eq_params", eq, "numbers as the reweighting values");
        }
    }
    SD_TRY(decode_tau(t, row, path, "tau_v", &out->tau_v));
    SD_TRY(decode_tau(t, row, path, "tau_c", &out->tau_c));
    SD_TRY(decode_tau(t, row, path, "tau_s", &out->tau_s));
    return decode_tau(t, row, path, "tau_u", &out->tau_u);
}
