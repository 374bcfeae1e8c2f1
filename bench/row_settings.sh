# bench/row_settings.sh: sourced (POSIX sh) by gpu_check.sh, grad_side_by_side.sh and
# invert_side_by_side.sh, which name their rows by a precision and suffixes ("exact+direct",
# "fast+wino"); what a suffix sets, in one place.

# SD_CONV_WINOGRAD for a row name: +direct off (exact mode's convolutions without Winograd), +cudnn
# off (cuDNN for every convolution: Winograd would take exact mode's 64x64 and 32x32 ones first),
# +wino on (F(2x2, 3x3) at 64x64 and 32x32), +wino-all all (F(2x2) on every 3x3 "same" convolution),
# +wino4-all f4-all (exact mode's F(4x4) on every one), +wino-mixed f4-mixed (exact mode's F(4x4) at
# 64x64 and 32x32, F(2x2) on the smaller maps); else auto, the default (exact mode's F(4x4)
# at 64x64 and 32x32, none in fp16 and bf16).
winograd_setting() {
    case $1 in
        *+direct | *+cudnn) echo off ;;
        *+wino) echo on ;;
        *+wino-all) echo all ;;
        *+wino4-all) echo f4-all ;;
        *+wino-mixed) echo f4-mixed ;;
        *) echo auto ;;
    esac
}

# SD_FLASH_BWD_BLOCKS_PER_SM for a row name: +fb2 two blocks of fast mode's flash attention backward
# per SM at head dims <= 48 (a 128-register build); else 1, the default.
flash_bwd_setting() {
    case $1 in
        *+fb2) echo 2 ;;
        *) echo 1 ;;
    esac
}

# SD_CUDA_PDL for a row name: +pdl (anywhere in it, e.g. fast+f16step+pdl) this backend's kernels by
# programmatic dependent launch (sm_90 and later; kernels/cuda_common.cuh); else 0, the default.
pdl_setting() {
    case $1 in
        *+pdl*) echo 1 ;;
        *) echo 0 ;;
    esac
}

# SD_STEP_ACTIVATIONS for a row name: +f32step (anywhere in it, e.g. fast+f32step+fb2) F32 activations
# in fast mode's gradient steps on fp16 weight copies (the default until the nineteenth session);
# else f16, the default: the steps' forward the plain fp16 forward (sd_ctx.f16_steps). +f16step,
# the name of the earlier opt-in rows, says the default out loud. A binary from before the
# thirteenth session (a row@prev) ignores the variable and stores F32.
step_activations_setting() {
    case $1 in
        *+f32step*) echo f32 ;;
        *) echo f16 ;;
    esac
}
