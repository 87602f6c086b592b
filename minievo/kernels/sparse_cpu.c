/* Cluster-sparse forward pass on the CPU: a direct convolution over the live synapses only.
 *
 * This is the CPU counterpart of sparse_conv2d.cu. It is C11 with the vector extension GCC and
 * Clang share, compiled on first use by the system C compiler (see minievo/kernels/native.py)
 * and called through ctypes, which lets go of the GIL, so Python threads can run it on
 * separate slices of the batch at once.
 *
 * Layout: the input is x[c][y][x] for every image n (C, H, W, already padded), the output
 * out[o][y][x]; pixel p of image n lives at x[p * xsp + n * xsn] (and out[p * osp + n * osn]).
 * Batch last (C, H, W, N) has xsp = N, xsn = 1; batch first (N, C, H, W) has xsp = 1,
 * xsn = C*H*W, so a model's input is read where it lies, without a transposing copy. The
 * kernel packs each tile of NB images batch-last, (C*H*W, NB), and one synapse applied to one
 * output pixel is then an axpy over the tile:
 *
 *     out[o, oy, ox, n] = bias[o] + sum over live synapses s of map o:
 *                         w[s] * x[c_s, oy*stride + ky_s, ox*stride + kx_s, n]
 *
 * The synapses of map o are entries syn_ptr[o] .. syn_ptr[o+1]-1 of two arrays: the weight
 * w[s], and the offset off[s] = (c_s*H + ky_s)*W + kx_s of the synapse's input pixel relative
 * to the window's corner, in pixels. Dead kernels, and dead taps inside live kernels, simply
 * are not in the list, so the work is (live synapses) x (output pixels) x N multiply-adds.
 *
 * A fully connected layer is the same computation with H = W = OH = OW = 1 and off[s] = the
 * input feature of synapse s (the layer's CSR rows are exactly syn_ptr / off / w).
 *
 * For each output map and tile of NB images the kernel accumulates one output pixel at a time
 * in a local array of NB floats, which the compiler keeps in vector registers, so each synapse
 * costs NB/8 loads and NB/8 fused multiply-adds with AVX2. The finished (OH, OW, NB) tile
 * then gets the per-pixel bias map, max pooling, the per-map bias and ReLU, in that order, and
 * is written out.
 *
 * Training uses the same kernel twice more: the input gradient is this convolution of the
 * zero-padded output gradient with the synapse lists regrouped by input map and the taps
 * flipped (built in Python), and minievo_sparse_conv_wgrad below sums the weight gradient of
 * the live synapses only.
 *
 * Sizes are int (32-bit); the caller checks that every offset fits. Return value: 0 on
 * success, 1 when the workspace could not be allocated, 2 for inconsistent sizes.
 */

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#ifndef MINIEVO_NB
#define MINIEVO_NB 64 /* images per tile: 8 vectors of 8 floats of accumulators */
#endif
#define NB MINIEVO_NB
#define NV (NB / 8)

/* Eight floats; GCC and Clang compile arithmetic on it to one AVX instruction, or to two SSE
 * ones on CPUs without AVX. Tiles are 32-byte aligned, so vectors load directly. */
typedef float vf8 __attribute__((vector_size(32)));

int minievo_sparse_cpu_version(void) { return 4; }

int minievo_sparse_cpu_tile(void) { return NB; }

/* Copy images n0 .. n0+nb-1 of `pixels` pixels into dst, batch-last (pixels, NB); lanes past nb
 * get zeros. Reading the tile in place would touch a new page for every pixel (rows of N
 * floats apart), which made the kernel 3x slower. */
static void pack_tile(const float *restrict x, size_t pixels, long long xsp, long long xsn,
                      int n0, int nb, float *restrict dst) {
    for (size_t p = 0; p < pixels; ++p) {
        const float *src = x + (ptrdiff_t)p * xsp + (ptrdiff_t)n0 * xsn;
        float *d = dst + p * NB;
        if (xsn == 1)  /* batch last: a contiguous run */
            for (int k = 0; k < nb; ++k) d[k] = src[k];
        else  /* batch first: NB rows, each read in order as p advances */
            for (int k = 0; k < nb; ++k) d[k] = src[(ptrdiff_t)k * xsn];
        for (int k = nb; k < NB; ++k) d[k] = 0.0f;
    }
}

/* The (OH, OW, NB) tile of one output map, from the packed input tile xt (C*H*W pixels of
 * NB images each); synapses s0 .. s1-1. The NV accumulators are independent chains of
 * multiply-adds, enough to keep both FMA units busy. */
static void conv_tile(const float *restrict xt, int W, int OH, int OW, int stride,
                      const int32_t *restrict off, const float *restrict w, int s0, int s1,
                      float *restrict tile) {
    for (int oy = 0; oy < OH; ++oy) {
        for (int ox = 0; ox < OW; ++ox) {
            const float *base = xt + ((size_t)(oy * stride) * W + (size_t)ox * stride) * NB;
            vf8 acc[NV];
            for (int i = 0; i < NV; ++i) acc[i] = (vf8){0};
            for (int s = s0; s < s1; ++s) {
                const vf8 *p = (const vf8 *)(base + (size_t)off[s] * NB);
                const float ws = w[s];
                for (int i = 0; i < NV; ++i) acc[i] += ws * p[i];
            }
            vf8 *t = (vf8 *)(tile + ((size_t)oy * OW + ox) * NB);
            for (int i = 0; i < NV; ++i) t[i] = acc[i];
        }
    }
}

int minievo_sparse_conv(
    const float *restrict x, int C, int H, int W, int N,
    long long xsp, long long xsn,    /* element strides of a pixel and of an image in x */
    int O, const int32_t *restrict syn_ptr, const int32_t *restrict off,
    const float *restrict w,
    int OH, int OW, int stride,
    const float *restrict bias,      /* (O,) */
    const float *restrict bias_map,  /* (O, OH, OW) or NULL */
    int pool_k, int pool_s,          /* pool_k = 0: no pooling */
    int relu,
    float *restrict out,             /* O*PH*PW pixels (PH = OH without pooling) per image */
    const int32_t *restrict out_map, /* map o goes to map out_map[o] of out; NULL: to o */
    long long osp, long long osn,    /* element strides of a pixel and of an image in out */
    int n_begin, int n_end) {
    if (C < 1 || H < 1 || W < 1 || N < 1 || O < 0 || OH < 1 || OW < 1 || stride < 1 ||
        n_begin < 0 || n_end > N || n_begin > n_end)
        return 2;
    int PH = OH, PW = OW;
    if (pool_k > 0) {
        if (pool_s < 1 || pool_k > OH || pool_k > OW) return 2;
        PH = (OH - pool_k) / pool_s + 1;
        PW = (OW - pool_k) / pool_s + 1;
    }
    const size_t pixels = (size_t)C * H * W;
    /* workspace: the conv tile (OH*OW, NB), the finished pixels (PH*PW, NB), the packed input
     * (C*H*W, NB) */
    float *tile = (float *)aligned_alloc(
        64, sizeof(float) * ((size_t)OH * OW + (size_t)PH * PW + pixels) * NB);
    if (tile == NULL) return 1;
    float *res = tile + (size_t)OH * OW * NB;
    float *xt = res + (size_t)PH * PW * NB;
    for (int n0 = n_begin; n0 < n_end; n0 += NB) {
        const int nb = n_end - n0 < NB ? n_end - n0 : NB;
        /* Packing the whole batch up front instead of tile by tile was not faster. The extra
         * lanes of a short last tile are never written out. */
        pack_tile(x, pixels, xsp, xsn, n0, nb, xt);
        for (int o = 0; o < O; ++o) {
            conv_tile(xt, W, OH, OW, stride, off, w, syn_ptr[o], syn_ptr[o + 1], tile);
            if (bias_map != NULL) {
                const float *bm = bias_map + (size_t)o * OH * OW;
                for (int p = 0; p < OH * OW; ++p)
                    for (int k = 0; k < nb; ++k) tile[(size_t)p * NB + k] += bm[p];
            }
            const float b = bias[o];
            for (int py = 0; py < PH; ++py) {
                for (int px = 0; px < PW; ++px) {
                    float *v = res + ((size_t)py * PW + px) * NB;
                    if (pool_k > 0) {
                        const float *t0 = tile + ((size_t)(py * pool_s) * OW + px * pool_s) * NB;
                        for (int k = 0; k < NB; ++k) v[k] = t0[k];
                        for (int i = 0; i < pool_k; ++i)
                            for (int j = 0; j < pool_k; ++j) {
                                const float *t = tile +
                                    ((size_t)(py * pool_s + i) * OW + px * pool_s + j) * NB;
                                for (int k = 0; k < NB; ++k)  /* NaN wins, as in NumPy */
                                    v[k] = (t[k] > v[k] || t[k] != t[k]) ? t[k] : v[k];
                            }
                    } else {
                        const float *t = tile + ((size_t)py * OW + px) * NB;
                        for (int k = 0; k < NB; ++k) v[k] = t[k];
                    }
                    for (int k = 0; k < NB; ++k) {
                        const float y = v[k] + b;
                        v[k] = relu && y < 0.0f ? 0.0f : y;  /* NaN stays NaN */
                    }
                }
            }
            /* Write the map's PH*PW pixels of the nb images: batch last, a run of nb images per
             * pixel; batch first, a run of pixels per image (scattering single floats instead
             * cost more than the convolution). */
            const int npix = PH * PW;
            const size_t to = out_map != NULL ? (size_t)out_map[o] : (size_t)o;
            float *dst = out + (ptrdiff_t)(to * npix) * osp + (ptrdiff_t)n0 * osn;
            if (osn == 1) {
                for (int p = 0; p < npix; ++p)
                    for (int k = 0; k < nb; ++k) dst[(ptrdiff_t)p * osp + k] = res[p * NB + k];
            } else {
                for (int k = 0; k < nb; ++k)
                    for (int p = 0; p < npix; ++p)
                        dst[(ptrdiff_t)k * osn + (ptrdiff_t)p * osp] = res[p * NB + k];
            }
        }
    }
    free(tile);
    return 0;
}

/* Weight gradient of the convolution above, for the live synapses only:
 *
 *     gw[s] += sum over images n in [n_begin, n_end) and output pixels (oy, ox) of
 *              gy[o_s, oy, ox, n] * x[c_s, oy*stride + ky_s, ox*stride + kx_s, n]
 *
 * gy (O, OH, OW per image) is laid out like x: pixel p of image n at gy[p * gsp + n * gsn].
 * Per tile of NB images the sum runs in NB float lanes; each tile's total is added to gw in
 * double, so long batches do not lose the small terms. */
int minievo_sparse_conv_wgrad(
    const float *restrict x, int C, int H, int W, int N, long long xsp, long long xsn,
    int O, const int32_t *restrict syn_ptr, const int32_t *restrict off,
    int OH, int OW, int stride,
    const float *restrict gy, long long gsp, long long gsn,
    double *restrict gw, int n_begin, int n_end) {
    if (C < 1 || H < 1 || W < 1 || N < 1 || O < 0 || OH < 1 || OW < 1 || stride < 1 ||
        n_begin < 0 || n_end > N || n_begin > n_end)
        return 2;
    const size_t pixels = (size_t)C * H * W, gpixels = (size_t)O * OH * OW;
    float *xt = (float *)aligned_alloc(64, sizeof(float) * (pixels + gpixels) * NB);
    if (xt == NULL) return 1;
    float *gt = xt + pixels * NB;
    for (int n0 = n_begin; n0 < n_end; n0 += NB) {
        const int nb = n_end - n0 < NB ? n_end - n0 : NB;
        pack_tile(x, pixels, xsp, xsn, n0, nb, xt);
        pack_tile(gy, gpixels, gsp, gsn, n0, nb, gt);  /* zero lanes: they add nothing */
        for (int o = 0; o < O; ++o) {
            const float *g0 = gt + (size_t)o * OH * OW * NB;
            for (int s = syn_ptr[o]; s < syn_ptr[o + 1]; ++s) {
                vf8 acc[NV];
                for (int i = 0; i < NV; ++i) acc[i] = (vf8){0};
                for (int oy = 0; oy < OH; ++oy) {
                    for (int ox = 0; ox < OW; ++ox) {
                        const vf8 *g = (const vf8 *)(g0 + ((size_t)oy * OW + ox) * NB);
                        const vf8 *p = (const vf8 *)(
                            xt + ((size_t)(oy * stride) * W + (size_t)ox * stride + off[s]) * NB);
                        for (int i = 0; i < NV; ++i) acc[i] += g[i] * p[i];
                    }
                }
                double total = 0.0;
                for (int i = 0; i < NV; ++i)
                    for (int k = 0; k < 8; ++k) total += acc[i][k];
                gw[s] += total;
            }
        }
    }
    free(xt);
    return 0;
}
