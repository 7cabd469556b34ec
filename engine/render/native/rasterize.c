/* Tile compositing of projected 2D Gaussians on the CPU: forward and analytic backward.
 *
 * Same rules as gsplat's "classic" rasterizer: pixel centres at +0.5, alpha = min(0.999, o exp(-sigma)),
 * skip alpha < 1/255, stop before the transmittance would fall to 1e-4. Each tile's pixels are processed
 * together so the per-Gaussian loop vectorises over pixels (the CPU analogue of a CUDA thread block).
 * Compiled twice, with SCALAR=float and SCALAR=double; the Python side builds and loads it (native.py).
 */
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#ifndef SCALAR
#define SCALAR float
#endif
typedef SCALAR real;
#define IS_FLOAT_float 1
#define IS_FLOAT_double 0
#define CAT(a, b) a##b
#define IS_FLOAT(s) CAT(IS_FLOAT_, s)
#if IS_FLOAT(SCALAR)
/* exp(t) inline, so that the pixel loops vectorise at full width with no library call: 2^n e^r, n = round(t / ln 2),
 * r = t - n ln 2 (ln 2 in two parts, |r| <= ln 2 / 2), e^r by its degree-6 Taylor polynomial (relative error
 * below 2e-7, as glibc's vector expf). t is clamped to [-87, 88], where 2^n stays a normal float: below, alpha
 * is under 1/255 and skipped anyway. */
static inline float exp_inline(float t) {
    t = fminf(fmaxf(t, -87.0f), 88.0f);
    float n = __builtin_roundf(t * 1.44269504088896341f);
    float r = (t - n * 0.693145751953125f) - n * 1.428606765330187e-06f;
    float p = 1.0f + r * (1.0f + r * (0.5f + r * (1.0f / 6 + r * (1.0f / 24 + r * (1.0f / 120 + r * (1.0f / 720))))));
    union { float f; int32_t i; } scale = { .i = ((int32_t)n + 127) << 23 };
    return p * scale.f;
}
#define EXP exp_inline
#else
#define EXP exp
#endif

#define MAXP 256 /* pixels per tile: tile size <= 16 */
#define MAXF 16  /* feature channels */

static const real ALPHA_MIN = (real)(1.0 / 255.0);
static const real ALPHA_MAX = (real)0.999;
static const real T_MIN = (real)1e-4;

/* Threads take tiles from a shared counter (dynamic schedule) and exit when none are left: no
 * OpenMP runtime, so nothing spins against PyTorch's own thread pool between calls. */
typedef void (*task_fn)(void *ctx, int task, int worker);
typedef struct { task_fn fn; void *ctx; int ntasks; atomic_int next; } pool_t;
typedef struct { pool_t *pool; int worker; } worker_t;

static void *worker_main(void *arg) {
    worker_t *w = (worker_t *)arg;
    for (;;) {
        int t = atomic_fetch_add(&w->pool->next, 1);
        if (t >= w->pool->ntasks) break;
        w->pool->fn(w->pool->ctx, t, w->worker);
    }
    return NULL;
}

static void parallel_for(int ntasks, task_fn fn, void *ctx, int nthreads) {
    if (nthreads < 1) nthreads = 1;
    if (nthreads > 64) nthreads = 64;
    pool_t pool = {fn, ctx, ntasks, 0};
    pthread_t th[64];
    worker_t ws[64];
    int started = 0;
    for (int i = 1; i < nthreads; ++i) {
        ws[i].pool = &pool;
        ws[i].worker = i;
        if (pthread_create(&th[i], NULL, worker_main, &ws[i]) == 0) started = i; else break;
    }
    ws[0].pool = &pool;
    ws[0].worker = 0;
    worker_main(&ws[0]);
    for (int i = 1; i <= started; ++i) pthread_join(th[i], NULL);
}

static inline void tile_coords(int k, int TX, int TY, int *c, int *tx, int *ty) {
    *c = k / (TX * TY);
    int r = k % (TX * TY);
    *ty = r / TX;
    *tx = r % TX;
}

typedef struct {
    int C, N, H, W, TS, TX, TY, F;
    const real *means2d, *conics, *opac, *feats, *bg;
    const int64_t *offsets, *flat_ids;
    real *out_feat, *out_T; int32_t *out_last;          /* forward outputs, backward inputs */
    const real *v_feat, *v_alpha;                        /* backward inputs */
    real *grads[64];                                     /* backward: one gradient buffer per worker */
} args_t;

static void forward_tile(void *ctx, int k, int worker) {
    (void)worker;
    const args_t *A = (const args_t *)ctx;
    const int C = A->C, H = A->H, W = A->W, TS = A->TS, TX = A->TX, TY = A->TY, F = A->F;
    const real *means2d = A->means2d, *conics = A->conics, *opac = A->opac, *feats = A->feats, *bg = A->bg;
    const int64_t *offsets = A->offsets, *flat_ids = A->flat_ids;
    real *out_feat = A->out_feat, *out_T = A->out_T;
    int32_t *out_last = A->out_last;
    const int P = TS * TS;
    (void)C;
        int c, tx, ty;
        tile_coords(k, TX, TY, &c, &tx, &ty);
        real px[MAXP], py[MAXP], T[MAXP], act[MAXP], w[MAXP];
        real acc[MAXF][MAXP];
        int32_t last[MAXP];
        for (int p = 0; p < P; ++p) {
            int ix = tx * TS + p % TS, iy = ty * TS + p / TS;
            px[p] = (real)ix + (real)0.5;
            py[p] = (real)iy + (real)0.5;
            T[p] = 1;
            act[p] = (ix < W && iy < H) ? 1 : 0;
            last[p] = -1;
        }
        for (int ch = 0; ch < F; ++ch)
            for (int p = 0; p < P; ++p) acc[ch][p] = 0;

        const int64_t s = offsets[k], e = offsets[k + 1];
        for (int64_t i = s; i < e; ++i) {
            const int64_t g = flat_ids[i];
            const real mx = means2d[2 * g], my = means2d[2 * g + 1];
            const real a = conics[3 * g], b = conics[3 * g + 1], cc = conics[3 * g + 2];
            const real o = opac[g];
            const int32_t i32 = (int32_t)i;
            real alive = 0;
#pragma omp simd reduction(+ : alive)
            for (int p = 0; p < P; ++p) {
                real dx = px[p] - mx, dy = py[p] - my;
                real sig = (real)0.5 * (a * dx * dx + cc * dy * dy) + b * dx * dy;
                real al = o * EXP(-sig);
                al = al < ALPHA_MAX ? al : ALPHA_MAX;
                real nT = T[p] * (1 - al);
                int ok = (act[p] > 0) & (sig >= 0) & (al >= ALPHA_MIN);
                int stop = ok & (nT <= T_MIN);
                int use = ok & !stop;
                w[p] = use ? al * T[p] : 0;
                T[p] = use ? nT : T[p];
                last[p] = use ? i32 : last[p];
                act[p] = stop ? 0 : act[p];
                alive += act[p];
            }
            const real *f = feats + g * F;
            for (int ch = 0; ch < F; ++ch) {
                const real fc = f[ch];
#pragma omp simd
                for (int p = 0; p < P; ++p) acc[ch][p] += w[p] * fc;
            }
            if (alive == 0) break;
        }
        for (int p = 0; p < P; ++p) {
            int ix = tx * TS + p % TS, iy = ty * TS + p / TS;
            if (ix >= W || iy >= H) continue;
            int64_t pix = ((int64_t)c * H + iy) * W + ix;
            for (int ch = 0; ch < F; ++ch) out_feat[pix * F + ch] = acc[ch][p] + T[p] * bg[c * F + ch];
            out_T[pix] = T[p];
            out_last[pix] = last[p];
        }
}

void rasterize_forward(
    int C, int N, int H, int W, int TS, int TX, int TY, int F,
    const real *means2d, const real *conics, const real *opac, const real *feats, const real *bg,
    const int64_t *offsets, const int64_t *flat_ids,
    real *out_feat, real *out_T, int32_t *out_last, int nthreads)
{
    args_t A = {C, N, H, W, TS, TX, TY, F, means2d, conics, opac, feats, bg, offsets, flat_ids,
                out_feat, out_T, out_last, NULL, NULL, {NULL}};
    parallel_for(C * TX * TY, forward_tile, &A, nthreads);
}

static void backward_tile(const args_t *A, int k, real *gbuf) {
    const int H = A->H, W = A->W, TS = A->TS, TX = A->TX, TY = A->TY, F = A->F;
    const real *means2d = A->means2d, *conics = A->conics, *opac = A->opac, *feats = A->feats, *bg = A->bg;
    const int64_t *offsets = A->offsets, *flat_ids = A->flat_ids;
    const real *out_T = A->out_T, *v_feat = A->v_feat, *v_alpha = A->v_alpha;
    const int32_t *out_last = A->out_last;
    const int P = TS * TS, R = 6 + F;
        int c, tx, ty;
        tile_coords(k, TX, TY, &c, &tx, &ty);
        real px[MAXP], py[MAXP], T[MAXP], Tf[MAXP], bgdot[MAXP], va[MAXP], fac[MAXP], ra[MAXP], vs[MAXP];
        real dxs[MAXP], dys[MAXP], vo[MAXP];
        real vout[MAXF][MAXP], S[MAXF][MAXP];
        int32_t last[MAXP];
        int32_t maxlast = -1;
        for (int p = 0; p < P; ++p) {
            int ix = tx * TS + p % TS, iy = ty * TS + p / TS;
            px[p] = (real)ix + (real)0.5;
            py[p] = (real)iy + (real)0.5;
            int inside = ix < W && iy < H;
            int64_t pix = ((int64_t)c * H + iy) * W + ix;
            last[p] = inside ? out_last[pix] : -1;
            T[p] = Tf[p] = inside ? out_T[pix] : 1;
            real bd = 0;
            for (int ch = 0; ch < F; ++ch) {
                real v = inside ? v_feat[pix * F + ch] : 0;
                vout[ch][p] = v;
                S[ch][p] = 0;
                bd += v * bg[c * F + ch];
            }
            bgdot[p] = bd;
            va[p] = inside ? v_alpha[pix] : 0;
            if (last[p] > maxlast) maxlast = last[p];
        }
        const int64_t s = offsets[k];
        for (int64_t i = maxlast; i >= s; --i) {
            const int64_t g = flat_ids[i];
            const real mx = means2d[2 * g], my = means2d[2 * g + 1];
            const real a = conics[3 * g], b = conics[3 * g + 1], cc = conics[3 * g + 2];
            const real o = opac[g];
            const real *f = feats + g * F;
            const int32_t i32 = (int32_t)i;
#pragma omp simd
            for (int p = 0; p < P; ++p) {
                real dx = px[p] - mx, dy = py[p] - my;
                real sig = (real)0.5 * (a * dx * dx + cc * dy * dy) + b * dx * dy;
                real vis = EXP(-sig);
                real raw = o * vis;
                real al = raw < ALPHA_MAX ? raw : ALPHA_MAX;
                int ok = (i32 <= last[p]) & (sig >= 0) & (al >= ALPHA_MIN);
                real r = 1 / (1 - al);
                T[p] = ok ? T[p] * r : T[p]; /* transmittance in front of this Gaussian */
                fac[p] = ok ? al * T[p] : 0;
                ra[p] = ok ? r : 0;
                /* d alpha / d sigma and d alpha / d o, zero where alpha was clamped */
                int unclamped = ok & (raw < ALPHA_MAX);
                vs[p] = unclamped ? -raw : 0;
                vo[p] = unclamped ? vis : 0;
                dxs[p] = dx;
                dys[p] = dy;
            }
            real dal[MAXP];
#pragma omp simd
            for (int p = 0; p < P; ++p) dal[p] = Tf[p] * ra[p] * (va[p] - bgdot[p]);
            real *gr = gbuf + g * R;
            for (int ch = 0; ch < F; ++ch) {
                const real fc = f[ch];
                real gf = 0;
#pragma omp simd reduction(+ : gf)
                for (int p = 0; p < P; ++p) {
                    dal[p] += (fc * T[p] - S[ch][p] * ra[p]) * vout[ch][p];
                    gf += fac[p] * vout[ch][p];
                    S[ch][p] += fc * fac[p];
                }
                gr[6 + ch] += gf;
            }
            real gmx = 0, gmy = 0, ga = 0, gb = 0, gc = 0, go = 0;
#pragma omp simd reduction(+ : gmx, gmy, ga, gb, gc, go)
            for (int p = 0; p < P; ++p) {
                real vsig = vs[p] * dal[p];
                real dx = dxs[p], dy = dys[p];
                ga += (real)0.5 * dx * dx * vsig;
                gb += dx * dy * vsig;
                gc += (real)0.5 * dy * dy * vsig;
                gmx -= (a * dx + b * dy) * vsig;
                gmy -= (b * dx + cc * dy) * vsig;
                go += vo[p] * dal[p];
            }
            gr[0] += gmx; gr[1] += gmy; gr[2] += ga; gr[3] += gb; gr[4] += gc; gr[5] += go;
        }
}

/* Stripe s handles tiles s, s + n, s + 2n, ... into buffer s: which tiles are summed where, and in
 * which order, depends only on the stripe count, so gradients are bitwise reproducible. */
typedef struct { const args_t *A; int nstripes; } stripes_t;

static void backward_stripe(void *ctx, int stripe, int worker) {
    (void)worker;
    const stripes_t *S = (const stripes_t *)ctx;
    const int ntiles = S->A->C * S->A->TX * S->A->TY;
    for (int k = stripe; k < ntiles; k += S->nstripes) backward_tile(S->A, k, S->A->grads[stripe]);
}

/* Gradients per Gaussian are written to grad (C*N rows of 6+F: mean x, mean y, conic a, b, c, opacity,
 * features), which the caller zeroes. Each worker accumulates into its own copy, summed at the end. */
void rasterize_backward(
    int C, int N, int H, int W, int TS, int TX, int TY, int F,
    const real *means2d, const real *conics, const real *opac, const real *feats, const real *bg,
    const int64_t *offsets, const int64_t *flat_ids,
    const real *out_T, const int32_t *out_last, const real *v_feat, const real *v_alpha,
    real *grad, int nthreads)
{
    if (nthreads < 1) nthreads = 1;
    if (nthreads > 64) nthreads = 64;
    const int64_t rows = (int64_t)C * N * (6 + F);
    real *bufs = (real *)calloc((size_t)(nthreads - 1) * rows + 1, sizeof(real));
    if (bufs == NULL) nthreads = 1; /* no memory for per-thread buffers: accumulate serially */
    args_t A = {C, N, H, W, TS, TX, TY, F, means2d, conics, opac, feats, bg, offsets, flat_ids,
                (real *)out_T, (real *)out_T, (int32_t *)out_last, v_feat, v_alpha, {NULL}};
    A.grads[0] = grad;
    for (int t = 1; t < nthreads; ++t) A.grads[t] = bufs + (int64_t)(t - 1) * rows;
    stripes_t S = {&A, nthreads};
    parallel_for(nthreads, backward_stripe, &S, nthreads);
    for (int t = 1; t < nthreads; ++t) {
        const real *src = A.grads[t];
#pragma omp simd
        for (int64_t j = 0; j < rows; ++j) grad[j] += src[j];
    }
    free(bufs);
}

/* Tile lists by counting sort. order: each camera's Gaussians front to back (C*N indices within the
 * camera); rect: per Gaussian (tile x0, y0, x1, y1) inclusive, x1 < x0 when not visible; offsets must
 * hold the exclusive prefix sum of per-tile counts (C*TX*TY+1). Visiting Gaussians in depth order
 * keeps every tile's list sorted front to back. */
int bin_fill(int C, int N, int TX, int TY, const int64_t *order, const int32_t *rect,
              const int64_t *offsets, int64_t *flat_ids)
{
    int64_t *cursor = (int64_t *)malloc(sizeof(int64_t) * (size_t)C * TX * TY + 1);
    if (cursor == NULL) return 1;
    memcpy(cursor, offsets, sizeof(int64_t) * (size_t)C * TX * TY);
    for (int c = 0; c < C; ++c) {
        for (int j = 0; j < N; ++j) {
            const int64_t g = (int64_t)c * N + order[(int64_t)c * N + j];
            const int32_t *r = rect + 4 * g;
            for (int y = r[1]; y <= r[3]; ++y)
                for (int x = r[0]; x <= r[2]; ++x) flat_ids[cursor[((int64_t)c * TY + y) * TX + x]++] = g;
        }
    }
    free(cursor);
    return 0;
}
