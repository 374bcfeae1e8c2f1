/* workers.h: the worker processes behind `--devices LIST` (stylediff batch, stylediff eval): one
 * process per device, each a fork + exec of this same binary (/proc/self/exe) running the parent's
 * subcommand and arguments plus --shard K/N --device DEV. Processes, not threads: the backend keeps
 * its device state per process, and a worker that dies of a GPU error or of OOM must not take the
 * others down. The parent waits for them all, passing SIGINT/SIGTERM on, and records how each ended
 * in its batch_worker (batch_shard.h); what the workers computed (their report parts) is the
 * subcommand's business. */
#ifndef SD_CLI_WORKERS_H
#define SD_CLI_WORKERS_H

#include "batch_shard.h"

/* Fails, naming the entry ("--devices: cuda:3: ..."), when a device of the list cannot be used
 * here: a GPU this build or machine lacks fails once in the parent rather than in every worker. */
sd_status workers_check_devices(const batch_devices *devices);

/* Starts worker k for every k with workers[k].rows_assigned > 0, as
 *   stylediff COMMAND --shard k/n_workers --device workers[k].device argv[1] .. argv[argc-1]
 * (argv: the parent's arguments, argv[0] being the subcommand) with its output appended to
 * workers[k].log_path; when several workers share the CPU each gets its part of the cores (unless
 * OMP_NUM_THREADS says otherwise). Then waits for all of them; a SIGINT or SIGTERM to the parent
 * meanwhile is passed on to the workers still running (and keeps the ones not yet started from
 * starting). Fills launched, launch_error, exited, exit_status, signal and last_log_line; prints
 * how each worker ended unless quiet. The caller's signal handlers are restored on return. */
void workers_run(const char *command, int argc, char **argv, batch_worker *workers, int n_workers, int quiet);

/* After the merge: prints one line per failed worker ("stylediff COMMAND: worker K (DEV) ... (its
 * log ends: "..."); see LOG") and frees every worker's parsed report part. */
void workers_report_and_release(const char *command, batch_worker *workers, int n_workers);

/* The role a --devices command runs in, from its options: a worker (--shard K/N, set by the
 * parent: *shard = K, *n_shards = N), the parent (--devices LIST: the devices, *n_shards their
 * count) or alone (*n_shards = 1). --device together with --devices is refused, naming both. */
sd_status workers_parse_role(const char *shard_spec, const char *devices_spec, const char *device,
                             batch_devices *devices, int *shard, int *n_shards);

#endif
