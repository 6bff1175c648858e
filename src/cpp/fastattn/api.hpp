// fastattn — plain C++ API of the attention kernels. No Python here.
// (docs/architecture.md has the layout; the enum values below are the codes
// src/fastattn/_contract.py passes through the binding.)
//
// Everything above this header (the Python API, the binding) has already
// validated and normalised the call: arrays are 4-D (batch, heads, rows, cols),
// the last axis of q, k, v is contiguous, and out/lse are C-contiguous.
// check_args() in dispatch.cpp is a backstop, not the place for user errors.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace fastattn {

// Storage dtype of q, k, v and out (lse is in the compute dtype: double for
// f64, else float). float16 and bfloat16 are converted to
// float32 block by block inside the kernel and computed in float32.
enum class DType : int { f32 = 0, f64 = 1, f16 = 2, bf16 = 3 };

// Which (query i, key j) pairs may attend. Both causal modes measure i against
// j with one diagonal offset `off`: key j is visible iff j <= i + off, where
// off = 0 (upper_left) or Lk - Lq (lower_right).
enum class Causal : int { none = 0, upper_left = 1, lower_right = 2 };

// Where query i sits on the keys for every positional rule (causal, window, ALiBi):
// at key position i + off, off = 0 (upper_left) or Lk - Lq (lower_right; per
// sequence kv_lengths[b] - q_lengths[b]). Causal::lower_right comes with
// lower_right, Causal::upper_left with upper_left; without causal either may be
// chosen (FlashAttention aligns windows and ALiBi lower-right).
enum class Align : int { upper_left = 0, lower_right = 1 };

// The precision of the products on a matrix engine (torch's
// set_float32_matmul_precision names). highest: float32 products (bf16 engines
// split their float32 operands into high + low bf16 parts); high: float32 on
// tile engines at ~float32 accuracy (three bf16 parts); medium: the float32
// operands (P, dS) rounded to bf16 once. An engine without a faster path
// computes every mode as highest.
enum class Precision : int { highest = 0, high = 1, medium = 2 };

// Strides are in elements, not bytes, and may be zero or negative.
struct Strides3 {
    int64_t batch = 0, head = 0, row = 0;
};

// A mask broadcast to (batch, hq, lq, lk) without copying: size-1 axes have
// stride 0. Batch offsets are per flattened batch index, so any number of
// leading batch dims with any strides needs no expanded copy.
enum class MaskKind : int { none = 0, boolean = 1, additive = 2 };
struct MaskView {
    MaskKind kind = MaskKind::none;
    // boolean: one byte per element, nonzero = may attend. additive: the
    // compute dtype (double for f64 inputs, float otherwise), added to scores.
    const void* data = nullptr;
    const int64_t* batch_offsets = nullptr;  // (batch,) element offsets
    int64_t head = 0, row = 0, col = 0;      // element strides
};

// K and V read through a block table (fastattn.KVCache) instead of dense arrays:
// args.k and args.v point at the pools, (num_blocks, hkv, block_size, d | dv),
// with k_strides/v_strides.batch the stride of a block; key j of sequence b is
// row j % block_size of block table[b·table_width + j / block_size]. Forward only.
struct PagedKv {
    const int32_t* table = nullptr;  // null: K/V are dense (batch, hkv, lk, ·) arrays
    int64_t table_width = 0, block_size = 0, num_blocks = 0;
    bool int8 = false;               // int8 pools (q, out: float32), dequantised by the scales
    const float* k_scale = nullptr;  // int8: (num_blocks, hkv, block_size) float32, C-contiguous
    const float* v_scale = nullptr;
};

struct AttentionArgs {
    DType dtype = DType::f32;
    const void* q = nullptr;  // (batch, hq,  lq, d)   strided, last axis contiguous
    const void* k = nullptr;  // (batch, hkv, lk, d)   strided, last axis contiguous
    const void* v = nullptr;  // (batch, hkv, lk, dv)  strided, last axis contiguous
    void* out = nullptr;      // (batch, hq,  lq, dv)  storage dtype (or see out_wide); the forward writes it
                              // through out_strides (last axis contiguous: a caller that wants (batch, lq,
                              // hq, dv) passes that layout's view), the backward reads it C-contiguous
    // 16-bit inputs only: out is float32, the output before rounding to 16 bits.
    // The backward then forms D = Σ_c dout·out from it, as precise as float32.
    bool out_wide = false;
    void* lse = nullptr;      // (batch, hq,  lq)      C-contiguous, compute dtype; may be null
    // (batch, hq, lq) C-contiguous, compute dtype, or null; written with lse: what
    // rounding m + log(l) to lse lost, so that lse + lse_lo holds it to twice the
    // precision. The backward's P = exp(s − lse) would carry that error whole
    // (up to half an ulp of lse: 3.8e-6 at 100 in float32), GradArgs::lse_lo.
    void* lse_lo = nullptr;
    Strides3 q_strides, k_strides, v_strides, out_strides;  // in elements
    int64_t batch = 0, hq = 0, hkv = 0, lq = 0, lk = 0, d = 0, dv = 0;
    double scale = 1.0;
    Causal causal = Causal::none;
    Align align = Align::upper_left;
    Precision precision = Precision::highest;
    // Per-sequence lengths in a padded batch, (batch,) each, or null for lq / lk.
    // Keys j >= kv_lengths[b] are invisible; rows i >= q_lengths[b] give zeros.
    // Under lower_right the diagonal offset is kv_lengths[b] - q_lengths[b].
    const int64_t* q_lengths = nullptr;
    const int64_t* kv_lengths = nullptr;
    // Sliding window: key j visible iff i + off - left <= j <= i + off + right (off: Align);
    // -1 means unbounded on that side.
    int64_t window_left = -1, window_right = -1;
    const double* alibi_slopes = nullptr;  // (batch, hq): adds -slope·|i + off - j|
    double softcap = 0.0;                  // > 0: scores -> softcap·tanh(scores / softcap)
    // Attention sinks, (batch, hq) or null: a per-head logit in each row's softmax
    // denominator, with no value: out_i = Σ_j exp(s_ij)·v_j / (Σ_j exp(s_ij) + exp(sink)),
    // and lse_i includes it. -inf: no sink. Rows past q_lengths[b] are padding (lse -inf).
    const double* sinks = nullptr;
    // Paged K/V (decoding from a KVCache); then lk is the longest sequence's
    // length and kv_lengths must be given.
    PagedKv paged;
    MaskView mask;
    // 0: the OpenMP default (OMP_NUM_THREADS). Capped at the processors
    // available: more threads than cores would only wait on each other.
    int num_threads = 0;
};
// Order in which a score is formed: s = scale·q·k; softcap; + ALiBi; + additive
// mask; then boolean mask, causal, window and lengths set it to -inf.
// (The options above, scale .. precision, reach the kernel from one Python tuple:
// src/cpp/bindings/module.cpp reads it, FASTATTN_OPTIONS.)

// Throws std::invalid_argument when args break the contract above.
void check_args(const AttentionArgs& args);

// softmax(q·kᵀ·scale)·v into args.out (and log-sum-exp into args.lse).
// Checks args, then runs the kernel of the selected ISA.
void attention_forward(const AttentionArgs& args);

// The backward pass's own arrays. With them, AttentionArgs describes the forward
// call whose gradients are wanted: the same q, k, v and options, and args.out
// is the forward's output (read, not written).
struct GradArgs {
    const void* dout = nullptr;  // (batch, hq, lq, dv) C-contiguous, storage dtype
    const void* lse = nullptr;   // (batch, hq, lq) C-contiguous, compute dtype (double for f64, else float)
    const void* lse_lo = nullptr;  // the forward's AttentionArgs::lse_lo, or null (0)
    void* dq = nullptr;          // (batch, hq,  lq, d)   C-contiguous, storage dtype
    void* dk = nullptr;          // (batch, hkv, lk, d)   C-contiguous, storage dtype
    void* dv = nullptr;          // (batch, hkv, lk, dv)  C-contiguous, storage dtype
};

// Gradients of sum(dout ∘ out) with respect to q, k and v (FlashAttention-2:
// weights recomputed from lse; no Lq×Lk buffer; no two threads write the same
// rows). Checks the arguments, then runs the kernel of the selected ISA.
void attention_backward(const AttentionArgs& args, const GradArgs& grad);

// y[i] = f(x[i]) with the selected ISA's vectorised exp2, exp or tanh (exp2 is
// the kernel's softmax exp, tanh its softcap, exp inside tanh); float32 or float64 arrays of n elements. For accuracy tests.
enum class MathFn : int { exp = 0, tanh = 1, exp2 = 2 };
void math_array(MathFn fn, DType dtype, const void* x, void* y, int64_t n);

// Tests of the tile layer: one engine's products, through its own packing, on
// given operands (tests/test_engines.py compares every engine with a float64
// reference on random tiles, tails and strides).
//   scores: out[r][j] = scale·Σ_c a[r·a_stride + c]·b[j·b_stride + c], r < rows,
//           c < depth, j < cols (keys); a, b in `dtype`
//   sums:   out[r][col] = out[r][col]·alpha[r] + Σ_{lo <= i < hi} w(r, i)·b[i·b_stride + col],
//           w(r, i) = a[r·a_stride + i] (float32; transposed: a[i·a_stride + r]),
//           i < depth (terms), col < cols; skip_zero: terms of weight 0 skipped
struct ProductArgs {
    DType dtype = DType::f32;
    Precision precision = Precision::highest;
    bool sums = false, transposed = false, skip_zero = false;
    const void* a = nullptr;
    const void* b = nullptr;
    int64_t a_stride = 0, b_stride = 0, rows = 0, depth = 0, cols = 0, lo = 0, hi = 0;
    double scale = 1.0;
    const float* alpha = nullptr;  // sums: (rows,)
    float* out = nullptr;          // (rows, cols) C-contiguous
};
// The engine `isa` runs for args.dtype and args.precision (a supported ISA).
void engine_products(const std::string& isa, const ProductArgs& args);

// ---- runtime ISA dispatch (dispatch.cpp) ---------------------------------
// The engine (kernels/engines/) the selected ISA runs for each dtype and precision.
struct EngineName {
    DType dtype;
    Precision precision;
    std::string name;
};
std::vector<EngineName> engine_names();
// Tests: the engine name of the calling thread's last forward or backward call, and the amx
// ISA's tile unit: its software model (true) or the hardware (false; the default).
std::string last_engine();
// Tests only: the MXCSR of each thread of an OpenMP team of `threads` (its thread 0 is the
// caller); empty where there is none (not x86). The kernels' threads put theirs back after a call.
std::vector<uint32_t> team_fp_env(int threads);
void set_amx_model_for_testing(bool model);
std::vector<std::string> compiled_isas();   // built into this binary, best last
std::vector<std::string> supported_isas();  // compiled and runnable on this CPU
std::string selected_isa();
// Selects `name` ("auto" = the best supported); throws std::invalid_argument
// naming the supported ISAs when `name` is unknown or not runnable here.
void select_isa(const std::string& name);

// ---- threading (threads.cpp) ---------------------------------------------
bool have_openmp();
int default_num_threads();  // what num_threads = 0 uses in the calling thread
// Tests only: the thread team of the calling thread's last kernel call, and a
// processor count to cap thread counts at instead of the real one (0: real).
int last_team_size();
void set_processor_limit_for_testing(int n);
// The count a call with num_threads = 0 uses from any thread, under the
// calling thread's OpenMP limit; 0 restores the OpenMP default.
void set_default_num_threads(int n);

}  // namespace fastattn
