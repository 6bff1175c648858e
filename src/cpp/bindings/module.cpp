// fastattn._core: the only file that includes pybind11. It unpacks arrays the
// Python API (src/fastattn/_api.py) has already validated and normalised,
// releases the GIL and calls the plain C++ API. Its own checks are a backstop
// against misuse of this internal module, never the user-facing validation.
// C++ exceptions become Python ones: std::invalid_argument -> ValueError,
// std::bad_alloc -> MemoryError.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "fastattn/api.hpp"

namespace py = pybind11;
using fastattn::DType;
using fastattn::MathFn;

namespace {

void fail(const std::string& what) { throw std::invalid_argument("fastattn._core: " + what); }

// Element strides of a 4-D array whose last axis is contiguous.
fastattn::Strides3 strides_of(const py::array& a, const char* name, const py::dtype& dtype) {
    const py::ssize_t item = a.itemsize();
    if (!a.dtype().equal(dtype)) fail(std::string(name) + " must have q's dtype");
    if (a.ndim() != 4) fail(std::string(name) + " must be 4-D");
    if (a.shape(3) > 1 && a.strides(3) != item) fail(std::string(name) + ": last axis must be contiguous");
    for (int i = 0; i < 3; ++i)
        if (a.strides(i) % item != 0) fail(std::string(name) + ": strides must be whole elements");
    return {a.strides(0) / item, a.strides(1) / item, a.strides(2) / item};
}

// The data of an optional C-contiguous array of `size` elements of type E, or null for None.
template <class E>
const E* optional_data(const py::object& obj, py::ssize_t size, const char* name) {
    if (obj.is_none()) return nullptr;
    const auto a = obj.cast<py::array>();
    if (!a.dtype().equal(py::dtype::of<E>()) || !(a.flags() & py::array::c_style) || a.size() != size)
        fail(std::string(name) + " must be a C-contiguous array of " + std::to_string(size) + " elements");
    return static_cast<const E*>(a.data());
}

void require_c_contiguous(const py::array& a, const char* name, const py::dtype& dtype, bool written) {
    if (!(a.flags() & py::array::c_style) || (written && !a.writeable()) || !a.dtype().equal(dtype))
        fail(std::string(name) + " must be a " + (written ? "writeable " : "") + "C-contiguous array of its dtype");
}

// The options of a call cross the binding as one tuple, fastattn._contract.Options, read
// by position: this is their one list in C++ (the order of _contract.AttentionOptions, the
// one list in Python; _core.option_fields() returns these names and a test compares them).
#define FASTATTN_OPTIONS(X) \
    X(causal) X(align) X(scale) X(mask) X(kv_lengths) X(q_lengths) X(window) X(alibi_slopes) X(softcap) \
    X(precision) X(sinks)

#define FASTATTN_OPTION_INDEX(name) k_##name,
enum OptionIndex : int { FASTATTN_OPTIONS(FASTATTN_OPTION_INDEX) kOptionCount };
#undef FASTATTN_OPTION_INDEX

std::vector<std::string> option_fields() {
#define FASTATTN_OPTION_NAME(name) #name,
    return {FASTATTN_OPTIONS(FASTATTN_OPTION_NAME)};
#undef FASTATTN_OPTION_NAME
}

// The mask view (batch dims..., hq, lq, lk), stride 0 where broadcast, or None: its kind from
// its dtype, its strides in elements, and one element offset per flattened batch index (its
// batch axes need not merge into one stride), into args.mask and `offsets`.
void read_mask(const py::handle& obj, fastattn::AttentionArgs& args, std::vector<int64_t>& offsets) {
    if (obj.is_none()) return;
    const auto m = py::reinterpret_borrow<py::array>(obj);
    const bool boolean = m.dtype().equal(py::dtype::of<bool>());
    const py::dtype additive = args.dtype == DType::f64 ? py::dtype::of<double>() : py::dtype::of<float>();
    if (!boolean && !m.dtype().equal(additive)) fail("mask must be bool or of the compute dtype");
    const py::ssize_t item = m.itemsize(), nb = m.ndim() - 3;
    if (nb < 0) fail("mask must have (hq, lq, lk) axes");
    int64_t batch = 1;
    for (py::ssize_t i = 0; i < m.ndim(); ++i) {
        if (m.strides(i) % item != 0) fail("mask strides must be whole elements");
        if (i < nb) batch *= m.shape(i);
    }
    if (batch != args.batch || m.shape(nb) != args.hq || m.shape(nb + 1) != args.lq || m.shape(nb + 2) != args.lk)
        fail("mask must have shape (batch..., hq, lq, lk)");
    offsets.assign(static_cast<size_t>(batch), 0);
    for (int64_t b = 0; b < batch; ++b)  // unravel b over the batch axes, last fastest
        for (int64_t i = nb - 1, rest = b; i >= 0; --i) {
            offsets[b] += rest % m.shape(i) * (m.strides(i) / item);
            rest /= m.shape(i);
        }
    args.mask.kind = boolean ? fastattn::MaskKind::boolean : fastattn::MaskKind::additive;
    args.mask.data = m.data();
    args.mask.batch_offsets = offsets.data();
    args.mask.head = m.strides(nb) / item;
    args.mask.row = m.strides(nb + 1) / item;
    args.mask.col = m.strides(nb + 2) / item;
}

// The options tuple into args (after q's dtype, batch, hq, lq and lk are set); `mask_offsets`
// holds the mask's batch offsets for the call's duration.
void read_options(const py::tuple& o, fastattn::AttentionArgs& args, std::vector<int64_t>& mask_offsets) {
    if (o.size() != kOptionCount) fail("options must be a tuple of " + std::to_string(kOptionCount) + " fields");
    args.causal = static_cast<fastattn::Causal>(o[k_causal].cast<int>());
    args.align = static_cast<fastattn::Align>(o[k_align].cast<int>());
    args.scale = o[k_scale].cast<double>();
    read_mask(o[k_mask], args, mask_offsets);
    args.kv_lengths = optional_data<int64_t>(o[k_kv_lengths], args.batch, "kv_lengths");
    args.q_lengths = optional_data<int64_t>(o[k_q_lengths], args.batch, "q_lengths");
    const auto window = o[k_window].cast<std::pair<int64_t, int64_t>>();
    args.window_left = window.first;
    args.window_right = window.second;
    args.alibi_slopes = optional_data<double>(o[k_alibi_slopes], args.batch * args.hq, "alibi_slopes");
    args.softcap = o[k_softcap].cast<double>();
    args.sinks = optional_data<double>(o[k_sinks], args.batch * args.hq, "sinks");
    args.precision = static_cast<fastattn::Precision>(o[k_precision].cast<int>());
}

// q's dtype as the kernel's code (the contract accepted it: bfloat16 is the one other 2-byte type).
DType dtype_of(const py::array& q) {
    const py::dtype dtype = q.dtype();
    if (dtype.equal(py::dtype::of<float>())) return DType::f32;
    if (dtype.equal(py::dtype::of<double>())) return DType::f64;
    if (dtype.itemsize() != 2) fail("q must be float32, float64, float16 or bfloat16");
    return dtype.num() == 23 /* NPY_HALF */ ? DType::f16 : DType::bf16;
}

// The AttentionArgs of q, k, v, the forward output `out` (written by forward, read by
// backward), the options tuple and the thread count.
fastattn::AttentionArgs unpack(const py::array& q, const py::array& k, const py::array& v, const py::array& out,
                               bool out_written, const py::tuple& options, int num_threads,
                               std::vector<int64_t>& mask_offsets) {
    fastattn::AttentionArgs args;
    args.dtype = dtype_of(q);
    args.q_strides = strides_of(q, "q", q.dtype());
    args.k_strides = strides_of(k, "k", q.dtype());
    args.v_strides = strides_of(v, "v", q.dtype());
    // out: q's dtype, or float32 for 16-bit inputs (the output before rounding).
    args.out_wide = (args.dtype == DType::f16 || args.dtype == DType::bf16) && out.dtype().equal(py::dtype::of<float>());
    // The forward writes out through its strides (a view with a contiguous last axis, e.g. the
    // (batch, lq, hq, dv) layout a model wants next); the backward reads it C-contiguous.
    const py::dtype out_dtype = args.out_wide ? out.dtype() : q.dtype();
    if (out_written) {
        if (!out.writeable()) fail("out must be writeable");
    } else {
        require_c_contiguous(out, "out", out_dtype, false);
    }
    args.out_strides = strides_of(out, "out", out_dtype);
    args.batch = q.shape(0);
    args.hq = q.shape(1);
    args.lq = q.shape(2);
    args.d = q.shape(3);
    args.hkv = k.shape(1);
    args.lk = k.shape(2);
    args.dv = v.shape(3);
    if (k.shape(0) != args.batch || v.shape(0) != args.batch || v.shape(1) != args.hkv ||
        v.shape(2) != args.lk || k.shape(3) != args.d || out.ndim() != 4 || out.shape(0) != args.batch ||
        out.shape(1) != args.hq || out.shape(2) != args.lq || out.shape(3) != args.dv)
        fail("inconsistent shapes");
    args.q = q.data();
    args.k = k.data();
    args.v = v.data();
    args.out = const_cast<void*>(out.data());  // written only by forward, which required it writeable
    args.num_threads = num_threads;
    read_options(options, args, mask_offsets);
    return args;
}

// A (batch, hq, lq) C-contiguous array of the compute dtype (writeable when
// `written`), or None (null).
void* lse_data(const fastattn::AttentionArgs& args, const py::object& lse, const char* name, bool written) {
    if (lse.is_none()) return nullptr;
    auto array = lse.cast<py::array>();
    require_c_contiguous(array, name, args.dtype == DType::f64 ? py::dtype::of<double>() : py::dtype::of<float>(),
                         written);
    if (array.ndim() != 3 || array.shape(0) != args.batch || array.shape(1) != args.hq || array.shape(2) != args.lq)
        fail(std::string(name) + " must have shape (batch, hq, lq)");
    return const_cast<void*>(array.data());  // written only where `written` required it writeable
}

// lse and lse_lo (each None, or a writeable C-contiguous (batch, hq, lq) array of the compute dtype) into args.
void set_lse(fastattn::AttentionArgs& args, const py::object& lse, const py::object& lse_lo) {
    args.lse = lse_data(args, lse, "lse", true);
    args.lse_lo = lse_data(args, lse_lo, "lse_lo", true);
    if (args.lse_lo && !args.lse) fail("lse_lo without lse");
}

// out (and lse, lse_lo, or None: in the compute dtype) are written in place.
void forward(const py::array& q, const py::array& k, const py::array& v, py::array& out, const py::object& lse,
             const py::object& lse_lo, const py::tuple& options, int num_threads) {
    std::vector<int64_t> mask_offsets;
    fastattn::AttentionArgs args = unpack(q, k, v, out, true, options, num_threads, mask_offsets);
    set_lse(args, lse, lse_lo);
    py::gil_scoped_release release;
    fastattn::attention_forward(args);
}

// The forward over a KVCache's pools (num_blocks, hkv, block_size, d | dv) read
// through `table` (batch, width) int32; int8 pools come with their float32
// scales (num_blocks, hkv, block_size), else None. kv_lengths is required.
void forward_paged(const py::array& q, const py::array& k_pool, const py::array& v_pool, py::array& out,
                   const py::object& lse, const py::array& table, const py::object& k_scale,
                   const py::object& v_scale, const py::tuple& options, int num_threads) {
    fastattn::AttentionArgs args;
    args.dtype = dtype_of(q);
    const bool int8 = k_pool.dtype().equal(py::dtype::of<int8_t>());
    const py::dtype pool_dtype = int8 ? py::dtype::of<int8_t>() : q.dtype();
    args.q_strides = strides_of(q, "q", q.dtype());
    require_c_contiguous(k_pool, "k_pool", pool_dtype, false);
    require_c_contiguous(v_pool, "v_pool", pool_dtype, false);
    require_c_contiguous(out, "out", q.dtype(), true);
    args.out_strides = strides_of(out, "out", q.dtype());
    require_c_contiguous(table, "table", py::dtype::of<int32_t>(), false);
    if (q.ndim() != 4 || k_pool.ndim() != 4 || v_pool.ndim() != 4 || table.ndim() != 2 || out.ndim() != 4)
        fail("q, the pools and out must be 4-D, the table 2-D");
    args.batch = q.shape(0);
    args.hq = q.shape(1);
    args.lq = q.shape(2);
    args.d = q.shape(3);
    args.hkv = k_pool.shape(1);
    args.dv = v_pool.shape(3);
    fastattn::PagedKv& pages = args.paged;
    pages.num_blocks = k_pool.shape(0);
    pages.block_size = k_pool.shape(2);
    pages.table_width = table.shape(1);
    if (v_pool.shape(0) != pages.num_blocks || v_pool.shape(1) != args.hkv || v_pool.shape(2) != pages.block_size ||
        k_pool.shape(3) != args.d || table.shape(0) != args.batch || out.shape(0) != args.batch ||
        out.shape(1) != args.hq || out.shape(2) != args.lq || out.shape(3) != args.dv)
        fail("inconsistent shapes");
    args.lk = std::max<int64_t>(1, pages.table_width * pages.block_size);
    args.k_strides = {k_pool.strides(0) / k_pool.itemsize(), k_pool.strides(1) / k_pool.itemsize(),
                      k_pool.strides(2) / k_pool.itemsize()};
    args.v_strides = {v_pool.strides(0) / v_pool.itemsize(), v_pool.strides(1) / v_pool.itemsize(),
                      v_pool.strides(2) / v_pool.itemsize()};
    pages.table = static_cast<const int32_t*>(table.data());
    pages.int8 = int8;
    const py::ssize_t scales = pages.num_blocks * args.hkv * pages.block_size;
    pages.k_scale = optional_data<float>(k_scale, scales, "k_scale");
    pages.v_scale = optional_data<float>(v_scale, scales, "v_scale");
    if (int8 != (pages.k_scale != nullptr) || int8 != (pages.v_scale != nullptr))
        fail("int8 pools need their scales, other pools none");
    args.q = q.data();
    args.k = k_pool.data();
    args.v = v_pool.data();
    args.out = out.mutable_data();
    args.num_threads = num_threads;
    std::vector<int64_t> mask_offsets;
    read_options(options, args, mask_offsets);
    set_lse(args, lse, py::none());
    py::gil_scoped_release release;
    fastattn::attention_forward(args);
}

// dq, dk, dv are written in place; lse (and lse_lo, or None) are in the compute dtype.
void backward(const py::array& dout, const py::array& out, const py::array& lse, const py::object& lse_lo,
              py::array& dq, py::array& dk, py::array& dv, const py::array& q, const py::array& k, const py::array& v,
              const py::tuple& options, int num_threads) {
    std::vector<int64_t> mask_offsets;
    const fastattn::AttentionArgs args = unpack(q, k, v, out, false, options, num_threads, mask_offsets);
    fastattn::GradArgs grad;
    require_c_contiguous(dout, "dout", q.dtype(), false);
    const std::array<std::pair<const py::array*, const py::array*>, 4> same_shape = {
        {{&dout, &out}, {&dq, &q}, {&dk, &k}, {&dv, &v}}};
    for (const auto& pair : same_shape) {
        const py::array& a = *pair.first;
        const py::array& like = *pair.second;
        if (a.ndim() != 4) fail("gradient arrays must be 4-D");
        for (int i = 0; i < 4; ++i)
            if (a.shape(i) != like.shape(i)) fail("gradient arrays must have the shapes of out, q, k, v");
    }
    require_c_contiguous(dq, "dq", q.dtype(), true);
    require_c_contiguous(dk, "dk", q.dtype(), true);
    require_c_contiguous(dv, "dv", q.dtype(), true);
    grad.dout = dout.data();
    grad.lse = lse_data(args, lse, "lse", false);
    grad.lse_lo = lse_data(args, lse_lo, "lse_lo", false);
    grad.dq = dq.mutable_data();
    grad.dk = dk.mutable_data();
    grad.dv = dv.mutable_data();
    py::gil_scoped_release release;
    fastattn::attention_backward(args, grad);
}

// Tile tests (tests/test_engines.py): the engine `isa` runs for b's dtype at `precision`, on
// scores (a, b: rows × depth, keys × depth, b's dtype) or weighted sums (a: float32 weights
// rows × terms, or terms × rows when transposed; b: terms × cols), into out (float32, rows × cols,
// read as C by the sums). Last axes contiguous; a and b may have any row stride.
void engine_products(const std::string& isa, const py::array& a, const py::array& b, py::array& out, int precision,
                     bool sums, bool transposed, bool skip_zero, int64_t lo, int64_t hi, double scale,
                     const py::object& alpha) {
    fastattn::ProductArgs p;
    p.dtype = dtype_of(b);
    p.precision = static_cast<fastattn::Precision>(precision);
    p.sums = sums;
    p.transposed = transposed;
    p.skip_zero = skip_zero;
    if (a.ndim() != 2 || b.ndim() != 2 || out.ndim() != 2) fail("a, b and out must be 2-D");
    if (a.strides(1) != a.itemsize() || b.strides(1) != b.itemsize()) fail("a and b need contiguous last axes");
    if (!sums && !a.dtype().equal(b.dtype())) fail("scores need a and b of one dtype");
    if (sums && !a.dtype().equal(py::dtype::of<float>())) fail("weights must be float32");
    require_c_contiguous(out, "out", py::dtype::of<float>(), true);
    p.a = a.data();
    p.b = b.data();
    p.a_stride = a.strides(0) / a.itemsize();
    p.b_stride = b.strides(0) / b.itemsize();
    p.rows = out.shape(0);
    p.cols = out.shape(1);
    p.depth = sums ? (transposed ? a.shape(0) : a.shape(1)) : a.shape(1);
    if ((sums && (b.shape(0) != p.depth || b.shape(1) != p.cols || (transposed ? a.shape(1) : a.shape(0)) != p.rows)) ||
        (!sums && (b.shape(1) != p.depth || a.shape(0) != p.rows || b.shape(0) != p.cols)))
        fail("inconsistent shapes");
    p.lo = lo;
    p.hi = hi;
    if (sums && !(0 <= lo && lo <= hi && hi <= p.depth)) fail("need 0 <= lo <= hi <= terms");
    p.scale = scale;
    p.alpha = optional_data<float>(alpha, p.rows, "alpha");
    if (sums && !p.alpha) fail("sums need alpha");
    p.out = static_cast<float*>(out.mutable_data());
    fastattn::engine_products(isa, p);
}

py::array math_array(const std::string& fn, const py::array& x) {
    DType dtype;
    if (x.dtype().equal(py::dtype::of<float>()))
        dtype = DType::f32;
    else if (x.dtype().equal(py::dtype::of<double>()))
        dtype = DType::f64;
    else
        throw py::type_error("x must be float32 or float64");
    MathFn f = MathFn::exp;
    if (fn == "exp2")
        f = MathFn::exp2;
    else if (fn == "tanh")
        f = MathFn::tanh;
    else if (fn != "exp")
        fail("fn must be 'exp', 'exp2' or 'tanh'");
    if (!(x.flags() & py::array::c_style)) fail("x must be C-contiguous");
    py::array y(x.dtype(), std::vector<py::ssize_t>(x.shape(), x.shape() + x.ndim()));
    fastattn::math_array(f, dtype, x.data(), y.mutable_data(), x.size());
    return y;
}

}  // namespace

PYBIND11_MODULE(_core, m) {
    m.doc() = "fastattn's C++ kernels (internal: use fastattn.attention)";
    // Options: the call's normalised fastattn._contract.Options tuple (FASTATTN_OPTIONS above).
    m.def("forward", &forward, py::arg("q"), py::arg("k"), py::arg("v"), py::arg("out"), py::arg("lse"),
          py::arg("lse_lo"), py::arg("options"), py::arg("num_threads"));
    m.def("forward_paged", &forward_paged, py::arg("q"), py::arg("k_pool"), py::arg("v_pool"), py::arg("out"),
          py::arg("lse"), py::arg("table"), py::arg("k_scale"), py::arg("v_scale"), py::arg("options"),
          py::arg("num_threads"));
    m.def("backward", &backward, py::arg("dout"), py::arg("out"), py::arg("lse"), py::arg("lse_lo"), py::arg("dq"),
          py::arg("dk"), py::arg("dv"), py::arg("q"), py::arg("k"), py::arg("v"), py::arg("options"),
          py::arg("num_threads"));
    m.def("option_fields", &option_fields, "the names of the options tuple's fields, in the order read");
    m.def("_engine_products", &engine_products, py::arg("isa"), py::arg("a"), py::arg("b"), py::arg("out"),
          py::arg("precision"), py::arg("sums"), py::arg("transposed"), py::arg("skip_zero"), py::arg("lo"),
          py::arg("hi"), py::arg("scale"), py::arg("alpha"), "tests: one engine's products (api.hpp, ProductArgs)");
    m.def("math", &math_array, py::arg("fn"), py::arg("x"),
          "exp, exp2 or tanh with the selected ISA's vectorised kernel implementation");
    m.def(
        "engines",
        [] {
            std::vector<std::tuple<int, int, std::string>> rows;
            for (const fastattn::EngineName& e : fastattn::engine_names())
                rows.emplace_back(static_cast<int>(e.dtype), static_cast<int>(e.precision), e.name);
            return rows;
        },
        "(dtype code, precision code, engine name) for each dtype and precision of the selected ISA");
    m.def("compiled_isas", &fastattn::compiled_isas);
    m.def("supported_isas", &fastattn::supported_isas);
    m.def("selected_isa", &fastattn::selected_isa);
    m.def("select_isa", &fastattn::select_isa, py::arg("name"));
    m.def("have_openmp", &fastattn::have_openmp);
    m.def("default_num_threads", &fastattn::default_num_threads);
    m.def("set_default_num_threads", &fastattn::set_default_num_threads, py::arg("n"));
    // Tests only (tests/conftest.py, eight_processors): the team size of this thread's last call, and a
    // processor count to cap at instead of the real one, so that 2 cores can run 8 threads.
    m.def("_last_team_size", &fastattn::last_team_size);
    m.def("_last_engine", &fastattn::last_engine);
    m.def("_set_amx_model_for_testing", &fastattn::set_amx_model_for_testing, py::arg("model"));
    m.def("_team_fp_env", &fastattn::team_fp_env, py::arg("threads"));
    m.def("_set_processor_limit_for_testing", &fastattn::set_processor_limit_for_testing, py::arg("n"));
}
