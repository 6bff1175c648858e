// The floating-point environment the kernels compute in, whatever the caller's.
//
// On x86, each thread that runs kernel code sets its MXCSR to one fixed value for the call and
// puts the caller's back, bit for bit, when it leaves (ScopedKernelFpEnv):
//   - subnormal numbers count as zero (DAZ: inputs; FTZ: results). An Intel core takes a
//     microcode assist for each subnormal operand or result: all-subnormal float32 q, k, v made
//     the forward 72x slower, 1% subnormal v 11x, on the Xeon of issue 29. The error is below the
//     smallest normal number (1.2e-38 for float32, 2.2e-308 for float64) times the other
//     operand: what the AMX and VDPBF16PS units do in hardware anyway (docs/precision.md);
//   - round to nearest even, every exception masked: results do not depend on a caller's
//     fesetround, and a caller's feenableexcept cannot turn the kernels' inf - inf or exp(-inf)
//     (masked rows) into SIGFPE.
// Elsewhere (AArch64) the kernels run in the caller's environment.
//
// Anonymous namespace: each translation unit (each compiled with its own ISA flags) has its own
// copy, so no AVX-encoded copy can stand in for the baseline one.
#pragma once

#include <cstdint>

#if defined(__x86_64__) || defined(_M_X64) || defined(__i386__)
#include <immintrin.h>
#define FASTATTN_HAVE_MXCSR 1
#endif

namespace fastattn {
namespace {

#ifdef FASTATTN_HAVE_MXCSR
// MXCSR: bits 0-5 exception flags, 6 DAZ, 7-12 exception masks, 13-14 rounding (0: nearest), 15 FTZ.
constexpr uint32_t kMxcsrMasks = 0x1f80, kMxcsrDaz = 0x0040, kMxcsrFtz = 0x8000;

// DAZ is a fault (#GP) on the few early SSE2 processors without it: FXSAVE's MXCSR_MASK says
// (Intel SDM vol. 1, 11.6.6; a mask of 0 means the default 0xffbf, without DAZ).
inline uint32_t kernel_mxcsr() {
    static const uint32_t value = [] {
        alignas(16) unsigned char area[512] = {};
        __asm__ __volatile__("fxsave %0" : "=m"(area));
        uint32_t mask = static_cast<uint32_t>(area[28]) | static_cast<uint32_t>(area[29]) << 8 |
                        static_cast<uint32_t>(area[30]) << 16 | static_cast<uint32_t>(area[31]) << 24;
        if (mask == 0) mask = 0xffbf;
        return kMxcsrMasks | kMxcsrFtz | (mask & kMxcsrDaz);
    }();
    return value;
}

class ScopedKernelFpEnv {
public:
    ScopedKernelFpEnv() : saved_(_mm_getcsr()) { _mm_setcsr(kernel_mxcsr()); }
    ~ScopedKernelFpEnv() { _mm_setcsr(saved_); }
    ScopedKernelFpEnv(const ScopedKernelFpEnv&) = delete;
    ScopedKernelFpEnv& operator=(const ScopedKernelFpEnv&) = delete;

private:
    uint32_t saved_;
};
#else
class ScopedKernelFpEnv {
public:
    ScopedKernelFpEnv() {}
};
#endif

}  // namespace
}  // namespace fastattn
