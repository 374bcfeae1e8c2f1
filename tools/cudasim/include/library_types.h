/* library_types.h (cudasim): the data-type enum shared by cuBLAS, cuBLASLt and cuDNN's callers.
 * Values as NVIDIA's header defines them, so code that stores or prints them behaves the same. */
#ifndef CUDASIM_LIBRARY_TYPES_H
#define CUDASIM_LIBRARY_TYPES_H

typedef enum cudaDataType_t {
    CUDA_R_16F = 2,
    CUDA_R_32F = 0,
    CUDA_R_64F = 1,
    CUDA_R_16BF = 14,
    CUDA_R_32I = 10,
    CUDA_R_8I = 3,
} cudaDataType_t;
typedef cudaDataType_t cudaDataType;

#endif
