/* batch_shard.h: the logic behind `stylediff batch --devices LIST` and `--resume`, kept free of
 * models and processes so the unit tests can check it alone (tests/unit/test_batch_shard.c):
 *   - parsing --devices and the workers' internal --shard K/N;
 *   - splitting the CSV's rows into shards: rows that share an image and prompt share an inversion,
 *     so they go to the same worker (groups assigned greedily, largest first, to balance rows);
 *   - finding rows an earlier run recorded as done (--resume);
 *   - merging the workers' report parts into one report, in CSV order.
 * workers.c starts the processes (for batch and eval); cmd_batch.c runs the rows. */
#ifndef SD_CLI_BATCH_SHARD_H
#define SD_CLI_BATCH_SHARD_H

#include "sd/core.h"

struct cJSON;

#define BATCH_MAX_WORKERS 64
#define BATCH_DEVICE_LEN 16

/* Row statuses, as the reports write them. */
#define BATCH_DONE "done"
#define BATCH_FAILED "failed"
#define BATCH_SKIPPED "skipped"
#define BATCH_NOT_RUN "not run"

typedef struct batch_devices {
    int n;
    char name[BATCH_MAX_WORKERS][BATCH_DEVICE_LEN]; /* canonical: "cpu" or "cuda:N" */
} batch_devices;

/* --devices: a comma-separated list of cpu | cuda | cuda:N (a device may repeat: each entry is one
 * worker process), or "all" = cuda:0 .. cuda:(count-1) with count = count_cuda_devices(), called
 * only for "all". Fails (SD_ERR_ARG) naming the bad entry; "all" fails when no CUDA device is
 * visible, giving the reason the counter left as the last error. */
sd_status batch_parse_devices(const char *spec, int (*count_cuda_devices)(void), batch_devices *out);

/* --shard K/N: worker K (0-based) of N. */
sd_status batch_parse_shard(const char *spec, int *index, int *count);

/* Groups rows by key (rows with equal keys share an inversion); a NULL key leaves the row out
 * (group -1). Groups are numbered in order of their first row. Returns the number of groups. */
int batch_group_rows(int n_rows, const char *const *keys, int *group_of_row);

/* Assigns groups to n_shards: largest group first (ties: earlier group first), each to the shard
 * with the fewest rows so far (ties: lowest shard), the classic greedy balance. */
void batch_assign_groups(int n_groups, const int *rows_in_group, int n_shards, int *shard_of_group);

/* Both steps: shard_of_row[r] in [0, n_shards), or -1 for rows whose key is NULL. Every process
 * computes the same plan from the same CSV, so the parent and its workers agree on it.
 * Fails only when out of memory. */
sd_status batch_plan_shards(int n_rows, const char *const *keys, int n_shards, int *shard_of_row);

/* --resume: the row entries that DIR/batch_report.json and every DIR/batch_report.part-*.json
 * record as done (status "done", or "skipped" because done earlier) in a report whose "run_key"
 * equals run_key (same method and settings). A new cJSON array (empty when nothing is found);
 * unreadable or malformed reports are passed over with a warning: they vouch for nothing. */
struct cJSON *batch_load_done(const char *out_dir, const char *run_key);

/* Removes every DIR/batch_report.part-*.json: the parts of an earlier run, whose rows are either
 * in DIR/batch_report.json already or about to run again. Fails naming a part it cannot remove. */
sd_status batch_remove_parts(const char *out_dir);

/* The earlier entry of the row whose "row_hash" is row_hash, provided its edit PNG still exists;
 * NULL otherwise (the row must run again). */
const struct cJSON *batch_find_done(const struct cJSON *done, const char *row_hash);

/* What the parent knows about one worker process once it is over. */
typedef struct batch_worker {
    char device[BATCH_DEVICE_LEN];
    char log_path[4200];
    int rows_assigned;
    int launched;         /* 0: no rows were assigned to it, or it could not be started */
    char launch_error[512];
    int exited;           /* 1: exited with exit_status; 0: killed by `signal` */
    int exit_status, signal;
    struct cJSON *part;   /* its parsed report part; NULL when it wrote none or it is unreadable */
    char last_log_line[512];
} batch_worker;

/* Whether a worker that had rows failed: it was not started, was killed, or exited without marking
 * its part "finished". `why` (may be NULL) receives the reason in a few words ("was killed by
 * signal 9 (Killed)"), for its report entry and for the rows it left. */
int batch_worker_failed(const batch_worker *w, char *why, size_t n);

typedef struct batch_totals {
    int done, failed, skipped, not_run, workers_failed;
} batch_totals;

/* Adds "workers" (one entry per worker: device, exit status or signal, rows) and "rows" to
 * `report`: for each row r with shard_of_row[r] >= 0, in CSV order, the entry its worker's part
 * holds for it (matched by "row"), or a copy of row_placeholders[r] marked "not run" with the reason
 * (the worker crashed, was killed, or never reported it). Every row gets "worker" and "device".
 * Workers are judged by batch_worker_failed. */
void batch_merge(struct cJSON *report, int n_rows, const int *shard_of_row, struct cJSON *const *row_placeholders,
                 const batch_worker *workers, int n_workers, batch_totals *totals);

#endif
