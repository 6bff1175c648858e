// How both passes run their work items on threads, and how they cut a call
// with few tasks into more items (splits), so that every thread has work.
//
// A pass has `tasks` independent tasks; each may be cut into `splits`
// contiguous shares of its key blocks, run as separate work items whose
// partial results a second loop merges, task by task, in split order. The
// split count depends on the shape only, never on the thread count, so
// results stay bitwise independent of it.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <limits>
#include <new>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "../../threads.hpp"
#include "fp_env.hpp"

namespace fastattn {
namespace FASTATTN_ISA {
namespace {

// Enough shares for kSplitItems work items, each of at least kMinSplitBlocks
// key blocks, so that the merge stays small next to the streaming.
constexpr int64_t kSplitItems = 32;
constexpr int64_t kMinSplitBlocks = 2;

// Shares per task for `tasks` tasks of `blocks` key blocks each; by_memory
// caps it where each share costs a buffer.
inline int64_t count_splits(int64_t tasks, int64_t blocks,
                            int64_t by_memory = std::numeric_limits<int64_t>::max()) {
    if (tasks <= 0 || tasks >= kSplitItems) return 1;
    const int64_t by_items = (kSplitItems + tasks - 1) / tasks;
    const int64_t by_length = blocks / kMinSplitBlocks;
    return std::max<int64_t>(1, std::min({by_items, by_length, by_memory}));
}

// Runs each thread's share of a call: with one thread on the calling thread
// (no OpenMP team: a tiny call's fixed cost matters), else in a team, where
// work(ws) may hold `omp for` loops. Each thread gets its own workspace;
// no exception may leave an OpenMP region, so a failed allocation gives a
// null ws (work skips its items but still reaches every barrier) and
// std::bad_alloc afterwards.
template <class Workspace, class Make, class Work>
void run_threads(int64_t threads, const Make& make_workspace, const Work& work) {
    std::atomic<bool> out_of_memory{false};
    auto body = [&] {
        const ScopedKernelFpEnv fp_env;  // each team thread computes in the kernels' environment
        Workspace* ws = nullptr;
        try {
            ws = new Workspace(make_workspace());
        } catch (const std::bad_alloc&) {
            out_of_memory = true;
        }
        work(ws);
        delete ws;
    };
    if (threads == 1) {
        record_team_size(1);
        body();
    } else {
#ifdef _OPENMP
        // How long the team takes to start: the last thread's arrival (threads.cpp's evidence).
        using Clock = std::chrono::steady_clock;
        const Clock::time_point opened = Clock::now();
        std::atomic<int64_t> last_arrival_ns{0};
#pragma omp parallel num_threads(static_cast<int>(threads))
        {
            const int64_t arrival =
                std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - opened).count();
            int64_t seen = last_arrival_ns.load(std::memory_order_relaxed);
            while (arrival > seen && !last_arrival_ns.compare_exchange_weak(seen, arrival, std::memory_order_relaxed)) {
            }
            // The team OpenMP really opened (it may give fewer threads than asked),
            // as seen by the calling thread, which is the team's thread 0.
            if (omp_get_thread_num() == 0) record_team_size(omp_get_num_threads());
            body();
        }
        record_team_start(1e-9 * static_cast<double>(last_arrival_ns.load(std::memory_order_relaxed)));
#else
        record_team_size(1);
        body();
#endif
    }
    if (out_of_memory) throw std::bad_alloc();
}

// tasks × splits work items on at most max_threads threads (dynamic
// schedule: items differ in cost), then, after the loop's barrier (every
// split done), merge(task, ws) for each task when splits > 1.
// make_workspace(threads) builds one thread's workspace;
// run_item(task, split, ws) runs one item.
template <class Workspace, class Make, class RunItem, class Merge>
void run_work_items(int64_t max_threads, int64_t tasks, int64_t splits, const Make& make_workspace,
                    const RunItem& run_item, const Merge& merge) {
    const int64_t items = tasks * splits;
    const int64_t threads = std::max<int64_t>(1, std::min<int64_t>(max_threads, items));
    run_threads<Workspace>(threads, [&] { return make_workspace(threads); }, [&](Workspace* ws) {
#ifdef _OPENMP
#pragma omp for schedule(dynamic, 1)
#endif
        for (int64_t item = 0; item < items; ++item)
            if (ws) run_item(item / splits, item % splits, *ws);
        if (splits > 1) {
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
            for (int64_t task = 0; task < tasks; ++task)
                if (ws) merge(task, *ws);
        }
    });
}

}  // namespace
}  // namespace FASTATTN_ISA
}  // namespace fastattn
