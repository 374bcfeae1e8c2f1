/* workers.c: starting, signalling and waiting for the worker processes of --devices (see
 * workers.h). */
#include "workers.h"

#include <cjson/cJSON.h>

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "sd/device.h"

extern char **environ;

sd_status workers_check_devices(const batch_devices *devices) {
    for (int k = 0; k < devices->n; k++) {
        int ordinal = SD_DEVICE_CPU;
        sd_status st = sd_device_parse(devices->name[k], &ordinal);
        if (!st && ordinal >= 0) st = sd_cuda_check_device(ordinal);
        if (st) return sd_fail_context(st, "--devices: %s: ", devices->name[k]);
    }
    return SD_OK;
}

static volatile sig_atomic_t stop_signal = 0;
static void remember_signal(int sig) { stop_signal = sig; }

/* The last non-empty line of a worker's log: usually the message it died with. */
static void last_log_line(const char *path, char *out, size_t n) {
    out[0] = '\0';
    char *text = NULL;
    size_t len = 0;
    if (sd_read_file(path, &text, &len) != SD_OK) {
        sd_clear_error();
        return;
    }
    while (len && (text[len - 1] == '\n' || text[len - 1] == '\r' || text[len - 1] == ' ')) text[--len] = '\0';
    const char *start = text + len;
    while (start > text && start[-1] != '\n' && start[-1] != '\r') start--;
    snprintf(out, n, "%s", start);
    free(text);
}

/* The environment of the workers: when several share the CPU, each gets its part of the cores
 * (unless OMP_NUM_THREADS says otherwise), so they do not fight over every core. Built before fork:
 * the child may only call async-signal-safe functions. */
static char **worker_environment(int n_cpu_workers, char *omp, char *blas, size_t n) {
    size_t count = 0;
    while (environ[count]) count++;
    char **env = calloc(count + 3, sizeof *env);
    if (!env) return NULL;
    size_t k = 0;
    for (size_t i = 0; i < count; i++) env[k++] = environ[i];
    if (n_cpu_workers >= 2 && !getenv("OMP_NUM_THREADS")) {
        long cores = sysconf(_SC_NPROCESSORS_ONLN);
        long per_worker = cores > 0 ? cores / n_cpu_workers : 1;
        if (per_worker < 1) per_worker = 1;
        snprintf(omp, n, "OMP_NUM_THREADS=%ld", per_worker);
        env[k++] = omp;
        if (!getenv("OPENBLAS_NUM_THREADS")) {
            snprintf(blas, n, "OPENBLAS_NUM_THREADS=%ld", per_worker);
            env[k++] = blas;
        }
    }
    env[k] = NULL;
    return env;
}

/* Starts worker k: its output appended to its log, the arguments of this command plus
 * --shard k/N --device DEV put first (so a "--" among the user's arguments cannot swallow them). */
static void start_worker(const char *command, batch_worker *w, int k, int n_workers, int argc, char **argv,
                         char **env, pid_t *pid) {
    const int fd = open(w->log_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd < 0) {
        snprintf(w->launch_error, sizeof w->launch_error, "%s: cannot open the log: %s", w->log_path, strerror(errno));
        return;
    }
    char shard[32];
    snprintf(shard, sizeof shard, "%d/%d", k, n_workers);
    char **args = calloc((size_t)argc + 8, sizeof *args);
    if (!args) {
        snprintf(w->launch_error, sizeof w->launch_error, "out of memory");
        close(fd);
        return;
    }
    int a = 0;
    args[a++] = "stylediff";
    args[a++] = (char *)command;
    args[a++] = "--shard";
    args[a++] = shard;
    args[a++] = "--device";
    args[a++] = w->device;
    for (int i = 1; i < argc; i++) args[a++] = argv[i];
    args[a] = NULL;
    /* written before fork: the child may only call async-signal-safe functions */
    char exec_failed[128];
    const int exec_failed_len = snprintf(exec_failed, sizeof exec_failed,
                                         "stylediff %s: cannot start the worker: exec of /proc/self/exe failed\n",
                                         command);
    const time_t now = time(NULL);
    char when[64];
    strftime(when, sizeof when, "%Y-%m-%d %H:%M:%S", localtime(&now));
    dprintf(fd, "=== stylediff %s worker %d/%d on %s, %d rows, started %s ===\n", command, k, n_workers, w->device,
            w->rows_assigned, when);
    fflush(NULL); /* nothing buffered may be written twice, once by each process */
    *pid = fork();
    if (*pid == 0) {
        if (dup2(fd, STDOUT_FILENO) < 0 || dup2(fd, STDERR_FILENO) < 0) _exit(126);
        execve("/proc/self/exe", args, env);
        if (write(STDERR_FILENO, exec_failed, (size_t)exec_failed_len) < 0) _exit(127);
        _exit(127);
    }
    if (*pid < 0)
        snprintf(w->launch_error, sizeof w->launch_error, "fork failed: %s", strerror(errno));
    else
        w->launched = 1;
    free(args);
    close(fd);
}

/* Waits for every started worker; a SIGINT or SIGTERM to the parent is passed on to them, and the
 * parent still merges what they wrote. */
static void wait_for_workers(const char *command, batch_worker *workers, const pid_t *pids, int n_workers,
                             int quiet) {
    int running = 0, forwarded = 0;
    for (int k = 0; k < n_workers; k++) running += workers[k].launched;
    while (running > 0) {
        if (stop_signal && !forwarded) {
            fprintf(stderr, "stylediff %s: %s: stopping the workers; the report will keep what they finished\n",
                    command, strsignal(stop_signal));
            for (int k = 0; k < n_workers; k++)
                if (workers[k].launched && !workers[k].exited && !workers[k].signal) kill(pids[k], stop_signal);
            forwarded = 1;
        }
        int status = 0;
        const pid_t pid = waitpid(-1, &status, 0);
        if (pid < 0) {
            if (errno == EINTR) continue;
            break; /* ECHILD: nothing left to wait for */
        }
        for (int k = 0; k < n_workers; k++) {
            if (!workers[k].launched || pids[k] != pid) continue;
            batch_worker *w = &workers[k];
            w->exited = WIFEXITED(status);
            w->exit_status = w->exited ? WEXITSTATUS(status) : 0;
            w->signal = WIFSIGNALED(status) ? WTERMSIG(status) : 0;
            running--;
            if (!quiet) {
                if (w->exited)
                    printf("worker %d (%s) exited with status %d\n", k, w->device, w->exit_status);
                else
                    printf("worker %d (%s) was killed by signal %d (%s); see %s\n", k, w->device, w->signal,
                           strsignal(w->signal), w->log_path);
                fflush(stdout);
            }
        }
    }
}

void workers_run(const char *command, int argc, char **argv, batch_worker *workers, int n_workers, int quiet) {
    pid_t *pids = calloc((size_t)(n_workers > 0 ? n_workers : 1), sizeof *pids);
    int n_cpu_workers = 0;
    for (int k = 0; k < n_workers; k++)
        if (workers[k].rows_assigned && !strcmp(workers[k].device, "cpu")) n_cpu_workers++;
    char omp[64], blas[64];
    char **env = pids ? worker_environment(n_cpu_workers, omp, blas, sizeof omp) : NULL;
    struct sigaction on_stop = {0}, old_int, old_term;
    on_stop.sa_handler = remember_signal; /* no SA_RESTART: waitpid returns to pass the signal on */
    sigemptyset(&on_stop.sa_mask);
    sigaction(SIGINT, &on_stop, &old_int);
    sigaction(SIGTERM, &on_stop, &old_term);
    for (int k = 0; k < n_workers; k++) {
        batch_worker *w = &workers[k];
        if (!w->rows_assigned) continue;
        if (stop_signal)
            snprintf(w->launch_error, sizeof w->launch_error, "%s before it was started", strsignal(stop_signal));
        else if (!env)
            snprintf(w->launch_error, sizeof w->launch_error, "out of memory");
        else
            start_worker(command, w, k, n_workers, argc, argv, env, &pids[k]);
    }
    if (pids) wait_for_workers(command, workers, pids, n_workers, quiet);
    sigaction(SIGINT, &old_int, NULL);
    sigaction(SIGTERM, &old_term, NULL);
    free(env);
    free(pids);
    for (int k = 0; k < n_workers; k++)
        if (workers[k].launched) last_log_line(workers[k].log_path, workers[k].last_log_line, sizeof workers[k].last_log_line);
}

void workers_report_and_release(const char *command, batch_worker *workers, int n_workers) {
    for (int k = 0; k < n_workers; k++) {
        batch_worker *w = &workers[k];
        char why[1024];
        if (batch_worker_failed(w, why, sizeof why))
            fprintf(stderr, "stylediff %s: worker %d (%s) %s%s%s%s; see %s\n", command, k, w->device, why,
                    w->last_log_line[0] ? " (its log ends: \"" : "", w->last_log_line, w->last_log_line[0] ? "\")" : "",
                    w->log_path);
        cJSON_Delete(w->part);
        w->part = NULL;
    }
}

sd_status workers_parse_role(const char *shard_spec, const char *devices_spec, const char *device,
                             batch_devices *devices, int *shard, int *n_shards) {
    *shard = 0;
    *n_shards = 1;
    memset(devices, 0, sizeof *devices);
    if (shard_spec) /* a worker: --devices, still among its arguments, was the parent's business */
        return batch_parse_shard(shard_spec, shard, n_shards);
    if (!devices_spec) return SD_OK;
    if (device)
        return sd_fail(SD_ERR_ARG, "--device and --devices exclude each other: --devices gives each worker its "
                                   "device (got --device %s)", device);
    SD_TRY(batch_parse_devices(devices_spec, sd_cuda_device_count, devices));
    *n_shards = devices->n;
    return SD_OK;
}
