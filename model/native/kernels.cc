// Native CPU kernels of the BM layers, built at first use by model/native/__init__.py with the
// machine's own compiler and -march=native. Tensors are in (B, H, W, C) order ("NHWC") and
// weights in (k, k, C, Op) order, both contiguous, with Op a multiple of 16 (the caller pads it).
// The outputs of one position form SIMD vectors (GCC/Clang vector extensions: the widest the
// target has) and R neighbouring positions' accumulators stay in registers, so each weight vector
// loaded serves R windows; the windows are read in place (no im2col buffer).
//
// Max-times convolution of the hard-max BM branch, forward (value and argmax) and backward:
//
//   out[b, i, j, o] = max_{ky, kx, c} uh[b, i+ky, j+kx, c] * pk[(ky*k + kx)*C + c, o]
//
// am holds each output's first maximising row of pk (ties go to the first, as torch.max's do on
// the CPU).
//
// Sum-of-products convolution (a valid conv2d) and its weight gradient, for float64: the smooth
// branches need float64 above a small alpha, where PyTorch's CPU convolution has no fast path.
//
// The smooth branches' elementwise chains in float32 (model/maxops.py, _SmoothBranch): the powers
// of the normalised inputs and weights, the branch from its convolutions, the gradients of those
// convolutions, and the chain rule back to the inputs and alpha, each fused into one pass. exp
// and log are Cephes's single-precision polynomials (within 2 ulp of the C library's), so the
// passes vectorise without a vector maths library. They split their work over up to nt threads
// (the caller passes PyTorch's intra-op thread count).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <thread>
#include <type_traits>
#include <vector>

#if defined(__AVX512F__)
#define VEC_BYTES 64
#elif defined(__AVX__)
#define VEC_BYTES 32
#else
#define VEC_BYTES 16
#endif

namespace {

template <typename T> struct Vec;
template <> struct Vec<float> {
    typedef float v __attribute__((vector_size(VEC_BYTES)));
    typedef int32_t i __attribute__((vector_size(VEC_BYTES)));
    typedef int32_t is;
};
template <> struct Vec<double> {
    typedef double v __attribute__((vector_size(VEC_BYTES)));
    typedef int64_t i __attribute__((vector_size(VEC_BYTES)));
    typedef int64_t is;
};

constexpr int R = 4;

// Calls f(nr, b, i, j, o0) for every block of nr = R neighbouring output positions (the row's
// remainder one at a time) and every L outputs from o0; nr is a compile-time constant.
template <int L, typename F>
inline __attribute__((always_inline)) void each_block(int64_t B, int64_t Ho, int64_t Wo,
                                                      int64_t Op, F f) {
    for (int64_t b = 0; b < B; b++)
        for (int64_t i = 0; i < Ho; i++)
            for (int64_t o0 = 0; o0 < Op; o0 += L) {
                int64_t j = 0;
                for (; j + R <= Wo; j += R) f(std::integral_constant<int, R>{}, b, i, j, o0);
                for (; j < Wo; j++) f(std::integral_constant<int, 1>{}, b, i, j, o0);
            }
}

// Calls f(row, c, kk) for each of the k*k*C taps of the window at (b, i, j): row points at the
// window's pixel (i+ky, j+kx), c is the channel and kk the tap's row of the weight matrix.
template <typename T, typename F>
inline __attribute__((always_inline)) void each_tap(const T *x, int64_t H, int64_t W, int64_t C,
                                                    int64_t k, int64_t b, int64_t i, int64_t j,
                                                    F f) {
    int64_t kk = 0;
    for (int64_t ky = 0; ky < k; ky++)
        for (int64_t kx = 0; kx < k; kx++) {
            const T *row = x + ((b * H + i + ky) * W + j + kx) * C;
            for (int64_t c = 0; c < C; c++, kk++) f(row, c, kk);
        }
}

template <typename T, int NR>
inline __attribute__((always_inline)) void block(const T *uh, const T *pk, T *out, int32_t *am,
                                                 int64_t H, int64_t W, int64_t C, int64_t k,
                                                 int64_t Op, int64_t b, int64_t i, int64_t j,
                                                 int64_t o0, int64_t Ho, int64_t Wo) {
    typedef typename Vec<T>::v V;
    typedef typename Vec<T>::i I;
    constexpr int L = VEC_BYTES / sizeof(T);
    V acc[NR];
    I idx[NR];
    for (int r = 0; r < NR; r++) {
        for (int l = 0; l < L; l++) acc[r][l] = -INFINITY;
        idx[r] = I{};
    }
    each_tap(uh, H, W, C, k, b, i, j, [&](const T *row, int64_t c, int64_t kk) {
        V w;
        std::memcpy(&w, pk + kk * Op + o0, sizeof(V));
        I kv = I{} + (typename Vec<T>::is)kk;
        for (int r = 0; r < NR; r++) {
            V p = row[r * C + c] * w;
            I m = p > acc[r];
            acc[r] = m ? p : acc[r];
            idx[r] = m ? kv : idx[r];
        }
    });
    for (int r = 0; r < NR; r++) {
        int64_t at = ((b * Ho + i) * Wo + j + r) * Op + o0;
        std::memcpy(out + at, &acc[r], sizeof(V));
        for (int l = 0; l < L; l++) am[at + l] = (int32_t)idx[r][l];
    }
}

template <typename T>
void forward(const T *uh, const T *pk, T *out, int32_t *am, int64_t B, int64_t H, int64_t W,
             int64_t C, int64_t k, int64_t Op) {
    int64_t Ho = H - k + 1, Wo = W - k + 1;
    each_block<VEC_BYTES / sizeof(T)>(B, Ho, Wo, Op, [&](auto nr, int64_t b, int64_t i,
                                                         int64_t j, int64_t o0) {
        block<T, decltype(nr)::value>(uh, pk, out, am, H, W, C, k, Op, b, i, j, o0, Ho, Wo);
    });
}

// gu[b, i+ky, j+kx, c] += g * pk[kk, o] and gv[kk, o] += g * uh[b, i+ky, j+kx, c] at each
// output's argmax kk = (ky*k + kx)*C + c, for the first O of the Op outputs; g is (B, Ho, Wo, O),
// am (B, Ho, Wo, Op), gv (k*k*C, Op). gu and gv start zeroed; either may be null.
template <typename T>
void backward(const T *uh, const T *pk, const int32_t *am, const T *g, T *gu, T *gv, int64_t B,
              int64_t H, int64_t W, int64_t C, int64_t k, int64_t O, int64_t Op) {
    int64_t Ho = H - k + 1, Wo = W - k + 1;
    for (int64_t b = 0; b < B; b++)
        for (int64_t i = 0; i < Ho; i++)
            for (int64_t j = 0; j < Wo; j++) {
                int64_t pos = (b * Ho + i) * Wo + j;
                for (int64_t o = 0; o < O; o++) {
                    int64_t kk = am[pos * Op + o];
                    int64_t c = kk % C, t = kk / C, kx = t % k, ky = t / k;
                    int64_t src = ((b * H + i + ky) * W + j + kx) * C + c;
                    T go = g[pos * O + o];
                    if (gu) gu[src] += go * pk[kk * Op + o];
                    if (gv) gv[kk * Op + o] += go * uh[src];
                }
            }
}

// out[b, i, j, o] = sum_{ky, kx, c} x[b, i+ky, j+kx, c] * w[(ky*k + kx)*C + c, o]
template <typename T, int NR>
inline __attribute__((always_inline)) void cblock(const T *x, const T *w, T *out, int64_t H,
                                                  int64_t W, int64_t C, int64_t k, int64_t Op,
                                                  int64_t b, int64_t i, int64_t j, int64_t o0,
                                                  int64_t Ho, int64_t Wo) {
    typedef typename Vec<T>::v V;
    V acc[NR];
    for (int r = 0; r < NR; r++) acc[r] = V{};
    each_tap(x, H, W, C, k, b, i, j, [&](const T *row, int64_t c, int64_t kk) {
        V wv;
        std::memcpy(&wv, w + kk * Op + o0, sizeof(V));
        for (int r = 0; r < NR; r++) acc[r] += row[r * C + c] * wv;
    });
    for (int r = 0; r < NR; r++)
        std::memcpy(out + ((b * Ho + i) * Wo + j + r) * Op + o0, &acc[r], sizeof(V));
}

template <typename T>
void conv(const T *x, const T *w, T *out, int64_t B, int64_t H, int64_t W, int64_t C, int64_t k,
          int64_t Op) {
    int64_t Ho = H - k + 1, Wo = W - k + 1;
    each_block<VEC_BYTES / sizeof(T)>(B, Ho, Wo, Op, [&](auto nr, int64_t b, int64_t i,
                                                         int64_t j, int64_t o0) {
        cblock<T, decltype(nr)::value>(x, w, out, H, W, C, k, Op, b, i, j, o0, Ho, Wo);
    });
}

// gw[(ky*k + kx)*C + c, o] += sum_{b, i, j} x[b, i+ky, j+kx, c] * g[b, i, j, o]; g is
// (B, Ho, Wo, Op). The input gradient is conv() of the padded g with the flipped weight.
template <typename T, int NR>
inline __attribute__((always_inline)) void wblock(const T *x, const T *g, T *gw, int64_t H,
                                                  int64_t W, int64_t C, int64_t k, int64_t Op,
                                                  int64_t b, int64_t i, int64_t j, int64_t o0,
                                                  int64_t Ho, int64_t Wo) {
    typedef typename Vec<T>::v V;
    V gv[NR];
    for (int r = 0; r < NR; r++)
        std::memcpy(&gv[r], g + ((b * Ho + i) * Wo + j + r) * Op + o0, sizeof(V));
    each_tap(x, H, W, C, k, b, i, j, [&](const T *row, int64_t c, int64_t kk) {
        V a;
        std::memcpy(&a, gw + kk * Op + o0, sizeof(V));
        for (int r = 0; r < NR; r++) a += row[r * C + c] * gv[r];
        std::memcpy(gw + kk * Op + o0, &a, sizeof(V));
    });
}

template <typename T>
void conv_wgrad(const T *x, const T *g, T *gw, int64_t B, int64_t H, int64_t W, int64_t C,
                int64_t k, int64_t Op) {
    int64_t Ho = H - k + 1, Wo = W - k + 1;
    each_block<VEC_BYTES / sizeof(T)>(B, Ho, Wo, Op, [&](auto nr, int64_t b, int64_t i,
                                                         int64_t j, int64_t o0) {
        wblock<T, decltype(nr)::value>(x, g, gw, H, W, C, k, Op, b, i, j, o0, Ho, Wo);
    });
}

// -- the smooth branches' elementwise passes (float32) ------------------------------------------
typedef Vec<float>::v VF;
typedef Vec<float>::i VI;
constexpr int LF = VEC_BYTES / sizeof(float);

inline VF sel(VI m, VF a, VF b) { return (VF)(((VI)a & m) | ((VI)b & ~m)); }
inline VF splat(float x) { return VF{} + x; }

// exp(x), 0 below -87.34 (where the result would be subnormal)
inline VF vexp(VF x) {
    VI under = x < -87.336544f;
    x = sel(x > 88.3762626647949f, splat(88.3762626647949f), x);
    x = sel(under, splat(0.0f), x);
    VF fx = x * 1.44269504088896341f + 0.5f;
    VI n = __builtin_convertvector(fx, VI);
    VF t = __builtin_convertvector(n, VF);
    n += (VI)(t > fx);  // truncation to floor: -1 where t rounded up
    t = __builtin_convertvector(n, VF);
    x = x - t * 0.693359375f - t * -2.12194440e-4f;
    VF z = x * x;
    VF y = splat(1.9875691500e-4f);
    y = y * x + 1.3981999507e-3f;
    y = y * x + 8.3334519073e-3f;
    y = y * x + 4.1665795894e-2f;
    y = y * x + 1.6666665459e-1f;
    y = y * x + 5.0000001201e-1f;
    y = y * z + x + 1.0f;
    VF scale = (VF)((n + 127) << 23);
    return sel(under, splat(0.0f), y * scale);
}

// log(x) for x > 0 (subnormals included); the caller masks x <= 0
inline VF vlog(VF x) {
    VI small = x < 1.17549435e-38f;
    x = sel(small, x * 8388608.0f, x);
    VI bits = (VI)x;
    VI e = ((bits >> 23) & 0xff) - 126 + (small & -23);
    VF m = (VF)((bits & 0x807fffff) | 0x3f000000);  // in [0.5, 1)
    VI lt = m < 0.707106781186547524f;
    e += lt;
    m = sel(lt, m + m, m) - 1.0f;
    VF ef = __builtin_convertvector(e, VF);
    VF z = m * m;
    VF y = splat(7.0376836292e-2f);
    y = y * m - 1.1514610310e-1f;
    y = y * m + 1.1676998740e-1f;
    y = y * m - 1.2420140846e-1f;
    y = y * m + 1.4249322787e-1f;
    y = y * m - 1.6668057665e-1f;
    y = y * m + 2.0000714765e-1f;
    y = y * m - 2.4999993993e-1f;
    y = y * m + 3.3333331174e-1f;
    y = y * m * z;
    y += ef * -2.12194440e-4f;
    y += -0.5f * z;
    return m + y + ef * 0.693359375f;
}

inline VF load(const float *p, int64_t n) {
    VF v = VF{};
    std::memcpy(&v, p, n * sizeof(float));
    return v;
}
inline void store(float *p, VF v, int64_t n) { std::memcpy(p, &v, n * sizeof(float)); }

// Calls f(i, n) for each run of n <= LF elements from i, over [0, total).
template <typename F> inline __attribute__((always_inline)) void each_vec(int64_t total, F f) {
    int64_t i = 0;
    for (; i + LF <= total; i += LF) f(i, (int64_t)LF);
    if (i < total) f(i, total - i);
}

// Runs f(begin, end, part) over [0, total) cut into up to nt parts of at least grain items (this
// thread takes part 0).
template <typename F> void parallel(int64_t total, int nt, int64_t grain, F f) {
    int64_t parts = std::max<int64_t>(1, std::min<int64_t>(nt, total / grain));
    int64_t step = (total + parts - 1) / parts;
    step = (step + LF - 1) / LF * LF;  // whole vectors, but for the last part's tail
    parts = (total + step - 1) / step;
    std::vector<std::thread> ts;
    for (int64_t p = 1; p < parts; p++)
        ts.emplace_back(f, p * step, std::min(total, (p + 1) * step), (int)p);
    if (total > 0) f(0, std::min(total, step), 0);
    for (auto &t : ts) t.join();
}

constexpr int64_t GRAIN = 1 << 15;  // elements below which a pass stays on one thread

enum Kind { LSE = 0, LMORPH = 1, SMORPH = 2 };

// p = x^a, lx = ln x, pl = x^a ln x (lx and pl may be null); 0 where x <= 0.
void powers(const float *x, int64_t total, float a, float *p, float *lx, float *pl, int nt) {
    parallel(total, nt, GRAIN, [&](int64_t i0, int64_t i1, int) {
        each_vec(i1 - i0, [&](int64_t j, int64_t n) {
            int64_t i = i0 + j;
            VF xv = load(x + i, n);
            VI pos = xv > 0.0f;
            VF l = sel(pos, vlog(sel(pos, xv, splat(1.0f))), splat(0.0f));
            VF pv = sel(pos, vexp(a * l), splat(0.0f));
            store(p + i, pv, n);
            if (lx) store(lx + i, l, n);
            if (pl) store(pl + i, pv * l, n);
        });
    });
}

// The branch from its convolutions, den and num (B, O, S; den's batches dstride apart): den^(1/a),
// num/den or exp(num/den), times scale[b, o]; 0 where den <= 0.
void finish(const float *den, const float *num, const float *scale, int64_t B, int64_t O,
            int64_t S, int64_t dstride, float a, int kind, float *out, int nt) {
    parallel(B * O, nt, std::max<int64_t>(1, GRAIN / S), [&](int64_t q0, int64_t q1, int) {
        for (int64_t q = q0; q < q1; q++) {
            int64_t b = q / O, o = q % O;
            const float *d = den + b * dstride + o * S;
            float sc = scale[q];
            each_vec(S, [&](int64_t i, int64_t n) {
                VF dv = load(d + i, n);
                VI ok = dv > 0.0f;
                VF ds = sel(ok, dv, splat(1.0f));
                VF r;
                if (kind == LSE)
                    r = vexp(vlog(ds) * (1.0f / a));
                else if (kind == LMORPH)
                    r = load(num + q * S + i, n) / ds;
                else
                    r = vexp(load(num + q * S + i, n) / ds);
                store(out + q * S + i, sel(ok, r * sc, splat(0.0f)), n);
            });
        }
    });
}

// The gradients of den's and num's convolutions from the output's, g: 0 where den < den_min.
// g, out and num are (B, O, S), den as in finish(). Element (b, o, s) goes to
// gden[b * ostride + o * S + s] and gnum alike (gnum may be null).
// Returns LSE's alpha gradient through the exponent 1/a (the sum over den > 0 of g out ln den,
// times -1/a^2) when lse_alpha is set, else 0.
double grad_out(const float *g, const float *out, const float *den, const float *num,
                const float *scale, int64_t B, int64_t O, int64_t S, int64_t dstride,
                int64_t ostride, float a, float den_min, int kind, bool lse_alpha, float *gden,
                float *gnum, int nt) {
    std::vector<double> part(std::max(nt, 1), 0.0);
    parallel(B * O, nt, std::max<int64_t>(1, GRAIN / S), [&](int64_t q0, int64_t q1, int pi) {
        double ga = 0.0;
        for (int64_t q = q0; q < q1; q++) {
            int64_t b = q / O, o = q % O, src = q * S, dst = b * ostride + o * S;
            float sc = scale[q];
            VF acc = VF{};
            each_vec(S, [&](int64_t i, int64_t n) {
                VF gv = load(g + src + i, n), ov = load(out + src + i, n);
                VF dv = load(den + b * dstride + o * S + i, n);
                VI ok = dv > 0.0f, live = dv >= den_min;
                VF ds = sel(ok, dv, splat(1.0f));
                VF zero = splat(0.0f);
                if (kind == LSE) {
                    store(gden + dst + i, sel(live, gv * ov / (a * ds), zero), n);
                    if (lse_alpha) acc += sel(ok, gv * ov * vlog(ds), zero);
                } else if (kind == LMORPH) {
                    store(gnum + dst + i, sel(live, gv * sc / ds, zero), n);
                    store(gden + dst + i, sel(live, -gv * ov / ds, zero), n);
                } else {
                    VF nv = load(num + src + i, n);
                    store(gnum + dst + i, sel(live, gv * ov / ds, zero), n);
                    store(gden + dst + i, sel(live, -gv * ov * (nv / ds) / ds, zero), n);
                }
            });
            for (int l = 0; l < LF; l++) ga += acc[l];
        }
        part[pi] = ga;
    });
    double ga = 0.0;
    for (double x : part) ga += x;
    return lse_alpha ? -ga / ((double)a * a) : 0.0;
}

// through() over elements [i0, i1): returns this range's alpha gradient.
double through_part(const float *x, const float *p, const float *lx, const float *gp,
                    const float *g2, int64_t i0, int64_t i1, float a, int kind, bool need_a,
                    float *gx) {
    double ga = 0.0;
    const int64_t chunk = 1 << 14;  // partial sums in float over at most this many elements
    for (int64_t c0 = i0; c0 < i1; c0 += chunk) {
        int64_t cn = i1 - c0 < chunk ? i1 - c0 : chunk;
        VF acc = VF{};
        each_vec(cn, [&](int64_t j, int64_t n) {
            int64_t i = c0 + j;
            VF xv = load(x + i, n), pv = load(p + i, n), gpv = load(gp + i, n);
            VI pos = xv > 0.0f;
            VF xs = sel(pos, xv, splat(1.0f)), zero = splat(0.0f);
            VF l = zero;
            if (lx)
                l = load(lx + i, n);
            else if (need_a)
                l = sel(pos, vlog(xs), zero);
            VF g2v = g2 ? load(g2 + i, n) : zero;
            if (gx) {
                VF d = gpv * (a * pv / xs);
                if (kind == LMORPH)
                    d = d + g2v * ((a + 1.0f) * pv);
                else if (kind == SMORPH)
                    d = d + g2v * (pv / xs) * (a * l + 1.0f);
                store(gx + i, sel(pos, d, zero), n);
            }
            if (need_a) {
                VF d = gpv * pv * l;
                if (kind == LMORPH)
                    d = d + g2v * (pv * xv) * l;
                else if (kind == SMORPH)
                    d = d + g2v * pv * l * l;
                acc += sel(pos, d, zero);
            }
        });
        for (int l = 0; l < LF; l++) ga += acc[l];
    }
    return ga;
}

// The chain rule from the powers' gradients, gp (of x^a) and g2 (of x^(a+1) for L-morph, of
// x^a ln x for S-morph; null for LSE), back to x (into gx, if not null) and to alpha (returned):
//   d/dx:  a p / x,  (a+1) p,  (p / x)(a ln x + 1);   d/da: p ln x,  p x ln x,  p (ln x)^2.
// p = x^a; lx = ln x, computed here where null. 0 where x <= 0.
double through(const float *x, const float *p, const float *lx, const float *gp, const float *g2,
               int64_t total, float a, int kind, bool need_a, float *gx, int nt) {
    std::vector<double> part(std::max(nt, 1), 0.0);
    parallel(total, nt, GRAIN, [&](int64_t i0, int64_t i1, int pi) {
        part[pi] = through_part(x, p, lx, gp, g2, i0, i1, a, kind, need_a, gx);
    });
    double ga = 0.0;
    for (double v : part) ga += v;
    return ga;
}
}  // namespace

extern "C" {
int maxtimes_vec_bytes() { return VEC_BYTES; }
#define EXPORT(T, SUF)                                                                         \
    void maxtimes_forward_##SUF(const T *uh, const T *pk, T *out, int32_t *am, int64_t B,      \
                                int64_t H, int64_t W, int64_t C, int64_t k, int64_t Op) {      \
        forward<T>(uh, pk, out, am, B, H, W, C, k, Op);                                        \
    }                                                                                          \
    void maxtimes_backward_##SUF(const T *uh, const T *pk, const int32_t *am, const T *g,      \
                                 T *gu, T *gv, int64_t B, int64_t H, int64_t W, int64_t C,     \
                                 int64_t k, int64_t O, int64_t Op) {                           \
        backward<T>(uh, pk, am, g, gu, gv, B, H, W, C, k, O, Op);                              \
    }
EXPORT(float, f32)
EXPORT(double, f64)

#define EXPORT_CONV(T, SUF)                                                                    \
    void conv_##SUF(const T *x, const T *w, T *out, int64_t B, int64_t H, int64_t W, int64_t C,  \
                    int64_t k, int64_t Op) {                                                   \
        conv<T>(x, w, out, B, H, W, C, k, Op);                                                 \
    }                                                                                          \
    void conv_wgrad_##SUF(const T *x, const T *g, T *gw, int64_t B, int64_t H, int64_t W,      \
                          int64_t C, int64_t k, int64_t Op) {                                  \
        conv_wgrad<T>(x, g, gw, B, H, W, C, k, Op);                                            \
    }
EXPORT_CONV(double, f64)

void smooth_powers_f32(const float *x, int64_t n, float a, float *p, float *lx, float *pl,
                       int nt) {
    powers(x, n, a, p, lx, pl, nt);
}
void smooth_finish_f32(const float *den, const float *num, const float *scale, int64_t B,
                       int64_t O, int64_t S, int64_t dstride, float a, int kind, float *out,
                       int nt) {
    finish(den, num, scale, B, O, S, dstride, a, kind, out, nt);
}
double smooth_grad_out_f32(const float *g, const float *out, const float *den, const float *num,
                           const float *scale, int64_t B, int64_t O, int64_t S, int64_t dstride,
                           int64_t ostride, float a, float den_min, int kind, int lse_alpha,
                           float *gden, float *gnum, int nt) {
    return grad_out(g, out, den, num, scale, B, O, S, dstride, ostride, a, den_min, kind,
                    lse_alpha != 0, gden, gnum, nt);
}
double smooth_through_f32(const float *x, const float *p, const float *lx, const float *gp,
                          const float *g2, int64_t n, float a, int kind, int need_a, float *gx,
                          int nt) {
    return through(x, p, lx, gp, g2, n, a, kind, need_a != 0, gx, nt);
}
}
