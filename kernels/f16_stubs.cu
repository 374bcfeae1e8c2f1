/* TEMPORARY: placeholders while the fp16 elementwise and norm kernels are written. */
#include "cuda_common.cuh"
#define STUB(name) return sd_fail(SD_ERR_UNSUPPORTED, "cuda fp16 " name ": not written yet")
sd_status cu_f16_from_f32(const float *, sd_f16 *, int64_t) { STUB("to_f16"); }
sd_status cu_f16_to_f32(const sd_f16 *, float *, int64_t) { STUB("to_f32"); }
sd_status cu_f16_copy(sd_f16 *, const sd_f16 *, int64_t) { STUB("copy"); }
sd_status cu_f16_binary(sd_binary_op, const sd_f16 *, const sd_f16 *, sd_f16 *, int64_t) { STUB("binary"); }
sd_status cu_f16_add_channel_bias(const sd_f16 *, const float *, sd_f16 *, int64_t, int64_t, int64_t) { STUB("bias"); }
sd_status cu_f16_geglu(const sd_f16 *, sd_f16 *, int64_t, int64_t) { STUB("geglu"); }
sd_status cu_f16_concat_channels(const sd_f16 *, const sd_f16 *, sd_f16 *, int64_t, int64_t, int64_t, int64_t) { STUB("concat"); }
sd_status cu_f16_upsample_nearest(const sd_f16 *, sd_f16 *, int64_t, int64_t, int64_t, int64_t, int64_t) { STUB("upsample"); }
sd_status cu_f16_transpose(const sd_f16 *, sd_f16 *, int64_t, int64_t, int64_t) { STUB("transpose"); }
sd_status cu_f16_group_norm(const sd_f16 *, const float *, const float *, sd_f16 *, int64_t, int64_t, int64_t, int, float, int) { STUB("group_norm"); }
sd_status cu_f16_layer_norm(const sd_f16 *, const float *, const float *, sd_f16 *, int64_t, int64_t, float) { STUB("layer_norm"); }
