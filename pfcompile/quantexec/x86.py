"""x86 integer templates (AVX2 vpmaddwd)."""


def avx2_conv_kernel(sp):
    return None
