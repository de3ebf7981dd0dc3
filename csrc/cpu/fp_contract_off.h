// Included by a kernel file before its own code: the compiler may not contract a multiply
// and an add into one FMA in what follows. The BatchNorm kernels' AVX-512 loops write their
// multiplies and adds separately so as to round as the portable loops do; GCC at -O3 would
// otherwise fuse _mm512_add_ps(_mm512_mul_ps(a, b), c) into an FMA, and the two paths would
// differ by an ulp (and could pick different maxima of near-tied pooling windows).
#pragma once

#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif
