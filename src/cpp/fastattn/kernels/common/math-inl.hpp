// Vectorised exp(x) and tanh(x), written once against the vector API
// (vec/*.hpp). Included inside namespace fastattn::FASTATTN_ISA by storage-inl.hpp.
//
// exp, method (Cephes): x = n·ln2 + r with n = round(x/ln2) and |r| <= ln2/2, where
// ln2 is split into a short high part (n·ln2_hi is exact) and a low part;
// exp(r) by a polynomial; then exp(x) = 2^n · exp(r), with 2^n built in the
// exponent field.
//
// Accuracy against long-double exp (tests/test_math.py asserts <= 2 ulp on
// every ISA; measured on 4e5 points, scalar and AVX2):
//   float32: 0.98 ulp for -87.3 <= x <= 88   (Cephes degree-5 minimax)
//   float64: 1.15 ulp for -708.3 <= x <= 709 (Taylor to r^13; the first
//            omitted term is < 5e-18 relative)
// Below the lower bound (exp(x) < the smallest normal number) the result is
// exactly 0, so exp(-inf) = 0: masked scores contribute nothing. Above the
// upper bound the result saturates (the kernel only calls exp(x) with x <= 0).
// NaN in gives NaN out: the clamps keep NaN (see max/min in vec/avx2.hpp).

template <class T>
struct ExpConstants;

template <>
struct ExpConstants<float> {
    static constexpr float lo = -87.3365447505f;  // ln(FLT_MIN)
    static constexpr float hi = 88.0f;
    static constexpr float log2e = 1.44269504088896341f;
    static constexpr float ln2_hi = 0.693359375f;
    static constexpr float ln2_lo = -2.12194440e-4f;
};

template <>
struct ExpConstants<double> {
    static constexpr double lo = -708.396418532264;  // ln(DBL_MIN)
    static constexpr double hi = 709.0;
    static constexpr double log2e = 1.4426950408889634;
    static constexpr double ln2_hi = 6.93145751953125e-1;
    static constexpr double ln2_lo = 1.42860682030941723212e-6;
};

// exp(r) for |r| <= ln2/2.
inline Vec<float>::reg exp_reduced(Vec<float>::reg r) {
    using V = Vec<float>;
    V::reg p = V::set1(1.9875691500e-4f);
    p = V::fma(p, r, V::set1(1.3981999507e-3f));
    p = V::fma(p, r, V::set1(8.3334519073e-3f));
    p = V::fma(p, r, V::set1(4.1665795894e-2f));
    p = V::fma(p, r, V::set1(1.6666665459e-1f));
    p = V::fma(p, r, V::set1(5.0000001201e-1f));
    // 1 + r + r²·p(r)
    return V::add(V::fma(p, V::mul(r, r), r), V::set1(1.0f));
}

inline Vec<double>::reg exp_reduced(Vec<double>::reg r) {
    using V = Vec<double>;
    // Taylor coefficients 1/k! for k = 13 down to 1, in Horner form.
    static constexpr double inv_factorial[] = {
        1.0 / 6227020800.0, 1.0 / 479001600.0, 1.0 / 39916800.0, 1.0 / 3628800.0,
        1.0 / 362880.0,     1.0 / 40320.0,     1.0 / 5040.0,     1.0 / 720.0,
        1.0 / 120.0,        1.0 / 24.0,        1.0 / 6.0,        1.0 / 2.0,
        1.0};
    V::reg p = V::set1(inv_factorial[0]);
    for (int k = 1; k < 13; ++k) p = V::fma(p, r, V::set1(inv_factorial[k]));
    return V::fma(p, r, V::set1(1.0));
}

template <class T>
inline typename Vec<T>::reg vexp(typename Vec<T>::reg x) {
    using V = Vec<T>;
    using C = ExpConstants<T>;
    const typename V::reg lo = V::set1(C::lo);
    // Clamp with the bound first so that a NaN x survives (vec contract).
    typename V::reg xc = V::min(V::set1(C::hi), V::max(lo, x));
    typename V::reg n = V::round(V::mul(xc, V::set1(C::log2e)));
    typename V::reg r = V::fma(n, V::set1(-C::ln2_hi), xc);
    r = V::fma(n, V::set1(-C::ln2_lo), r);
    return V::zero_if_less(x, lo, V::scale_pow2(exp_reduced(r), n));
}

// 2^x, the kernel's exp: scores are kept in log2 units (the scale folds in
// log2(e)), so p = 2^(t − m) needs no multiply by log2(e) and no split ln2.
// Method: n = round(x), f = x − n (exact, |f| <= 1/2), 2^f by a polynomial,
// then 2^x = 2^n · 2^f. float32: a degree-6 fit of 2^f (approximation error
// 2e-9, 0.03 ulp); float64: exp(f·ln2) by the Taylor series above. Measured
// against long-double exp2 on 5e5 points (tests/test_math.py asserts <= 2):
// 1.16 ulp float32, 1.15 ulp float64 (scalar; AVX2 0.93 and 0.91).
// Accurate on [lo, hi] = [-125, 127] (float32), [-1021, 1023] (float64): there
// 2^n and 2^n·2^f are normal. Below lo the result is exactly 0, so the
// kernel's p = exp(s − m) drops terms under 2^-125 of the row's largest, far
// below the resolution of a row sum that is >= 1; above hi it saturates.
// NaN in gives NaN out, as for vexp.
template <class T>
struct Exp2Constants;
template <>
struct Exp2Constants<float> {
    static constexpr float lo = -125.0f, hi = 127.0f;
};
template <>
struct Exp2Constants<double> {
    static constexpr double lo = -1021.0, hi = 1023.0;
};

// 2^f for |f| <= 1/2.
inline Vec<float>::reg exp2_reduced(Vec<float>::reg f) {
    using V = Vec<float>;
    V::reg p = V::set1(1.5353361960e-4f);
    p = V::fma(p, f, V::set1(1.3398875017e-3f));
    p = V::fma(p, f, V::set1(9.6184369177e-3f));
    p = V::fma(p, f, V::set1(5.5503323674e-2f));
    p = V::fma(p, f, V::set1(2.4022647738e-1f));
    p = V::fma(p, f, V::set1(6.9314718246e-1f));
    return V::fma(p, f, V::set1(1.0f));
}

inline Vec<double>::reg exp2_reduced(Vec<double>::reg f) {
    using V = Vec<double>;
    return exp_reduced(V::mul(f, V::set1(0.69314718055994530942)));
}

template <class T>
inline typename Vec<T>::reg vexp2(typename Vec<T>::reg x) {
    using V = Vec<T>;
    using C = Exp2Constants<T>;
    const typename V::reg lo = V::set1(C::lo);
    typename V::reg xc = V::min(V::set1(C::hi), V::max(lo, x));
    typename V::reg n = V::round(xc);
    return V::zero_if_less(x, lo, V::scale_pow2(exp2_reduced(V::sub(xc, n)), n));
}

// tanh(x), for softcapping. Cephes: for |x| < 0.625 an odd polynomial
// (float32) or rational function (float64), which avoids the cancellation of
// the exp formula near 0; beyond, tanh(x) = 1 - 2/(exp(2x) + 1), which also
// saturates correctly to ±1 for large |x|. NaN in gives NaN out.
// Accuracy against long-double tanh: 2.97 ulp (float32), 2.99 ulp (float64),
// measured by tests/test_math.py on scalar and AVX2, which asserts <= 4 ulp.
inline Vec<float>::reg tanh_small(Vec<float>::reg x) {
    using V = Vec<float>;
    const V::reg z = V::mul(x, x);
    V::reg p = V::set1(-5.70498872745e-3f);
    p = V::fma(p, z, V::set1(2.06390887954e-2f));
    p = V::fma(p, z, V::set1(-5.37397155531e-2f));
    p = V::fma(p, z, V::set1(1.33314422036e-1f));
    p = V::fma(p, z, V::set1(-3.33332819422e-1f));
    return V::fma(V::mul(p, z), x, x);  // x + x·z·p(z)
}

inline Vec<double>::reg tanh_small(Vec<double>::reg x) {
    using V = Vec<double>;
    const V::reg z = V::mul(x, x);
    V::reg p = V::set1(-9.64399179425052238628e-1);
    p = V::fma(p, z, V::set1(-9.92877231001918586564e1));
    p = V::fma(p, z, V::set1(-1.61468768441708447952e3));
    V::reg q = V::add(z, V::set1(1.12811678491632931402e2));
    q = V::fma(q, z, V::set1(2.23548839060100448583e3));
    q = V::fma(q, z, V::set1(4.84406305325125486048e3));
    return V::fma(V::mul(z, V::div(p, q)), x, x);  // x + x·z·P(z)/Q(z)
}

template <class T>
inline typename Vec<T>::reg vtanh(typename Vec<T>::reg x) {
    using V = Vec<T>;
    const typename V::reg one = V::set1(T(1));
    const typename V::reg large = V::sub(one, V::div(V::set1(T(2)), V::add(vexp<T>(V::add(x, x)), one)));
    return V::select_lt(V::abs(x), V::set1(T(0.625)), tanh_small(x), large);
}
