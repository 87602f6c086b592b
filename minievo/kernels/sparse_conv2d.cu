// Cluster-sparse 2-D convolution, forward pass.
//
// The weight of a compact Conv2d layer is stored as CSR over (output map, input map) kernel
// pairs: the live kernels of output map o are k = indptr[o] .. indptr[o+1]-1; kernel k reads
// input map indices[k] and has the KH*KW weights kernels[k*KH*KW ...] (masked taps hold 0).
// A dead kernel costs nothing: output map o loops over its own live kernels only.
//
//     y[n, o, oh, ow] = bias[o] + sum_{k in row o} sum_{ky,kx}
//                       kernels[k, ky, kx] * x[n, indices[k], oh*stride - pad + ky,
//                                                            ow*stride - pad + kx]
//
// Layout: x and y are addressed through element strides for each of their four axes
// (xs_n, xs_c, xs_h, xs_w and ys_n, ys_o, ys_h, ys_w), so one kernel serves NCHW and the
// batch-last layout (C, H, W, N) that the compact model uses.
//
// Launch: grid = (ceil(N*OH*OW / threads), O), block = (threads, 1, 1). A block computes
// `threads` outputs of one output map o; thread q of the map handles image n = q % N at pixel
// q / N, so with the batch-last layout neighbouring threads read neighbouring addresses
// (coalesced), and every thread of a block needs the same weights. The live kernels of map o
// are staged through shared memory, MINIEVO_CONV_TILE_FLOATS weights at a time: all threads of
// the block load them cooperatively, __syncthreads(), then every thread reads the weights from
// shared memory. A kernel wider than a whole tile (KH*KW > MINIEVO_CONV_TILE_FLOATS, so
// per_tile would be 0 and the tile loop would never advance) takes a slower loop instead: one
// live kernel at a time, its taps staged MINIEVO_CONV_TILE_FLOATS at a time. launch_conv2d
// refuses such kernels; the loop keeps a direct launch correct and finite. Threads past the end
// of the map still take part in loads and barriers (no early return before a __syncthreads()).
//
// All sizes and strides are int (32-bit); the host checks that every index fits. Offsets are
// computed in 64 bits.

#define MINIEVO_CONV_TILE_FLOATS 2048
#define MINIEVO_CONV_TILE_KERNELS 256

extern "C" __global__ void cluster_sparse_conv2d_forward(
    const float* __restrict__ x,        // input activations, see layout above
    const int* __restrict__ indptr,     // (O + 1,) row pointers over live kernels
    const int* __restrict__ indices,    // (nnz,) input map of each live kernel
    const float* __restrict__ kernels,  // (nnz, KH, KW) kernel weights
    const float* __restrict__ bias,     // (O,)
    float* __restrict__ y,              // output activations, see layout above
    int N, int C, int H, int W, int O, int KH, int KW, int OH, int OW, int stride, int pad,
    int xs_n, int xs_c, int xs_h, int xs_w, int ys_n, int ys_o, int ys_h, int ys_w) {
    __shared__ float w_tile[MINIEVO_CONV_TILE_FLOATS];
    __shared__ int c_tile[MINIEVO_CONV_TILE_KERNELS];

    const int threads = (int)blockDim.x;
    const int tid = (int)threadIdx.x;
    const int o = (int)blockIdx.y;
    const long long q = (long long)blockIdx.x * threads + tid;
    const bool active = o < O && q < (long long)N * OH * OW;

    const int n = active ? (int)(q % N) : 0;
    const int pixel = active ? (int)(q / N) : 0;
    const int oh = pixel / OW;
    const int ow = pixel - oh * OW;
    const int ih0 = oh * stride - pad;
    const int iw0 = ow * stride - pad;
    const int kk = KH * KW;

    if (kk <= 0) return;  // no taps (the host refuses it): the whole block leaves, no barrier
    int per_tile = MINIEVO_CONV_TILE_FLOATS / kk;
    if (per_tile > MINIEVO_CONV_TILE_KERNELS) per_tile = MINIEVO_CONV_TILE_KERNELS;

    // begin/end are the same for every thread of the block (same o), so the loop below runs the
    // same number of times in every thread and its barriers never diverge. A kernel wider than
    // a tile (per_tile < 1) leaves the tile loop an empty row: the sliced loop after it adds
    // the live kernels of map o (row_begin .. row_end-1) instead.
    const bool sliced = per_tile < 1;
    const int row_begin = o < O ? indptr[o] : 0;
    const int row_end = o < O ? indptr[o + 1] : 0;
    const int begin = row_begin;
    const int end = sliced ? row_begin : row_end;
    float acc = o < O ? bias[o] : 0.0f;
    const float* x_image = x + (long long)n * xs_n;

    // The tile loop: stage the live kernels of map o in shared memory, a tile at a time,
    // and add each one's taps (inside the image) to acc.
    // BEGIN SOLUTION task 7.2
    for (int first = begin; first < end; first += per_tile) {
        const int count = end - first < per_tile ? end - first : per_tile;
        for (int j = tid; j < count * kk; j += threads) w_tile[j] = kernels[first * kk + j];
        for (int j = tid; j < count; j += threads) c_tile[j] = indices[first + j];
        __syncthreads();
        if (active) {
            for (int s = 0; s < count; ++s) {
                const int c = c_tile[s];
                if (c < 0 || c >= C) continue;  // a corrupt index reads nothing
                const float* xc = x_image + (long long)c * xs_c;
                const float* wk = w_tile + s * kk;
                for (int ky = 0; ky < KH; ++ky) {
                    const int ih = ih0 + ky;
                    if (ih < 0 || ih >= H) continue;
                    const float* row = xc + (long long)ih * xs_h;
                    for (int kx = 0; kx < KW; ++kx) {
                        const int iw = iw0 + kx;
                        if (iw < 0 || iw >= W) continue;
                        acc += wk[ky * KW + kx] * row[(long long)iw * xs_w];
                    }
                }
            }
        }
        __syncthreads();  // the next tile overwrites w_tile and c_tile
    }
    // Kernels wider than a tile: one live kernel at a time, its taps in slices of
    // MINIEVO_CONV_TILE_FLOATS; tap t of a slice sits at row t / KW, column t % KW. `sliced`,
    // the row and the slice bounds are the same in every thread, so the barriers never diverge.
    if (sliced) {
        for (int k = row_begin; k < row_end; ++k) {
            const int src = indices[k];
            const bool reads = active && src >= 0 && src < C;  // a corrupt index reads nothing
            const float* xk = x_image + (long long)(reads ? src : 0) * xs_c;
            const long long kbase = (long long)k * kk;
            int t0 = 0;
            while (t0 < kk) {
                const int span = kk - t0 < MINIEVO_CONV_TILE_FLOATS ? kk - t0
                                                                     : MINIEVO_CONV_TILE_FLOATS;
                for (int j = tid; j < span; j += threads) w_tile[j] = kernels[kbase + t0 + j];
                __syncthreads();
                if (reads) {
                    for (int s = 0; s < span; ++s) {
                        const int ty = (t0 + s) / KW;
                        const int y_in = ih0 + ty;
                        const int x_in = iw0 + (t0 + s - ty * KW);
                        if (y_in >= 0 && y_in < H && x_in >= 0 && x_in < W) {
                            acc += w_tile[s] * xk[(long long)y_in * xs_h + (long long)x_in * xs_w];
                        }
                    }
                }
                __syncthreads();  // the next slice overwrites w_tile
                t0 += span;
            }
        }
    }
    // END SOLUTION
    if (active) {
        y[(long long)n * ys_n + (long long)o * ys_o + (long long)oh * ys_h +
          (long long)ow * ys_w] = acc;
    }
}
