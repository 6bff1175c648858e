// fastattn._core: the only file that includes pybind11. It unpacks arrays the
// Python API (src/fastattn/_api.py) has already validated and normalised,
// releases the GIL and calls the plain C++ API. C++ exceptions become Python
// ones: std::invalid_argument -> ValueError, std::bad_alloc -> MemoryError.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <stdexcept>
#include <string>

#include "fastattn/sdpa.hpp"

namespace py = pybind11;
using fastattn::DType;

namespace {

DType dtype_of(const py::array& a) {
    if (a.dtype().is(py::dtype::of<float>())) return DType::f32;
    if (a.dtype().is(py::dtype::of<double>())) return DType::f64;
    throw py::type_error("fastattn._core: arrays must be float32 or float64");
}

// Element strides of a 4-D array whose last axis is contiguous.
fastattn::Strides3 strides_of(const py::array& a, const char* name) {
    const auto item = static_cast<py::ssize_t>(a.itemsize());
    if (a.ndim() != 4) throw std::invalid_argument(std::string(name) + " must be 4-D");
    if (a.shape(3) > 1 && a.strides(3) != item)
        throw std::invalid_argument(std::string(name) + ": last axis must be contiguous");
    for (int i = 0; i < 3; ++i)
        if (a.strides(i) % item != 0)
            throw std::invalid_argument(std::string(name) + ": strides must be whole elements");
    return {a.strides(0) / item, a.strides(1) / item, a.strides(2) / item};
}

void require_c_contiguous(const py::array& a, const char* name, DType dtype) {
    if (!(a.flags() & py::array::c_style) || !a.writeable() || dtype_of(a) != dtype)
        throw std::invalid_argument(std::string(name) + " must be a writeable C-contiguous array of q's dtype");
}

// out (and lse, or None) are written in place.
void forward(const py::array& q, const py::array& k, const py::array& v, py::array& out,
             const py::object& lse, double scale, int causal, int num_threads) {
    fastattn::SdpaArgs args;
    args.dtype = dtype_of(q);
    if (dtype_of(k) != args.dtype || dtype_of(v) != args.dtype)
        throw py::type_error("fastattn._core: q, k and v must share one dtype");
    args.q_strides = strides_of(q, "q");
    args.k_strides = strides_of(k, "k");
    args.v_strides = strides_of(v, "v");
    require_c_contiguous(out, "out", args.dtype);
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
        throw std::invalid_argument("fastattn._core: inconsistent shapes");
    if (!lse.is_none()) {
        py::array lse_array = lse.cast<py::array>();
        require_c_contiguous(lse_array, "lse", args.dtype);
        if (lse_array.ndim() != 3 || lse_array.shape(0) != args.batch || lse_array.shape(1) != args.hq ||
            lse_array.shape(2) != args.lq)
            throw std::invalid_argument("fastattn._core: lse must have shape (batch, hq, lq)");
        args.lse = lse_array.mutable_data();
    }
    args.q = q.data();
    args.k = k.data();
    args.v = v.data();
    args.out = out.mutable_data();
    args.scale = scale;
    args.causal = static_cast<fastattn::Causal>(causal);
    args.num_threads = num_threads;
    py::gil_scoped_release release;
    fastattn::sdpa_forward(args);
}

py::array exp_array(const py::array& x) {
    const DType dtype = dtype_of(x);
    if (!(x.flags() & py::array::c_style)) throw std::invalid_argument("x must be C-contiguous");
    py::array y(x.dtype(), std::vector<py::ssize_t>(x.shape(), x.shape() + x.ndim()));
    fastattn::exp_array(dtype, x.data(), y.mutable_data(), x.size());
    return y;
}

}  // namespace

PYBIND11_MODULE(_core, m) {
    m.doc() = "fastattn's C++ kernels (internal: use fastattn.attention)";
    m.def("forward", &forward, py::arg("q"), py::arg("k"), py::arg("v"), py::arg("out"), py::arg("lse"),
          py::arg("scale"), py::arg("causal"), py::arg("num_threads"));
    m.def("exp", &exp_array, py::arg("x"), "exp with the selected ISA's vectorised kernel exp");
    m.def("compiled_isas", &fastattn::compiled_isas);
    m.def("supported_isas", &fastattn::supported_isas);
    m.def("selected_isa", &fastattn::selected_isa);
    m.def("select_isa", &fastattn::select_isa, py::arg("name"));
    m.def("have_openmp", &fastattn::have_openmp);
    m.def("default_num_threads", &fastattn::default_num_threads);
}
