// The attention forward kernel, written once against the vector API of
// vec_*.hpp and compiled once per ISA inside namespace fastattn::FASTATTN_ISA
// (see sdpa_<isa>.cpp). The including file has already included its vec header.
//
// Flash-style streaming with an online softmax. Each task owns one block of
// query rows of one (batch, head) and streams K/V in blocks of kKeyBlock keys.
// Per query row it keeps the running maximum m, the running sum
// l = Σ exp(s_j − m) and the unnormalised output acc = Σ exp(s_j − m)·v_j.
// When a new block raises the maximum to m', the old terms are rescaled by
// exp(m − m'), because exp(s − m') = exp(s − m)·exp(m − m'):
//     l'   = l·exp(m − m')   + Σ_block exp(s_j − m')
//     acc' = acc·exp(m − m') + Σ_block exp(s_j − m')·v_j
// At the end out = acc / l and lse = m + log(l). Every exponent is <= 0, so
// nothing overflows however large the logits are. Extra memory per thread is
// O(kQueryBlock·(D + Dv) + kKeyBlock·(D + Dv)), never O(Lq·Lk).
//
// Each row's arithmetic depends only on the block sizes, never on which thread
// runs it, so results are bitwise independent of the thread count.

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <limits>
#include <new>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "../sdpa.hpp"
#include "isa_entry.hpp"

#ifndef FASTATTN_ISA
#error "FASTATTN_ISA must name the target ISA (set by CMakeLists.txt)"
#endif

namespace fastattn {
namespace FASTATTN_ISA {

#include "exp-inl.hpp"

namespace {

constexpr int64_t kQueryBlock = 32;  // query rows per task
constexpr int64_t kKeyBlock = 64;    // keys per streamed K/V block

template <class T>
class ForwardKernel {
    using V = Vec<T>;
    using reg = typename V::reg;
    static constexpr int64_t W = V::width;
    static_assert(kKeyBlock % W == 0, "a key block must be whole vectors");
    static constexpr int64_t kKeyVecs = kKeyBlock / W;
    // Independent accumulators in the score micro-kernel: enough to hide FMA
    // latency, few enough to stay in registers.
    static constexpr int64_t kScoreRegs = kKeyVecs < 8 ? kKeyVecs : 8;
    static constexpr int64_t kOutRegs = 4;  // vectors of acc held across a P·V pass

public:
    explicit ForwardKernel(const SdpaArgs& a)
        : a_(a),
          dv_pad_((a.dv + W - 1) / W * W),
          q_blocks_((a.lq + kQueryBlock - 1) / kQueryBlock),
          group_(a.hq / a.hkv),
          diag_off_(a.causal == Causal::lower_right ? a.lk - a.lq : 0),
          neg_inf_(-std::numeric_limits<T>::infinity()) {}

    int64_t num_tasks() const { return a_.batch * a_.hq * q_blocks_; }

    // Per-thread scratch: everything one task needs, allocated once per thread.
    struct Workspace {
        std::vector<T> q_pack, k_pack, v_pack, scores, acc, row_max, row_sum;
        Workspace(int64_t d, int64_t dv_pad)
            : q_pack(kQueryBlock * d),
              k_pack(d * kKeyBlock),
              v_pack(kKeyBlock * dv_pad),
              scores(kKeyBlock),
              acc(kQueryBlock * dv_pad),
              row_max(kQueryBlock),
              row_sum(kQueryBlock) {}
    };

    Workspace make_workspace() const { return Workspace(a_.d, dv_pad_); }

    // Tasks are numbered so that the most expensive query blocks (the last
    // ones, under causal masking) are handed out first.
    void run_task(int64_t task, Workspace& ws) const {
        const int64_t bh = task / q_blocks_;
        const int64_t q_block = q_blocks_ - 1 - task % q_blocks_;
        const int64_t b = bh / a_.hq, h = bh % a_.hq, h_kv = h / group_;
        const int64_t row0 = q_block * kQueryBlock;
        const int64_t rows = std::min(kQueryBlock, a_.lq - row0);

        const T* q = static_cast<const T*>(a_.q) + b * a_.q_strides.batch + h * a_.q_strides.head +
                     row0 * a_.q_strides.row;
        const T* k = static_cast<const T*>(a_.k) + b * a_.k_strides.batch + h_kv * a_.k_strides.head;
        const T* v = static_cast<const T*>(a_.v) + b * a_.v_strides.batch + h_kv * a_.v_strides.head;

        pack_rows(q, a_.q_strides.row, rows, a_.d, a_.d, ws.q_pack.data());
        std::fill(ws.row_max.begin(), ws.row_max.end(), neg_inf_);
        std::fill(ws.row_sum.begin(), ws.row_sum.end(), T(0));
        std::fill(ws.acc.begin(), ws.acc.end(), T(0));

        // Keys past key_end are above the causal diagonal for every row here.
        const int64_t key_end = causal() ? clamp_keys(row0 + rows - 1 + diag_off_ + 1) : a_.lk;
        for (int64_t key0 = 0; key0 < key_end; key0 += kKeyBlock) {
            const int64_t keys = std::min(kKeyBlock, key_end - key0);
            pack_keys_transposed(k + key0 * a_.k_strides.row, keys, ws.k_pack.data());
            pack_rows(v + key0 * a_.v_strides.row, a_.v_strides.row, keys, a_.dv, dv_pad_,
                      ws.v_pack.data());
            for (int64_t r = 0; r < rows; ++r) {
                // Keys [0, visible) of this block are visible to row r.
                const int64_t visible =
                    causal() ? std::min(keys, row0 + r + diag_off_ - key0 + 1) : keys;
                if (visible > 0) update_row(r, visible, ws);
            }
        }

        T* out = static_cast<T*>(a_.out) + ((b * a_.hq + h) * a_.lq + row0) * a_.dv;
        T* lse = a_.lse ? static_cast<T*>(a_.lse) + (b * a_.hq + h) * a_.lq + row0 : nullptr;
        for (int64_t r = 0; r < rows; ++r) finish_row(r, ws, out + r * a_.dv, lse ? lse + r : nullptr);
    }

private:
    bool causal() const { return a_.causal != Causal::none; }
    int64_t clamp_keys(int64_t n) const { return std::max<int64_t>(0, std::min(a_.lk, n)); }

    // dst[r][c] = src[r·row_stride + c] for c < cols, zero up to padded_cols.
    static void pack_rows(const T* src, int64_t row_stride, int64_t rows, int64_t cols,
                          int64_t padded_cols, T* dst) {
        for (int64_t r = 0; r < rows; ++r) {
            const T* s = src + r * row_stride;
            T* d = dst + r * padded_cols;
            std::copy(s, s + cols, d);
            std::fill(d + cols, d + padded_cols, T(0));
        }
    }

    // k_pack[c][j] = k[j][c]: a row of k_pack holds one feature of every key
    // in the block, so the score kernel broadcasts q[c] against whole vectors
    // of keys. Missing keys (j >= keys) are zero: their scores are finite and
    // then masked, never NaN from uninitialised memory.
    void pack_keys_transposed(const T* k, int64_t keys, T* k_pack) const {
        for (int64_t j = 0; j < keys; ++j) {
            const T* kj = k + j * a_.k_strides.row;
            for (int64_t c = 0; c < a_.d; ++c) k_pack[c * kKeyBlock + j] = kj[c];
        }
        for (int64_t c = 0; c < a_.d; ++c)
            std::fill(k_pack + c * kKeyBlock + keys, k_pack + (c + 1) * kKeyBlock, T(0));
    }

    // scores[j] = scale·(q_row · k_j) for the key vectors that hold visible keys.
    void compute_scores(const T* q_row, const T* k_pack, int64_t key_vecs, T* scores) const {
        const reg scale = V::set1(static_cast<T>(a_.scale));
        for (int64_t v0 = 0; v0 < key_vecs; v0 += kScoreRegs) {
            reg dot[kScoreRegs];
            for (int64_t u = 0; u < kScoreRegs; ++u) dot[u] = V::zero();
            const T* kp = k_pack + v0 * W;
            for (int64_t c = 0; c < a_.d; ++c, kp += kKeyBlock) {
                const reg qc = V::set1(q_row[c]);
                for (int64_t u = 0; u < kScoreRegs; ++u) dot[u] = V::fma(qc, V::load(kp + u * W), dot[u]);
            }
            for (int64_t u = 0; u < kScoreRegs; ++u) V::store(scores + (v0 + u) * W, V::mul(dot[u], scale));
        }
    }

    // One key block's contribution to query row r (the online-softmax step).
    void update_row(int64_t r, int64_t visible, Workspace& ws) const {
        T* scores = ws.scores.data();
        // Whole score vectors that hold visible keys, rounded up to kScoreRegs.
        const int64_t key_vecs =
            std::min(kKeyVecs, ((visible + W - 1) / W + kScoreRegs - 1) / kScoreRegs * kScoreRegs);
        compute_scores(ws.q_pack.data() + r * a_.d, ws.k_pack.data(), key_vecs, scores);
        // Invisible keys (above the diagonal, or past Lk) are overwritten, not
        // added to, so a NaN in a masked key cannot reach this row.
        std::fill(scores + visible, scores + key_vecs * W, neg_inf_);

        reg block_max = V::set1(neg_inf_);
        for (int64_t u = 0; u < key_vecs; ++u) block_max = V::max(block_max, V::load(scores + u * W));
        const T old_max = ws.row_max[r];
        const T new_max = std::max(old_max, V::reduce_max(block_max));
        if (new_max == neg_inf_) return;  // every visible score is -inf: nothing seen yet

        // p_j = exp(s_j − m'); a NaN score makes p_j NaN, and the row NaN.
        const reg shift = V::set1(new_max);
        reg sum = V::zero();
        for (int64_t u = 0; u < key_vecs; ++u) {
            const reg p = vexp<T>(V::sub(V::load(scores + u * W), shift));
            V::store(scores + u * W, p);
            sum = V::add(sum, p);
        }
        const T alpha = std::exp(old_max - new_max);  // 0 on the first visible block
        ws.row_sum[r] = ws.row_sum[r] * alpha + V::reduce_add(sum);
        ws.row_max[r] = new_max;
        accumulate_pv(scores, visible, alpha, ws.v_pack.data(), ws.acc.data() + r * dv_pad_);
    }

    // acc = acc·alpha + Σ_{j < visible} p_j·v_j, kOutRegs vectors of acc at a time.
    void accumulate_pv(const T* p, int64_t visible, T alpha, const T* v_pack, T* acc) const {
        int64_t c = 0;
        for (; c + kOutRegs * W <= dv_pad_; c += kOutRegs * W)
            accumulate_pv_cols<kOutRegs>(p, visible, alpha, v_pack + c, acc + c);
        for (; c < dv_pad_; c += W) accumulate_pv_cols<1>(p, visible, alpha, v_pack + c, acc + c);
    }

    template <int N>
    void accumulate_pv_cols(const T* p, int64_t visible, T alpha, const T* v_pack, T* acc) const {
        const reg scale = V::set1(alpha);
        reg out[N];
        for (int u = 0; u < N; ++u) out[u] = V::mul(V::load(acc + u * W), scale);
        for (int64_t j = 0; j < visible; ++j) {
            const reg pj = V::set1(p[j]);
            const T* vj = v_pack + j * dv_pad_;
            for (int u = 0; u < N; ++u) out[u] = V::fma(pj, V::load(vj + u * W), out[u]);
        }
        for (int u = 0; u < N; ++u) V::store(acc + u * W, out[u]);
    }

    // out = acc / l and lse = m + log(l); a row that saw no key gives zeros
    // and lse = -inf (never 0/0 = NaN).
    void finish_row(int64_t r, const Workspace& ws, T* out, T* lse) const {
        const T m = ws.row_max[r], l = ws.row_sum[r];
        const T* acc = ws.acc.data() + r * dv_pad_;
        if (m == neg_inf_) {
            std::fill(out, out + a_.dv, T(0));
            if (lse) *lse = neg_inf_;
            return;
        }
        const reg denom = V::set1(l);
        int64_t c = 0;
        for (; c + W <= a_.dv; c += W) V::store(out + c, V::div(V::load(acc + c), denom));
        for (; c < a_.dv; ++c) out[c] = acc[c] / l;
        if (lse) *lse = m + std::log(l);
    }

    const SdpaArgs& a_;
    const int64_t dv_pad_, q_blocks_, group_, diag_off_;
    const T neg_inf_;
};

template <class T>
void forward_typed(const SdpaArgs& args) {
    const ForwardKernel<T> kernel(args);
    const int64_t tasks = kernel.num_tasks();
    std::atomic<bool> out_of_memory{false};
#ifdef _OPENMP
    int64_t threads = args.num_threads > 0 ? args.num_threads : omp_get_max_threads();
    threads = std::max<int64_t>(1, std::min(threads, tasks));
#pragma omp parallel num_threads(static_cast<int>(threads)) if (threads > 1)
#endif
    {
        // No exception may leave an OpenMP region: catch, finish, rethrow below.
        typename ForwardKernel<T>::Workspace* ws = nullptr;
        try {
            ws = new typename ForwardKernel<T>::Workspace(kernel.make_workspace());
        } catch (const std::bad_alloc&) {
            out_of_memory = true;
        }
#ifdef _OPENMP
#pragma omp for schedule(dynamic, 1)
#endif
        for (int64_t task = 0; task < tasks; ++task)
            if (ws) kernel.run_task(task, *ws);
        delete ws;
    }
    if (out_of_memory) throw std::bad_alloc();
}

template <class T>
void exp_typed(const T* x, T* y, int64_t n) {
    using V = Vec<T>;
    constexpr int64_t W = V::width;
    int64_t i = 0;
    for (; i + W <= n; i += W) V::store(y + i, vexp<T>(V::load(x + i)));
    if (i < n) {
        T tail[W] = {};
        std::copy(x + i, x + n, tail);
        V::store(tail, vexp<T>(V::load(tail)));
        std::copy(tail, tail + (n - i), y + i);
    }
}

}  // namespace
}  // namespace FASTATTN_ISA
}  // namespace fastattn

// Declares this file's entry points with the signatures dispatch.cpp expects.
FASTATTN_DECLARE_ISA_ENTRY(FASTATTN_ISA)

namespace fastattn {
namespace FASTATTN_ISA {

void forward(const SdpaArgs& args) {
    if (args.dtype == DType::f64)
        forward_typed<double>(args);
    else
        forward_typed<float>(args);
}

void exp_array(DType dtype, const void* x, void* y, int64_t n) {
    if (dtype == DType::f64)
        exp_typed(static_cast<const double*>(x), static_cast<double*>(y), n);
    else
        exp_typed(static_cast<const float*>(x), static_cast<float*>(y), n);
}

}  // namespace FASTATTN_ISA
}  // namespace fastattn
