/* batch_shard.c: devices, shards, resume records and report merging for `stylediff batch` (see
 * batch_shard.h). No model, no process: what is here is checked by tests/unit/test_batch_shard.c. */
#include "batch_shard.h"

#include <cjson/cJSON.h>
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sd/device.h"

sd_status batch_parse_devices(const char *spec, int (*count_cuda_devices)(void), batch_devices *out) {
    memset(out, 0, sizeof *out);
    if (!spec || !*spec)
        return sd_fail(SD_ERR_ARG, "--devices is empty: give a list such as cuda:0,cuda:1, or all");
    if (!strcmp(spec, "all")) {
        sd_clear_error();
        const int n = count_cuda_devices ? count_cuda_devices() : 0;
        if (n <= 0) {
            char reason[512];
            snprintf(reason, sizeof reason, "%s", sd_last_error()[0] ? sd_last_error() : "the CUDA runtime reports 0 devices");
            return sd_fail(SD_ERR_DEVICE, "--devices all: no CUDA device is visible (%s); list the devices instead, "
                                          "e.g. --devices cpu", reason);
        }
        if (n > BATCH_MAX_WORKERS)
            sd_warn("--devices all: %d CUDA devices visible; using the first %d", n, BATCH_MAX_WORKERS);
        out->n = n > BATCH_MAX_WORKERS ? BATCH_MAX_WORKERS : n;
        for (int k = 0; k < out->n; k++) snprintf(out->name[k], BATCH_DEVICE_LEN, "cuda:%d", k);
        return SD_OK;
    }
    const char *p = spec;
    for (int entry = 1;; entry++) {
        const char *comma = strchr(p, ',');
        size_t len = comma ? (size_t)(comma - p) : strlen(p);
        while (len && isspace((unsigned char)*p)) p++, len--;
        while (len && isspace((unsigned char)p[len - 1])) len--;
        char item[64];
        if (len == 0 || len >= sizeof item)
            return sd_fail(SD_ERR_ARG, "--devices '%s': entry %d is %s: expected a comma-separated list of cpu, cuda "
                                       "or cuda:N, or all", spec, entry, len ? "too long" : "empty");
        memcpy(item, p, len);
        item[len] = '\0';
        int device = SD_DEVICE_AUTO;
        if (!strcmp(item, "all"))
            return sd_fail(SD_ERR_ARG, "--devices '%s': 'all' stands alone (every visible CUDA device); it cannot be "
                                       "mixed with other entries", spec);
        if (sd_device_parse(item, &device) != SD_OK || device == SD_DEVICE_AUTO)
            return sd_fail(SD_ERR_ARG, "--devices '%s': entry %d '%s' is not a device: expected cpu, cuda or cuda:N",
                           spec, entry, item);
        if (out->n == BATCH_MAX_WORKERS)
            return sd_fail(SD_ERR_ARG, "--devices '%s': more than %d entries (one worker process each)", spec,
                           BATCH_MAX_WORKERS);
        if (device == SD_DEVICE_CPU)
            snprintf(out->name[out->n++], BATCH_DEVICE_LEN, "cpu");
        else
            snprintf(out->name[out->n++], BATCH_DEVICE_LEN, "cuda:%d", device);
        if (!comma) break;
        p = comma + 1;
    }
    return SD_OK;
}

sd_status batch_parse_shard(const char *spec, int *index, int *count) {
    char *end = NULL;
    const long k = spec ? strtol(spec, &end, 10) : -1;
    if (spec && end != spec && *end == '/') {
        const char *rest = end + 1;
        const long n = strtol(rest, &end, 10);
        if (end != rest && *end == '\0' && n >= 1 && n <= BATCH_MAX_WORKERS && k >= 0 && k < n) {
            *index = (int)k;
            *count = (int)n;
            return SD_OK;
        }
    }
    return sd_fail(SD_ERR_ARG, "--shard '%s': expected K/N with 0 <= K < N <= %d (set by --devices; not meant "
                               "to be given by hand)", spec ? spec : "(null)", BATCH_MAX_WORKERS);
}

int batch_group_rows(int n_rows, const char *const *keys, int *group_of_row) {
    /* Rows are compared with the first row of each group so far: a CSV has hundreds or thousands
     * of rows, so this quadratic walk costs nothing next to one UNet call. */
    int n_groups = 0;
    int *first_row = malloc(sizeof *first_row * (size_t)(n_rows > 0 ? n_rows : 1));
    for (int r = 0; r < n_rows; r++) {
        group_of_row[r] = -1;
        if (!keys[r]) continue;
        for (int g = 0; g < n_groups && group_of_row[r] < 0; g++)
            if (!strcmp(keys[first_row[g]], keys[r])) group_of_row[r] = g;
        if (group_of_row[r] < 0) {
            first_row[n_groups] = r;
            group_of_row[r] = n_groups++;
        }
    }
    free(first_row);
    return n_groups;
}

typedef struct {
    int rows, group;
} group_size;

static int larger_group_first(const void *a, const void *b) {
    const group_size *x = a, *y = b;
    if (x->rows != y->rows) return x->rows > y->rows ? -1 : 1;
    return x->group - y->group; /* stable: the plan must be the same in every process */
}

void batch_assign_groups(int n_groups, const int *rows_in_group, int n_shards, int *shard_of_group) {
    group_size *order = malloc(sizeof *order * (size_t)(n_groups > 0 ? n_groups : 1));
    int *load = calloc((size_t)n_shards, sizeof *load);
    for (int g = 0; g < n_groups; g++) order[g] = (group_size){rows_in_group[g], g};
    qsort(order, (size_t)n_groups, sizeof *order, larger_group_first);
    for (int i = 0; i < n_groups; i++) {
        int lightest = 0;
        for (int s = 1; s < n_shards; s++)
            if (load[s] < load[lightest]) lightest = s;
        shard_of_group[order[i].group] = lightest;
        load[lightest] += order[i].rows;
    }
    free(load);
    free(order);
}

sd_status batch_plan_shards(int n_rows, const char *const *keys, int n_shards, int *shard_of_row) {
    int *group_of_row = malloc(sizeof *group_of_row * (size_t)(n_rows > 0 ? n_rows : 1));
    int *rows_in_group = calloc((size_t)(n_rows > 0 ? n_rows : 1), sizeof *rows_in_group);
    int *shard_of_group = malloc(sizeof *shard_of_group * (size_t)(n_rows > 0 ? n_rows : 1));
    if (!group_of_row || !rows_in_group || !shard_of_group) {
        free(group_of_row);
        free(rows_in_group);
        free(shard_of_group);
        return sd_fail(SD_ERR_OOM, "out of memory planning the shards of %d rows", n_rows);
    }
    const int n_groups = batch_group_rows(n_rows, keys, group_of_row);
    for (int r = 0; r < n_rows; r++)
        if (group_of_row[r] >= 0) rows_in_group[group_of_row[r]]++;
    batch_assign_groups(n_groups, rows_in_group, n_shards, shard_of_group);
    for (int r = 0; r < n_rows; r++) shard_of_row[r] = group_of_row[r] >= 0 ? shard_of_group[group_of_row[r]] : -1;
    free(group_of_row);
    free(rows_in_group);
    free(shard_of_group);
    return SD_OK;
}

/* "batch_report.part-K.json", not the "<name>.tmp.<pid>" files atomic writes pass through. */
static int is_part_name(const char *name) {
    static const char prefix[] = "batch_report.part-", suffix[] = ".json";
    const size_t n = strlen(name);
    return !strncmp(name, prefix, sizeof prefix - 1) && n > sizeof prefix - 1 + sizeof suffix - 1 &&
           !strcmp(name + n - (sizeof suffix - 1), suffix);
}

static void add_done_rows(const char *path, const char *run_key, cJSON *done) {
    char *text = NULL;
    size_t len = 0;
    if (!sd_file_exists(path)) return;
    if (sd_read_file(path, &text, &len) != SD_OK) {
        sd_warn("%s: unreadable (%s); --resume ignores it", path, sd_last_error());
        sd_clear_error();
        return;
    }
    cJSON *doc = cJSON_Parse(text);
    free(text);
    const cJSON *rows = doc ? cJSON_GetObjectItemCaseSensitive(doc, "rows") : NULL;
    if (!cJSON_IsArray(rows)) {
        sd_warn("%s: not a batch report; --resume ignores it", path);
        cJSON_Delete(doc);
        return;
    }
    const char *key = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(doc, "run_key"));
    if (key && !strcmp(key, run_key)) {
        const cJSON *row;
        cJSON_ArrayForEach(row, rows) {
            const char *status = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(row, "status"));
            if (status && (!strcmp(status, BATCH_DONE) || !strcmp(status, BATCH_SKIPPED)))
                cJSON_AddItemToArray(done, cJSON_Duplicate(row, 1));
        }
    }
    cJSON_Delete(doc);
}

cJSON *batch_load_done(const char *out_dir, const char *run_key) {
    cJSON *done = cJSON_CreateArray();
    char path[4400];
    snprintf(path, sizeof path, "%s/batch_report.json", out_dir);
    add_done_rows(path, run_key, done);
    DIR *dir = opendir(out_dir);
    if (!dir) return done; /* no folder yet: nothing was done */
    for (struct dirent *d; (d = readdir(dir));) {
        if (!is_part_name(d->d_name)) continue;
        snprintf(path, sizeof path, "%s/%s", out_dir, d->d_name);
        add_done_rows(path, run_key, done);
    }
    closedir(dir);
    return done;
}

sd_status batch_remove_parts(const char *out_dir) {
    DIR *dir = opendir(out_dir);
    if (!dir) return SD_OK;
    sd_status st = SD_OK;
    char path[4400];
    for (struct dirent *d; (d = readdir(dir)) && !st;) {
        if (!is_part_name(d->d_name)) continue;
        snprintf(path, sizeof path, "%s/%s", out_dir, d->d_name);
        if (remove(path) != 0 && errno != ENOENT)
            st = sd_fail(SD_ERR_IO, "%s: cannot remove the report part of an earlier run: %s", path, strerror(errno));
    }
    closedir(dir);
    return st;
}

const cJSON *batch_find_done(const cJSON *done, const char *row_hash) {
    const cJSON *row;
    cJSON_ArrayForEach(row, done) {
        const char *hash = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(row, "row_hash"));
        const char *edit = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(row, "edit"));
        if (hash && edit && !strcmp(hash, row_hash) && sd_file_exists(edit)) return row;
    }
    return NULL;
}

static int worker_finished(const batch_worker *w) {
    return w->launched && w->exited && w->part && cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(w->part, "finished"));
}

int batch_worker_failed(const batch_worker *w, char *why, size_t n) {
    if (why && n) why[0] = '\0';
    if (!w->rows_assigned || worker_finished(w)) return 0;
    if (!why || !n)
        ;
    else if (!w->launched)
        snprintf(why, n, "could not be started (%s)", w->launch_error);
    else if (!w->exited)
        snprintf(why, n, "was killed by signal %d (%s)", w->signal, strsignal(w->signal));
    else if (!w->part)
        snprintf(why, n, "exited with status %d without writing its report part", w->exit_status);
    else
        snprintf(why, n, "exited with status %d before finishing its rows", w->exit_status);
    return 1;
}

static const cJSON *part_row(const cJSON *part, int row) {
    const cJSON *rows = part ? cJSON_GetObjectItemCaseSensitive(part, "rows") : NULL, *e;
    cJSON_ArrayForEach(e, rows) {
        const cJSON *r = cJSON_GetObjectItemCaseSensitive(e, "row");
        if (cJSON_IsNumber(r) && r->valueint == row) return e;
    }
    return NULL;
}

static void set_string(cJSON *obj, const char *key, const char *value) {
    cJSON_DeleteItemFromObjectCaseSensitive(obj, key);
    cJSON_AddStringToObject(obj, key, value);
}

static void set_number(cJSON *obj, const char *key, double value) {
    cJSON_DeleteItemFromObjectCaseSensitive(obj, key);
    cJSON_AddNumberToObject(obj, key, value);
}

void batch_merge(cJSON *report, int n_rows, const int *shard_of_row, cJSON *const *row_placeholders,
                 const batch_worker *workers, int n_workers, batch_totals *totals) {
    memset(totals, 0, sizeof *totals);
    cJSON *workers_json = cJSON_AddArrayToObject(report, "workers");
    for (int k = 0; k < n_workers; k++) {
        const batch_worker *w = &workers[k];
        cJSON *e = cJSON_CreateObject();
        cJSON_AddNumberToObject(e, "worker", k);
        cJSON_AddStringToObject(e, "device", w->device);
        const char *where = w->part ? cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(w->part, "device")) : NULL;
        if (where) cJSON_AddStringToObject(e, "device_description", where);
        cJSON_AddNumberToObject(e, "rows_assigned", w->rows_assigned);
        if (w->log_path[0]) cJSON_AddStringToObject(e, "log", w->log_path);
        if (w->launched && w->exited) cJSON_AddNumberToObject(e, "exit_status", w->exit_status);
        if (w->launched && !w->exited) {
            cJSON_AddNumberToObject(e, "signal", w->signal);
            cJSON_AddStringToObject(e, "signal_name", strsignal(w->signal));
        }
        char why[1024];
        if (!w->rows_assigned) {
            cJSON_AddStringToObject(e, "status", "idle (no rows: fewer image+prompt groups than devices)");
        } else if (!batch_worker_failed(w, why, sizeof why)) {
            cJSON_AddStringToObject(e, "status", "finished");
        } else {
            cJSON_AddStringToObject(e, "status", BATCH_FAILED);
            cJSON_AddStringToObject(e, "error", why);
            totals->workers_failed++;
        }
        if (w->last_log_line[0]) cJSON_AddStringToObject(e, "last_log_line", w->last_log_line);
        cJSON_AddItemToArray(workers_json, e);
    }

    cJSON *rows_json = cJSON_AddArrayToObject(report, "rows");
    for (int r = 0; r < n_rows; r++) {
        const int k = shard_of_row[r];
        if (k < 0 || k >= n_workers) continue;
        const batch_worker *w = &workers[k];
        const cJSON *reported = part_row(w->part, r);
        cJSON *entry = cJSON_Duplicate(reported ? reported : row_placeholders[r], 1);
        if (!entry) continue;
        if (!reported) {
            char why[2048];
            char failure[1024];
            if (!batch_worker_failed(w, failure, sizeof failure)) {
                snprintf(why, sizeof why, "worker %d (%s) finished without reporting this row (did the CSV change "
                                          "during the run?)", k, w->device);
            } else {
                snprintf(why, sizeof why, "worker %d (%s) %s before finishing this row%s%s%s; see %s", k, w->device,
                         failure, w->last_log_line[0] ? " (its log ends: \"" : "", w->last_log_line,
                         w->last_log_line[0] ? "\")" : "", w->log_path);
            }
            set_string(entry, "status", BATCH_NOT_RUN);
            set_string(entry, "error", why);
        }
        set_number(entry, "worker", k);
        set_string(entry, "device", w->device);
        const char *status = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(entry, "status"));
        if (!status || !strcmp(status, BATCH_FAILED))
            totals->failed++;
        else if (!strcmp(status, BATCH_DONE))
            totals->done++;
        else if (!strcmp(status, BATCH_SKIPPED))
            totals->skipped++;
        else
            totals->not_run++;
        cJSON_AddItemToArray(rows_json, entry);
    }
}
