// Runtime CPU dispatch: the table of compiled ISAs, the CPU probe, the
// selection (FASTATTN_ISA / set_isa), the argument backstop, and the checked
// entry points. Compiled with baseline flags only: nothing here may execute
// an instruction the CPU might lack. Thread counts come from threads.cpp.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <vector>

#include "api.hpp"
#ifdef _OPENMP
#include <omp.h>
#endif
#include "kernels/common/fp_env.hpp"
#include "kernels/isa_entry.hpp"
#include "threads.hpp"

// FASTATTN_HAVE_<ISA> are set by CMakeLists.txt for the ISAs it compiled.
FASTATTN_DECLARE_ISA_ENTRY(scalar)
#ifdef FASTATTN_HAVE_AVX2
FASTATTN_DECLARE_ISA_ENTRY(avx2)
#endif
#ifdef FASTATTN_HAVE_AVX512
FASTATTN_DECLARE_ISA_ENTRY(avx512)
#endif
#ifdef FASTATTN_HAVE_AVX512_BF16
FASTATTN_DECLARE_ISA_ENTRY(avx512_bf16)
#endif
#ifdef FASTATTN_HAVE_AMX_MODEL
FASTATTN_DECLARE_ISA_ENTRY(amx_model)
#endif
#ifdef FASTATTN_HAVE_AMX
FASTATTN_DECLARE_ISA_ENTRY(amx)
namespace fastattn {
namespace amx {
void set_amx_model_for_testing(bool model);
}
}  // namespace fastattn
#endif

#if defined(__linux__) && (defined(__x86_64__) || defined(__i386__))
#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif
#ifdef FASTATTN_HAVE_NEON
FASTATTN_DECLARE_ISA_ENTRY(neon)
#endif

namespace fastattn {
namespace {

bool always() { return true; }
bool never() { return false; }

// An engine (kernels/engines/): what multiplies the matrices of both passes for one
// dtype, and the ISA translation unit whose entry points run it.
struct Engine {
    const char* name;
    void (*forward)(const AttentionArgs&);
    void (*backward)(const AttentionArgs&, const GradArgs&);
    void (*products)(const ProductArgs&);  // tile tests
    // Calls of fewer query rows run the ISA's `short_calls` engine instead (tiles padded to 32
    // rows cost more than they give there: measured, see the amx row).
    int64_t min_rows = 0;
};
constexpr int kDtypes = 4, kPrecisions = 3;  // DType and Precision codes index these

// An ISA: its CPU probe, the engine it runs for each dtype and precision, and its math
// functions. Adding an engine is a row here (and its header, and a translation unit).
struct IsaEntry {
    const char* name;
    bool (*cpu_has)();
    Engine engines[kDtypes][kPrecisions];
    void (*math_array)(MathFn, DType, const void*, void*, int64_t);
    // Whether "auto" may pick it on this CPU (it runs and is measured faster than the ISAs
    // before it); set_isa and FASTATTN_ISA take any supported ISA.
    bool (*preferred)() = always;
    Engine short_calls = {};  // for calls below an engine's min_rows
};

#if defined(FASTATTN_HAVE_AVX2) || defined(FASTATTN_HAVE_AVX512)
// __builtin_cpu_supports also checks that the OS saves the wide registers.
bool cpu_has_avx2() {
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
}
bool cpu_has_avx512() {
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
           __builtin_cpu_supports("fma");
}
bool cpu_has_avx512_bf16() { return cpu_has_avx512() && __builtin_cpu_supports("avx512bf16"); }
// VDPBF16PS issues at the FMA's rate on AMD Zen 4 (32 multiply-adds to its 16: twice the
// rate), and at a quarter of it on the Intel Xeon measured (1.8 G/s to 7.0 G/s: half the
// rate), where the FMA engine is faster (shared/MATRIX-ENGINES.md).
bool avx512_bf16_is_faster() { return __builtin_cpu_is("amd"); }
#endif

#ifdef FASTATTN_HAVE_AMX
// AMX tiles and bf16 products (CPUID.(7,0):EDX bits 24 and 22), enabled by the OS (XCR0 bits 17
// and 18), and this process allowed to use tile data: Linux asks for it first
// (arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA); the kernel's
// Documentation/arch/x86/xstate.rst). Asked once; refused or absent, no AMX (never a crash).
bool cpu_has_amx() {
    static const bool usable = [] {
#if defined(__linux__)
        unsigned eax, ebx, ecx, edx;
        if (!__get_cpuid(1, &eax, &ebx, &ecx, &edx) || !(ecx & (1u << 27))) return false;  // OSXSAVE: xgetbv
        if (!__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx)) return false;
        if (!(edx & (1u << 24)) || !(edx & (1u << 22))) return false;
        unsigned xcr0_lo, xcr0_hi;
        __asm__("xgetbv" : "=a"(xcr0_lo), "=d"(xcr0_hi) : "c"(0));
        if ((xcr0_lo & (3u << 17)) != (3u << 17)) return false;
        constexpr long kReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
        return cpu_has_avx512_bf16() && syscall(SYS_arch_prctl, kReqXcompPerm, kXfeatureXtiledata) == 0;
#else
        return false;
#endif
    }();
    return usable;
}
#endif

// The same engine for every precision (it has no faster mode), and for every dtype.
#define FASTATTN_ALL_PRECISIONS(engine) {engine, engine, engine}
#define FASTATTN_ENGINE(name, isa) (Engine{name, isa::forward, isa::backward, isa::products})
#define FASTATTN_TILES(name, isa, rows) (Engine{name, isa::forward, isa::backward, isa::products, rows})
#define FASTATTN_FMA(isa) FASTATTN_ALL_PRECISIONS(FASTATTN_ENGINE(#isa "_fma", isa))
#define FASTATTN_FMA_ROW(isa) {FASTATTN_FMA(isa), FASTATTN_FMA(isa), FASTATTN_FMA(isa), FASTATTN_FMA(isa)}

// Best last: "auto" picks the last entry the CPU can run.
const IsaEntry kIsas[] = {
    {"scalar", always, FASTATTN_FMA_ROW(scalar), scalar::math_array},
#ifdef FASTATTN_HAVE_NEON
    {"neon", always, FASTATTN_FMA_ROW(neon), neon::math_array},  // NEON is part of AArch64
#endif
#ifdef FASTATTN_HAVE_AVX2
    {"avx2", cpu_has_avx2, FASTATTN_FMA_ROW(avx2), avx2::math_array},
#endif
#ifdef FASTATTN_HAVE_AVX512
    {"avx512", cpu_has_avx512, FASTATTN_FMA_ROW(avx512), avx512::math_array},
#endif
#ifdef FASTATTN_HAVE_AVX512_BF16
    // bfloat16 on VDPBF16PS: the scores ("highest", "high"), every product ("medium": P and dS
    // rounded to bf16). float16 keeps the FMA engine: its exact split into two bf16 parts would
    // cost four products for one.
    {"avx512_bf16",
     cpu_has_avx512_bf16,
     {FASTATTN_FMA(avx512), FASTATTN_FMA(avx512), FASTATTN_FMA(avx512),
      {FASTATTN_ENGINE("avx512_bf16", avx512_bf16), FASTATTN_ENGINE("avx512_bf16", avx512_bf16),
       FASTATTN_ENGINE("avx512_bf16_rounded", avx512_bf16)}},
     avx512::math_array,
     avx512_bf16_is_faster},
#endif
#ifdef FASTATTN_HAVE_AMX_MODEL
    // The AMX engine on the software model of the tile unit, AVX2 vectors, every dtype and
    // precision the amx ISA runs on tiles: every x86 machine with AVX2 runs it (slowly), for
    // tests; "auto" never picks it.
    {"amx-model",
     cpu_has_avx2,
     {{FASTATTN_ENGINE("avx2_fma", avx2), FASTATTN_ENGINE("amx_model_f32x3", amx_model),
       FASTATTN_ENGINE("amx_model_f32x2_rounded", amx_model)},
      FASTATTN_FMA(avx2),
      {FASTATTN_ENGINE("amx_model_f16", amx_model), FASTATTN_ENGINE("amx_model_f16", amx_model),
       FASTATTN_ENGINE("amx_model_f16_rounded", amx_model)},
      {FASTATTN_ENGINE("amx_model_bf16", amx_model), FASTATTN_ENGINE("amx_model_bf16", amx_model),
       FASTATTN_ENGINE("amx_model_bf16_rounded", amx_model)}},
     avx2::math_array,
     never},
#endif
#ifdef FASTATTN_HAVE_AMX
    // The tile units (engines/amx-inl.hpp): bfloat16 (P and dS split in two bf16 parts, or rounded
    // once at "medium"), float16 (two exact parts), float32 "medium" (two parts, P rounded). Every
    // other cell is the FMA engine's: float32 "high" (three parts, six products) measured 0.77-0.96x
    // the FMA engine on the Xeon (docs/engines.md), so it computes as "highest" here; amx-model
    // runs it. Calls of fewer query rows than a tile engine's min_rows take the FMA engine: on
    // that Xeon (D = 64, 128; 16 query rows) bfloat16 tiles were 0.91-1.65x FMA, float16 0.83-1.05x.
    {"amx",
     cpu_has_amx,
     {{FASTATTN_ENGINE("avx512_fma", avx512), FASTATTN_ENGINE("avx512_fma", avx512),
       FASTATTN_TILES("amx_f32x2_rounded", amx, 32)},
      FASTATTN_FMA(avx512),
      {FASTATTN_TILES("amx_f16", amx, 32), FASTATTN_TILES("amx_f16", amx, 32),
       FASTATTN_TILES("amx_f16_rounded", amx, 32)},
      {FASTATTN_TILES("amx_bf16", amx, 16), FASTATTN_TILES("amx_bf16", amx, 16),
       FASTATTN_TILES("amx_bf16_rounded", amx, 16)}},
     avx512::math_array,
     always,  // measured faster than avx512 (FMA) and avx512_bf16 on the Xeon: docs/engines.md
     FASTATTN_ENGINE("avx512_fma", avx512)},
#endif
};

const IsaEntry* best_supported() {
    const IsaEntry* best = &kIsas[0];
    for (const IsaEntry& isa : kIsas)
        if (isa.cpu_has() && isa.preferred()) best = &isa;
    return best;
}

std::atomic<const IsaEntry*>& selected() {
    static std::atomic<const IsaEntry*> entry{best_supported()};
    return entry;
}

std::string join(const std::vector<std::string>& names) {
    std::string s;
    for (const std::string& n : names) s += (s.empty() ? "" : ", ") + n;
    return s;
}

void require(bool ok, const std::string& what) {
    if (!ok) throw std::invalid_argument("fastattn kernel: " + what);
}

}  // namespace

std::vector<std::string> compiled_isas() {
    std::vector<std::string> names;
    for (const IsaEntry& isa : kIsas) names.push_back(isa.name);
    return names;
}

std::vector<std::string> supported_isas() {
    std::vector<std::string> names;
    for (const IsaEntry& isa : kIsas)
        if (isa.cpu_has()) names.push_back(isa.name);
    return names;
}

std::string selected_isa() { return selected().load()->name; }

void select_isa(const std::string& name) {
    if (name == "auto") {
        selected() = best_supported();
        return;
    }
    for (const IsaEntry& isa : kIsas) {
        if (name != isa.name) continue;
        if (!isa.cpu_has())
            throw std::invalid_argument("ISA '" + name + "' is not supported by this CPU (supported: " +
                                        join(supported_isas()) + ")");
        selected() = &isa;
        return;
    }
    throw std::invalid_argument("unknown ISA '" + name + "' (compiled: " + join(compiled_isas()) +
                                "; or 'auto')");
}

void check_args(const AttentionArgs& a) {
    require(a.q && a.k && a.v && a.out, "null data pointer");
    require(!a.out_wide || a.dtype == DType::f16 || a.dtype == DType::bf16, "out_wide without 16-bit inputs");
    require(a.batch >= 1 && a.hq >= 1 && a.hkv >= 1 && a.lq >= 1 && a.lk >= 1 && a.d >= 1 && a.dv >= 0,
            "sizes must be positive (dv may be 0)");
    require(a.hq % a.hkv == 0, "hq must be a multiple of hkv");
    require(a.causal == Causal::none || a.causal == Causal::upper_left || a.causal == Causal::lower_right,
            "unknown causal mode");
    require(a.align == Align::upper_left || a.align == Align::lower_right, "unknown alignment");
    require(a.causal == Causal::none || (a.causal == Causal::lower_right) == (a.align == Align::lower_right),
            "the causal mode and the alignment disagree");
    require(a.precision == Precision::highest || a.precision == Precision::high || a.precision == Precision::medium,
            "unknown precision");
    require(a.dtype == DType::f32 || a.dtype == DType::f64 || a.dtype == DType::f16 || a.dtype == DType::bf16,
            "unknown dtype");
    require(a.num_threads >= 0, "num_threads must be >= 0");
    require(a.window_left >= -1 && a.window_right >= -1, "window bounds must be >= 0, or -1 for none");
    require(a.softcap >= 0 && a.softcap < HUGE_VAL, "softcap must be finite and >= 0 (0: off)");
    for (int64_t i = 0; a.sinks && i < a.batch * a.hq; ++i)
        require(a.sinks[i] < HUGE_VAL && a.sinks[i] == a.sinks[i], "sinks must be finite or -inf");
    // Lengths index memory: out-of-range values would read out of bounds.
    for (int64_t b = 0; b < a.batch; ++b) {
        require(!a.q_lengths || (a.q_lengths[b] >= 0 && a.q_lengths[b] <= a.lq), "q_lengths out of [0, lq]");
        require(!a.kv_lengths || (a.kv_lengths[b] >= 0 && a.kv_lengths[b] <= a.lk), "kv_lengths out of [0, lk]");
    }
    const PagedKv& pages = a.paged;
    if (pages.table) {  // the table indexes memory: every block a sequence uses must exist
        require(pages.block_size >= 1 && pages.table_width >= 1 && pages.num_blocks >= 1 && a.kv_lengths,
                "paged K/V need block_size, table_width, num_blocks >= 1 and kv_lengths");
        require(!pages.int8 || (a.dtype == DType::f32 && pages.k_scale && pages.v_scale),
                "int8 pools need float32 q and their scales");
        for (int64_t b = 0; b < a.batch; ++b) {
            require(a.kv_lengths[b] <= pages.table_width * pages.block_size, "kv_lengths beyond the block table");
            for (int64_t i = 0; i < (a.kv_lengths[b] + pages.block_size - 1) / pages.block_size; ++i) {
                const int32_t block = pages.table[b * pages.table_width + i];
                require(block >= 0 && block < pages.num_blocks, "block table entry out of [0, num_blocks)");
            }
        }
    } else {
        require(!pages.int8, "int8 K/V only through a block table");
    }
    const MaskKind kind = a.mask.kind;
    require(kind == MaskKind::none || kind == MaskKind::boolean || kind == MaskKind::additive, "unknown mask kind");
    require(kind == MaskKind::none || (a.mask.data && a.mask.batch_offsets), "mask without data or batch offsets");
}

// Multiply-adds of the forward's two products (the backward has five).
static double forward_work(const AttentionArgs& a) {
    return double(a.batch) * double(a.hq) * double(a.lq) * double(a.lk) * double(a.d + a.dv);
}

// The engine of the calling thread's last call (tests assert which one really ran).
thread_local const char* last_engine_name = "";

const Engine& engine_for(const AttentionArgs& args) {
    // int8 K/V (a KVCache's) run on the FMA engine, float32 "highest"'s on every ISA.
    const Precision precision = args.paged.int8 ? Precision::highest : args.precision;
    const IsaEntry& isa = *selected().load();
    const Engine& engine = isa.engines[static_cast<int>(args.dtype)][static_cast<int>(precision)];
    const Engine& chosen = args.lq < engine.min_rows ? isa.short_calls : engine;
    last_engine_name = chosen.name;
    return chosen;
}

void attention_forward(const AttentionArgs& args) {
    check_args(args);
    AttentionArgs resolved = args;
    resolved.num_threads = threads_for(args.num_threads, forward_work(args));
    const ScopedKernelFpEnv fp_env;  // and each team thread (run_threads): kernels/common/fp_env.hpp
    engine_for(args).forward(resolved);
}

void attention_backward(const AttentionArgs& args, const GradArgs& grad) {
    check_args(args);
    require(grad.dout && grad.lse && grad.dq && grad.dk && grad.dv, "null gradient pointer");
    require(!args.paged.table, "paged K/V are forward only");
    AttentionArgs resolved = args;
    resolved.num_threads = threads_for(args.num_threads, 2.5 * forward_work(args));
    const ScopedKernelFpEnv fp_env;
    engine_for(args).backward(resolved, grad);
}

void math_array(MathFn fn, DType dtype, const void* x, void* y, int64_t n) {
    selected().load()->math_array(fn, dtype, x, y, n);
}

void engine_products(const std::string& name, const ProductArgs& args) {
    for (const IsaEntry& isa : kIsas) {
        if (name != isa.name) continue;
        require(isa.cpu_has(), "ISA '" + name + "' is not supported by this CPU");
        require(args.rows >= 0 && args.depth >= 0 && args.cols >= 0 && args.a && args.b && args.out,
                "bad product arguments");
        const ScopedKernelFpEnv fp_env;
        return isa.engines[static_cast<int>(args.dtype)][static_cast<int>(args.precision)].products(args);
    }
    require(false, "unknown ISA '" + name + "'");
}

std::string last_engine() { return last_engine_name; }

std::vector<uint32_t> team_fp_env(int threads) {
    std::vector<uint32_t> mxcsr;
#ifdef FASTATTN_HAVE_MXCSR
    mxcsr.assign(std::max(threads, 1), 0);
#ifdef _OPENMP
#pragma omp parallel num_threads(std::max(threads, 1))
    mxcsr[omp_get_thread_num()] = _mm_getcsr();
#else
    mxcsr[0] = _mm_getcsr();
#endif
#endif
    return mxcsr;
}

void set_amx_model_for_testing(bool model) {
#ifdef FASTATTN_HAVE_AMX
    amx::set_amx_model_for_testing(model);
#else
    require(!model, "this build has no AMX ISA");
#endif
}

std::vector<EngineName> engine_names() {
    const IsaEntry& isa = *selected().load();
    std::vector<EngineName> names;
    for (int d = 0; d < kDtypes; ++d)
        for (int p = 0; p < kPrecisions; ++p)
            names.push_back({static_cast<DType>(d), static_cast<Precision>(p), isa.engines[d][p].name});
    return names;
}

}  // namespace fastattn
