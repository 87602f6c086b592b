/* Cluster-sparse forward pass on the CPU: a direct convolution over the live synapses only.
 *
 * This is the CPU counterpart of sparse_conv2d.cu. It is C11 with the vector extension GCC and
 * Clang share, compiled on first use by the system C compiler (see minievo/kernels/native.py)
 * and called through ctypes, which lets go of the GIL, so Python threads can run it on
 * separate slices of the batch at once.
 *
 * Layout: any. Element (c, y, x) of image n is x[c*xs[0] + y*xs[1] + x*xs[2] + n*xs[3]] (and
 * likewise out with os[]), so batch-last (C, H, W, N), batch-first (N, C, H, W) and the
 * channels-last (N, H, W, C) memory of minievo's dense layers are all read and written where
 * they lie, without a transposing copy. The kernel packs each tile of NB images batch-last,
 * (C*Hp*Wp, NB), zero-padding the border by `pad` on the way (Hp = H + 2*pad), and one synapse
 * applied to one output pixel is then an axpy over the tile:
 *
 *     out[o, oy, ox, n] = bias[o] + sum over live synapses s of map o:
 *                         w[s] * x[c_s, oy*stride + ky_s, ox*stride + kx_s, n]
 *
 * (x padded). The synapses of map o are entries syn_ptr[o] .. syn_ptr[o+1]-1 of two arrays:
 * the weight w[s], and the offset off[s] = (c_s*Hp + ky_s)*Wp + kx_s of the synapse's input
 * pixel relative to the window's corner, in packed pixels. Dead kernels, and dead taps inside
 * live kernels, simply are not in the list, so the work is (live synapses) x (output pixels)
 * x N multiply-adds.
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
 * output gradient, zero-padded by k-1-pad, with the synapse lists regrouped by input map and
 * the taps flipped (built in Python), and minievo_sparse_conv_wgrad below sums the weight
 * gradient of the live synapses only.
 *
 * Sizes are int (32-bit). Return value: 0 on success, 1 when the workspace could not be
 * allocated, 2 for inconsistent sizes (among them a pooling window or stride below 1, a
 * window larger than the maps, or an output size out_h x out_w that is not the one this
 * geometry gives: the caller allocated out for out_h x out_w, so nothing is written unless they
 * agree), 3 when a synapse would read outside x (checked for every synapse before anything is
 * read).
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

int minievo_sparse_cpu_version(void) { return 7; }

int minievo_sparse_cpu_tile(void) { return NB; }

/* Copy images n0 .. n0+nb-1 of x (C, H, W; strides xs) into dst, batch-last (C*Hp*Wp, NB)
 * with a zero border of `pad`; lanes past nb get zeros. Reading a tile in place would touch a
 * new page for every pixel of a batch-last array (rows of N floats apart), which made the
 * kernel 3x slower. */
static void pack_tile(const float *restrict x, int C, int H, int W, const long long *xs,
                      int pad, int n0, int nb, float *restrict dst) {
    const int Hp = H + 2 * pad, Wp = W + 2 * pad;
    const size_t plane = (size_t)Hp * Wp * NB;
    if (xs[0] == 1 && xs[3] != 1 && C > 1) {
        /* Channels last (minievo's dense layers): for each pixel, the channels of each image
         * are one contiguous run. A block of CB channels x NB images is transposed in a small
         * buffer and each channel's row then written whole: scattering single floats straight
         * to the rows, which lie a multiple of 4 KiB apart, thrashed the L1 cache. */
        enum { CB = 16 };
        float block[CB * NB];
        if (pad > 0)
            for (size_t i = 0; i < (size_t)C * plane; ++i) dst[i] = 0.0f;
        for (int y = 0; y < H; ++y)
            for (int xc = 0; xc < W; ++xc) {
                const float *src = x + (ptrdiff_t)y * xs[1] + (ptrdiff_t)xc * xs[2] +
                                   (ptrdiff_t)n0 * xs[3];
                float *d = dst + ((size_t)(y + pad) * Wp + (xc + pad)) * NB;
                for (int c0 = 0; c0 < C; c0 += CB) {
                    const int cb = C - c0 < CB ? C - c0 : CB;
                    for (int k = 0; k < nb; ++k) {
                        const float *s = src + (ptrdiff_t)k * xs[3] + c0;
                        for (int c = 0; c < cb; ++c) block[c * NB + k] = s[c];
                    }
                    for (int c = 0; c < cb; ++c) {
                        float *row = d + (size_t)(c0 + c) * plane;
                        int k = 0;
                        for (; k < nb; ++k) row[k] = block[c * NB + k];
                        for (; k < NB; ++k) row[k] = 0.0f;
                    }
                }
            }
        return;
    }
    float *d = dst;
    for (int c = 0; c < C; ++c) {
        for (int yy = 0; yy < Hp; ++yy) {
            const int y = yy - pad;
            for (int xx = 0; xx < Wp; ++xx, d += NB) {
                const int xc = xx - pad;
                int k = 0;
                if (y >= 0 && y < H && xc >= 0 && xc < W) {
                    const float *src = x + (ptrdiff_t)c * xs[0] + (ptrdiff_t)y * xs[1] +
                                       (ptrdiff_t)xc * xs[2] + (ptrdiff_t)n0 * xs[3];
                    if (xs[3] == 1)  /* batch last: a contiguous run */
                        for (; k < nb; ++k) d[k] = src[k];
                    else  /* one float from each of nb images, rows read in order */
                        for (; k < nb; ++k) d[k] = src[(ptrdiff_t)k * xs[3]];
                }
                for (; k < NB; ++k) d[k] = 0.0f;
            }
        }
    }
}

/* 1 when the padded input, C x (H + 2*pad) x (W + 2*pad) values, is indexable with int. */
static int fits_int(int C, int H, int W, int pad) {
    const long long hp = (long long)H + 2LL * pad, wp = (long long)W + 2LL * pad;
    return hp * wp * C < 2147483647LL;
}

/* 1 when every synapse of maps 0 .. O-1 reads inside x (C*Hp*Wp packed pixels) from every
 * window corner of the OH x OW output; checked before any memory is touched. */
static int offsets_fit(const int32_t *syn_ptr, int O, const int32_t *off, int C, int Hp, int Wp,
                       int OH, int OW, int stride) {
    const long long plane = (long long)Hp * Wp;
    if (syn_ptr[0] < 0) return 0;
    for (int o = 0; o < O; ++o)  /* non-decreasing, so the loop below sees every synapse */
        if (syn_ptr[o + 1] < syn_ptr[o]) return 0;
    for (int s = syn_ptr[0]; s < syn_ptr[O]; ++s) {
        const long long v = off[s];
        if (v < 0 || v >= C * plane) return 0;
        const long long ky = (v % plane) / Wp, kx = (v % plane) % Wp;
        if (ky + (long long)(OH - 1) * stride >= Hp || kx + (long long)(OW - 1) * stride >= Wp)
            return 0;
    }
    return 1;
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
    const long long *xs,             /* element strides of x: channel, row, column, image */
    int pad,                         /* zero border around x */
    int O, const int32_t *restrict syn_ptr, const int32_t *restrict off,
    const float *restrict w,
    int OH, int OW, int stride,
    const float *restrict bias,      /* (O,) */
    const float *restrict bias_map,  /* (O, OH, OW) or NULL */
    int pool_k, int pool_s,          /* pool_k = 0: no pooling, else both >= 1 */
    int relu,
    int out_h, int out_w,            /* PH, PW the caller sized out for; must match */
    float *restrict out,             /* (O, PH, PW) per image (PH = OH without pooling) */
    const int32_t *restrict out_map, /* map o goes to map out_map[o] of out; NULL: to o */
    const long long *os,             /* element strides of out: map, row, column, image */
    int n_begin, int n_end) {
    if (C < 1 || H < 1 || W < 1 || N < 1 || O < 0 || OH < 1 || OW < 1 || stride < 1 ||
        pad < 0 || n_begin < 0 || n_end > N || n_begin > n_end || !fits_int(C, H, W, pad))
        return 2;
    const int Hp = H + 2 * pad, Wp = W + 2 * pad;
    if (!offsets_fit(syn_ptr, O, off, C, Hp, Wp, OH, OW, stride)) return 3;
    int PH = OH, PW = OW;
    if (pool_k < 0) return 2;
    if (pool_k > 0) {
        if (pool_s < 1 || pool_k > OH || pool_k > OW) return 2;
        PH = (OH - pool_k) / pool_s + 1;
        PW = (OW - pool_k) / pool_s + 1;
    }
    if (PH != out_h || PW != out_w) return 2;
    const size_t pixels = (size_t)C * Hp * Wp, npix = (size_t)PH * PW;
    /* Channels-last output: the maps of a tile are staged as (PH*PW, O, NB) and written pixel
     * by pixel, O contiguous floats per image; written map by map, every float would land on
     * a cache line of its own. */
    const int staged = os[0] == 1 && os[3] != 1 && O > 1;
    /* workspace: the conv tile (OH*OW, NB), the finished pixels (PH*PW, NB) or, staged,
     * (PH*PW, O, NB), the packed input (C*Hp*Wp, NB) */
    const size_t nres = staged ? npix * O : npix;
    float *tile = (float *)aligned_alloc(
        64, sizeof(float) * ((size_t)OH * OW + nres + pixels) * NB);
    if (tile == NULL) return 1;
    float *res = tile + (size_t)OH * OW * NB;
    float *xt = res + nres * NB;
    for (int n0 = n_begin; n0 < n_end; n0 += NB) {
        const int nb = n_end - n0 < NB ? n_end - n0 : NB;
        /* Packing the whole batch up front instead of tile by tile was not faster. The extra
         * lanes of a short last tile are never written out. */
        pack_tile(x, C, H, W, xs, pad, n0, nb, xt);
        for (int o = 0; o < O; ++o) {
            conv_tile(xt, Wp, OH, OW, stride, off, w, syn_ptr[o], syn_ptr[o + 1], tile);
            if (bias_map != NULL) {
                const float *bm = bias_map + (size_t)o * OH * OW;
                for (int p = 0; p < OH * OW; ++p)
                    for (int k = 0; k < nb; ++k) tile[(size_t)p * NB + k] += bm[p];
            }
            const float b = bias[o];
            for (int py = 0; py < PH; ++py) {
                for (int px = 0; px < PW; ++px) {
                    const size_t q = (size_t)py * PW + px;
                    float *v = res + (staged ? q * O + o : q) * NB;
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
            if (staged) continue;  /* written below, once every map is done */
            /* Write the map's PH*PW pixels of the nb images: with images contiguous in out, a
             * run of nb images per pixel; else all pixels of one image after the other. */
            const size_t to = out_map != NULL ? (size_t)out_map[o] : (size_t)o;
            float *dst = out + (ptrdiff_t)to * os[0] + (ptrdiff_t)n0 * os[3];
            if (os[3] == 1) {
                for (int py = 0; py < PH; ++py)
                    for (int px = 0; px < PW; ++px) {
                        float *d = dst + (ptrdiff_t)py * os[1] + (ptrdiff_t)px * os[2];
                        const float *v = res + ((size_t)py * PW + px) * NB;
                        for (int k = 0; k < nb; ++k) d[k] = v[k];
                    }
            } else {
                for (int k = 0; k < nb; ++k)
                    for (int py = 0; py < PH; ++py)
                        for (int px = 0; px < PW; ++px)
                            dst[(ptrdiff_t)k * os[3] + (ptrdiff_t)py * os[1] +
                                (ptrdiff_t)px * os[2]] = res[((size_t)py * PW + px) * NB + k];
            }
        }
        if (staged) {
            for (int py = 0; py < PH; ++py)
                for (int px = 0; px < PW; ++px) {
                    const float *v = res + ((size_t)py * PW + px) * O * NB;
                    float *dst = out + (ptrdiff_t)py * os[1] + (ptrdiff_t)px * os[2] +
                                 (ptrdiff_t)n0 * os[3];
                    for (int k = 0; k < nb; ++k) {
                        float *d = dst + (ptrdiff_t)k * os[3];
                        if (out_map != NULL)
                            for (int o = 0; o < O; ++o) d[out_map[o]] = v[(size_t)o * NB + k];
                        else
                            for (int o = 0; o < O; ++o) d[o] = v[(size_t)o * NB + k];
                    }
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
 * gy (O, OH, OW per image) has its own strides gs, like x.
 * Per tile of NB images the sum runs in NB float lanes; each tile's total is added to gw in
 * double, so long batches do not lose the small terms. */
int minievo_sparse_conv_wgrad(
    const float *restrict x, int C, int H, int W, int N, const long long *xs, int pad,
    int O, const int32_t *restrict syn_ptr, const int32_t *restrict off,
    int OH, int OW, int stride,
    const float *restrict gy, const long long *gs,
    double *restrict gw, int n_begin, int n_end) {
    if (C < 1 || H < 1 || W < 1 || N < 1 || O < 0 || OH < 1 || OW < 1 || stride < 1 ||
        pad < 0 || n_begin < 0 || n_end > N || n_begin > n_end || !fits_int(C, H, W, pad))
        return 2;
    const int Hp = H + 2 * pad, Wp = W + 2 * pad;
    if (!offsets_fit(syn_ptr, O, off, C, Hp, Wp, OH, OW, stride)) return 3;
    const size_t pixels = (size_t)C * Hp * Wp, gpixels = (size_t)O * OH * OW;
    float *xt = (float *)aligned_alloc(64, sizeof(float) * (pixels + gpixels) * NB);
    if (xt == NULL) return 1;
    float *gt = xt + pixels * NB;
    for (int n0 = n_begin; n0 < n_end; n0 += NB) {
        const int nb = n_end - n0 < NB ? n_end - n0 : NB;
        pack_tile(x, C, H, W, xs, pad, n0, nb, xt);
        pack_tile(gy, O, OH, OW, gs, 0, n0, nb, gt);  /* zero lanes: they add nothing */
        for (int o = 0; o < O; ++o) {
            const float *g0 = gt + (size_t)o * OH * OW * NB;
            for (int s = syn_ptr[o]; s < syn_ptr[o + 1]; ++s) {
                vf8 acc[NV];
                for (int i = 0; i < NV; ++i) acc[i] = (vf8){0};
                for (int oy = 0; oy < OH; ++oy) {
                    for (int ox = 0; ox < OW; ++ox) {
                        const vf8 *g = (const vf8 *)(g0 + ((size_t)oy * OW + ox) * NB);
                        const vf8 *p = (const vf8 *)(
                            xt + ((size_t)(oy * stride) * Wp + (size_t)ox * stride + off[s]) * NB);
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
