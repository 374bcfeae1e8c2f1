/* guarded_backend.h: a stand-in for a GPU, for machines without one.
 *
 * The host code (nn layer, models, methods, controllers) must never read or write device memory
 * directly: on a CUDA device that is a segmentation fault, and it can only show on a GPU. This
 * backend computes with the CPU ops, but its memory (mem_alloc: weights, arena chunks, parameters)
 * is mapped PROT_NONE except while one of its ops runs. Any host access to "device" memory outside
 * the op table therefore faults here, on the CPU, in CI. */
#ifndef SD_TEST_GUARDED_BACKEND_H
#define SD_TEST_GUARDED_BACKEND_H

#include "sd/backend.h"

/* The device ordinal a guarded context uses: not SD_DEVICE_CPU (so weights are moved), and beyond
 * any real GPU's ordinal (so its memory is never mistaken for a CUDA device's). */
#define GUARDED_DEVICE 1000

/* The op table (the CPU's, each op wrapped to open the memory while it runs). Reserves its
 * address space on the first call. */
const sd_backend *guarded_backend(void);

/* Number of ops that ran through the table (to check a test really used it). */
long guarded_backend_calls(void);

#endif
