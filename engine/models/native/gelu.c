/* The tanh approximation of GELU and its derivative, as PyTorch's gelu(approximate="tanh") defines them,
 * applied to x + b (a bias per column, added here so the matrix product before it needs no bias pass of
 * its own), in one vectorised pass each; PyTorch's CPU kernel for it is several times slower than its
 * other activations. 0.5 v (1 + tanh z) is written as v sigmoid(2z): one exp, no tanh.
 * Float32, row-major [rows, cols]; the Python side (gelu.py) builds and loads it and splits rows over threads. */
#include <math.h>
#include <stdint.h>

static const float K = 0.7978845608028654f; /* sqrt(2 / pi) */
static const float C = 0.044715f;

/* exp(-2z) with its argument clamped so that it stays finite (-ffast-math assumes no infinities):
 * beyond |2z| = 80 the sigmoid is 0 or 1 to float precision anyway. */
static inline float exp_neg2z(float v) {
    float t = -2.0f * K * (v + C * v * v * v);
    return expf(fminf(fmaxf(t, -80.0f), 80.0f));
}

/* y = gelu(x + b); b may be NULL (no bias). */
void gelu_forward(const float *restrict x, const float *restrict b, float *restrict y, int64_t rows, int64_t cols) {
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = x + r * cols;
        float *yr = y + r * cols;
#pragma omp simd
        for (int64_t i = 0; i < cols; i++) {
            float v = xr[i] + (b ? b[i] : 0.0f);
            yr[i] = v / (1.0f + exp_neg2z(v));
        }
    }
}

/* dx = dy * d/dv [v s(2z)] = dy * (s + 2 v s (1 - s) K (1 + 3 C v^2)), s = sigmoid(2z) = 1 / (1 + e^{-2z}),
 * at v = x + b. (The bias's gradient is the column sum of dx, taken by the caller.) */
void gelu_backward(const float *restrict x, const float *restrict b, const float *restrict dy, float *restrict dx,
                   int64_t rows, int64_t cols) {
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = x + r * cols, *dyr = dy + r * cols;
        float *dxr = dx + r * cols;
#pragma omp simd
        for (int64_t i = 0; i < cols; i++) {
            float v = xr[i] + (b ? b[i] : 0.0f);
            float e = exp_neg2z(v);
            float s = 1.0f / (1.0f + e); /* 1 - s = e s, exact where s rounds to 1 */
            dxr[i] = dyr[i] * (s + 2.0f * v * e * s * s * K * (1.0f + 3.0f * C * v * v));
        }
    }
}
