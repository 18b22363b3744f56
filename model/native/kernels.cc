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
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

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
}
