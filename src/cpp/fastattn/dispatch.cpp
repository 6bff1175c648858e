// Runtime CPU dispatch and the checked entry point. Compiled with baseline
// flags only: nothing here may execute an instruction the CPU might lack.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#include <pthread.h>
#endif

#include "kernels/isa_entry.hpp"
#include "sdpa.hpp"

// FASTATTN_HAVE_<ISA> are set by CMakeLists.txt for the ISAs it compiled.
FASTATTN_DECLARE_ISA_ENTRY(scalar)
#ifdef FASTATTN_HAVE_AVX2
FASTATTN_DECLARE_ISA_ENTRY(avx2)
#endif
#ifdef FASTATTN_HAVE_AVX512
FASTATTN_DECLARE_ISA_ENTRY(avx512)
#endif
#ifdef FASTATTN_HAVE_NEON
FASTATTN_DECLARE_ISA_ENTRY(neon)
#endif

namespace fastattn {
namespace {

struct IsaEntry {
    const char* name;
    bool (*cpu_has)();
    void (*forward)(const SdpaArgs&);
    void (*backward)(const SdpaArgs&, const GradArgs&);
    void (*math_array)(MathFn, DType, const void*, void*, int64_t);
};

bool always() { return true; }
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
#endif

// Best last: "auto" picks the last entry the CPU can run.
const IsaEntry kIsas[] = {
    {"scalar", always, scalar::forward, scalar::backward, scalar::math_array},
#ifdef FASTATTN_HAVE_NEON
    {"neon", always, neon::forward, neon::backward, neon::math_array},  // NEON is part of AArch64
#endif
#ifdef FASTATTN_HAVE_AVX2
    {"avx2", cpu_has_avx2, avx2::forward, avx2::backward, avx2::math_array},
#endif
#ifdef FASTATTN_HAVE_AVX512
    {"avx512", cpu_has_avx512, avx512::forward, avx512::backward, avx512::math_array},
#endif
};

const IsaEntry* best_supported() {
    const IsaEntry* best = &kIsas[0];
    for (const IsaEntry& isa : kIsas)
        if (isa.cpu_has()) best = &isa;
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

void check_args(const SdpaArgs& a) {
    require(a.q && a.k && a.v && a.out, "null data pointer");
    require(a.batch >= 1 && a.hq >= 1 && a.hkv >= 1 && a.lq >= 1 && a.lk >= 1 && a.d >= 1 && a.dv >= 0,
            "sizes must be positive (dv may be 0)");
    require(a.hq % a.hkv == 0, "hq must be a multiple of hkv");
    require(a.causal == Causal::none || a.causal == Causal::upper_left || a.causal == Causal::lower_right,
            "unknown causal mode");
    require(a.dtype == DType::f32 || a.dtype == DType::f64 || a.dtype == DType::f16 || a.dtype == DType::bf16,
            "unknown dtype");
    require(a.num_threads >= 0, "num_threads must be >= 0");
    require(a.window_left >= -1 && a.window_right >= -1, "window bounds must be >= 0, or -1 for none");
    require(a.softcap >= 0 && a.softcap < HUGE_VAL, "softcap must be finite and >= 0 (0: off)");
    // Lengths index memory: out-of-range values would read out of bounds.
    for (int64_t b = 0; b < a.batch; ++b) {
        require(!a.q_lengths || (a.q_lengths[b] >= 0 && a.q_lengths[b] <= a.lq), "q_lengths out of [0, lq]");
        require(!a.kv_lengths || (a.kv_lengths[b] >= 0 && a.kv_lengths[b] <= a.lk), "kv_lengths out of [0, lk]");
    }
    const MaskKind kind = a.mask.kind;
    require(kind == MaskKind::none || kind == MaskKind::boolean || kind == MaskKind::additive, "unknown mask kind");
    require(kind == MaskKind::none || (a.mask.data && a.mask.batch_offsets), "mask without data or batch offsets");
}

#ifdef _OPENMP
// fork() copies only the calling thread, but libgomp's thread pool state comes
// along: a child whose parent ever opened a team waits forever at the first
// barrier of its own parallel region (seen with GCC 12). Such a child runs
// every call on its own thread instead; results never depend on the count.
namespace {
std::atomic<bool> team_opened{false};
std::atomic<bool> serial_after_fork{false};

void on_fork_in_child() {
    if (team_opened.load()) serial_after_fork.store(true);
}

[[maybe_unused]] const int fork_handler_registered = pthread_atfork(nullptr, nullptr, on_fork_in_child);
}  // namespace
#endif

// set_default_num_threads: 0 = not set. One value for the whole process, read
// by calls from every thread (omp_set_num_threads would only reach the
// thread that calls it, not the workers of a thread pool).
static std::atomic<int> process_default{0};

void set_default_num_threads(int n) {
    require(n >= 0, "the default thread count must be >= 0");
    process_default.store(n);
}

// The thread count a call runs with: the request; else the process default
// (set_default_num_threads) under the OpenMP limit of the calling thread
// (OMP_NUM_THREADS, or what threadpoolctl set there with omp_set_num_threads),
// so that a limit always limits; else that OpenMP limit. Capped at the
// processors available: more threads than processors only add waiting
// (OpenMP threads spin at barriers while the one they wait for has no core),
// and results never depend on the count.
static int resolve_threads(int requested) {
#ifdef _OPENMP
    if (serial_after_fork.load()) return 1;
    // omp_get_num_procs asks the OS for this process's CPU affinity on every
    // call (0.4 µs, a tenth of a tiny call): asked once, at the first call.
    static const int procs = omp_get_num_procs();
    int n = requested;
    if (n <= 0) {
        const int limit = omp_get_max_threads(), chosen = process_default.load();
        n = chosen > 0 ? std::min(chosen, limit) : limit;
    }
    return std::max(1, std::min(n, procs));
#else
    (void)requested;
    return 1;
#endif
}

// Multiply-adds a thread must have before a call opens more threads. Waking
// an OpenMP team costs microseconds on an idle machine, and milliseconds when
// the cores are busy, e.g. with NumPy's BLAS threads still spinning after a
// matmul between two small attention calls (measured in a training loop: 2×
// slower with 2 threads than with 1). 2^22 multiply-adds take ~50 µs on one
// core. Results never depend on the thread count, so this is only speed.
constexpr double kMinWorkPerThread = double(1 << 22);

static int threads_for(int requested, double multiply_adds) {
    const int threads = resolve_threads(requested);
    const int used = static_cast<int>(std::max(1.0, std::min<double>(threads, multiply_adds / kMinWorkPerThread)));
#ifdef _OPENMP
    if (used > 1) team_opened.store(true);
#endif
    return used;
}

// Multiply-adds of the forward's two products (the backward has five).
static double forward_work(const SdpaArgs& a) {
    return double(a.batch) * double(a.hq) * double(a.lq) * double(a.lk) * double(a.d + a.dv);
}

void sdpa_forward(const SdpaArgs& args) {
    check_args(args);
    SdpaArgs resolved = args;
    resolved.num_threads = threads_for(args.num_threads, forward_work(args));
    selected().load()->forward(resolved);
}

void sdpa_backward(const SdpaArgs& args, const GradArgs& grad) {
    check_args(args);
    require(grad.dout && grad.lse && grad.dq && grad.dk && grad.dv, "null gradient pointer");
    SdpaArgs resolved = args;
    resolved.num_threads = threads_for(args.num_threads, 2.5 * forward_work(args));
    selected().load()->backward(resolved, grad);
}

void math_array(MathFn fn, DType dtype, const void* x, void* y, int64_t n) {
    selected().load()->math_array(fn, dtype, x, y, n);
}

bool have_openmp() {
#ifdef _OPENMP
    return true;
#else
    return false;
#endif
}

int default_num_threads() { return resolve_threads(0); }

}  // namespace fastattn
