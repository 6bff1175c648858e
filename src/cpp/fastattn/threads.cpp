// Thread policy of every kernel call: how many threads a call runs with (the
// request, the process default, the OpenMP limit, the processors, and the
// work a thread must have), and what a forked child does (runs serially).
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <stdexcept>

#ifdef _OPENMP
#include <omp.h>
#include <pthread.h>
#endif

#include "api.hpp"
#include "threads.hpp"

namespace fastattn {

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

// Tests only: the processor count to cap at instead of the real one (0: the
// real one), so that a 2-core machine can run 3 or 8 threads and show that
// results do not depend on the count.
static std::atomic<int> processor_limit_for_testing{0};

void set_processor_limit_for_testing(int n) {
    if (n < 0) throw std::invalid_argument("fastattn kernel: the processor limit must be >= 0");
    processor_limit_for_testing.store(n);
}

static thread_local int last_team = 0;

void record_team_size(int n) { last_team = n; }

int last_team_size() { return last_team; }

// set_default_num_threads: 0 = not set. One value for the whole process, read
// by calls from every thread (omp_set_num_threads would only reach the
// thread that calls it, not the workers of a thread pool).
static std::atomic<int> process_default{0};

void set_default_num_threads(int n) {
    if (n < 0) throw std::invalid_argument("fastattn kernel: the default thread count must be >= 0");
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
    const int cap = processor_limit_for_testing.load();
    return std::max(1, std::min(n, cap > 0 ? cap : procs));
#else
    (void)requested;
    return 1;
#endif
}

// Multiply-adds a thread must have before a call opens more threads: few
// while teams start fast, many while they start slowly. Results never depend
// on the thread count, so this is only speed.
//
// Waking an OpenMP team costs microseconds when its threads are still
// spinning (torch's matmuls share this libgomp pool: inside a torch model the
// team is warm) or asleep on an idle core, and milliseconds when the cores are
// busy, e.g. with OpenBLAS's threads still spinning after a NumPy matmul
// (measured on an Intel Xeon, 2 cores: a GQA decode call of 2.2M multiply-adds
// runs in 90 µs on one thread, 51 µs on two after torch matmuls, 16 ms on two
// after a NumPy matmul; in a NumPy training loop, 2× slower with 2 threads than
// with 1). So the threshold follows how this process's teams start:
// run_threads times each team from its opening to its last thread's arrival
// (record_team_start). Slow starts (two in a row: the cores are busy) set the
// high threshold, the rule from before (2^22 multiply-adds, ~50 µs on one core:
// never fewer threads than that rule gave); a fast one the low (2^17,
// ~5 µs: a warm team's fork and join cost ~2-4 µs). While starts are slow, a
// call the low threshold would split probes whether they have become fast
// again: 50 ms after a slow start, then at doubling intervals while they stay
// slow (at most every 2 s: a probe that finds the cores busy costs a few ms).
constexpr double kMinWorkSlowStarts = double(1 << 22);
constexpr double kMinWorkFastStarts = double(1 << 17);
constexpr double kSlowStartSeconds = 200e-6;  // a busy core's scheduler, not a futex wake
constexpr double kFastStartSeconds = 50e-6;
constexpr int64_t kFirstProbeNs = 50000000, kLastProbeNs = 2000000000;

namespace {
std::atomic<bool> fast_starts{true};
std::atomic<int64_t> last_slow_start_ns{0};
std::atomic<int64_t> probe_interval_ns{kFirstProbeNs / 2};  // doubled by the first slow start
std::atomic<int> slow_starts_in_a_row{0};

int64_t now_ns() {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
        .count();
}

int threads_with(int threads, double multiply_adds, double per_thread) {
    return static_cast<int>(std::max(1.0, std::min<double>(threads, multiply_adds / per_thread)));
}
}  // namespace

void record_team_start(double seconds) {
    static std::atomic<bool> first{true};
    if (first.exchange(false, std::memory_order_relaxed)) return;  // the pool's threads were being created
    if (seconds > kSlowStartSeconds) {
        // One slow start among fast ones is a passing hiccup (a few in a thousand on a quiet shared
        // machine); two in a row, the cores are busy.
        const bool fast = fast_starts.load(std::memory_order_relaxed);
        if (slow_starts_in_a_row.fetch_add(1, std::memory_order_relaxed) + 1 < 2 && fast) return;
        fast_starts.store(false, std::memory_order_relaxed);
        last_slow_start_ns.store(now_ns(), std::memory_order_relaxed);
        probe_interval_ns.store(std::min(kLastProbeNs, 2 * probe_interval_ns.load(std::memory_order_relaxed)),
                                std::memory_order_relaxed);
        return;
    }
    slow_starts_in_a_row.store(0, std::memory_order_relaxed);
    if (seconds < kFastStartSeconds) {
        fast_starts.store(true, std::memory_order_relaxed);
        probe_interval_ns.store(kFirstProbeNs / 2, std::memory_order_relaxed);
    }
}

int threads_for(int requested, double multiply_adds) {
    const int threads = resolve_threads(requested);
    const bool fast = fast_starts.load(std::memory_order_relaxed);
    int used = threads_with(threads, multiply_adds, fast ? kMinWorkFastStarts : kMinWorkSlowStarts);
    if (!fast && used < threads) {  // a probe of whether starts are fast again
        const int probe = threads_with(threads, multiply_adds, kMinWorkFastStarts);
        int64_t last = last_slow_start_ns.load(std::memory_order_relaxed);
        const int64_t now = now_ns();
        if (probe > used && now - last >= probe_interval_ns.load(std::memory_order_relaxed) &&
            last_slow_start_ns.compare_exchange_strong(last, now, std::memory_order_relaxed))
            used = probe;
    }
#ifdef _OPENMP
    if (used > 1) team_opened.store(true);
#endif
    return used;
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
