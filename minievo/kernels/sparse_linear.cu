// Sparse fully connected layer, forward pass, weight in CSR over rows (output neurons).
//
//     y[n, o] = bias[o] + sum_{k = indptr[o]}^{indptr[o+1]-1} values[k] * x[n, indices[k]]
//
// Layout: x and y are given by base pointers and element strides: x[n, f] is
// x[n * xs_n + f * xs_f] and y[n, o] is y[n * ys_n + o * ys_o]. The compact model keeps its
// activations feature-major (xs_n = 1, xs_f = N), so that neighbouring threads, which handle
// neighbouring images n, read neighbouring addresses (coalesced).
//
// Launch: grid = (tiles * O, 1, 1), block = (threads, 1, 1), tiles = ceil(N / threads). A block
// computes `threads` images of one output neuron o. The neuron's CSR row (values and column
// indices) is staged through shared memory MINIEVO_LINEAR_TILE entries at a time: loaded by all
// threads together, __syncthreads(), then read by all; threads past the end of the batch take
// part in loads and barriers.
//
// All sizes and strides are int (32-bit); the host checks that every index fits.

#define MINIEVO_LINEAR_TILE 512

extern "C" __global__ void csr_linear_forward(
    const float* __restrict__ x,       // input activations, see layout above
    const int* __restrict__ indptr,    // (O + 1,) row pointers
    const int* __restrict__ indices,   // (nnz,) input feature of each synapse
    const float* __restrict__ values,  // (nnz,) synapse weights
    const float* __restrict__ bias,    // (O,)
    float* __restrict__ y,             // output activations, see layout above
    int N, int IN, int O, int xs_n, int xs_f, int ys_n, int ys_o) {
    __shared__ float v_tile[MINIEVO_LINEAR_TILE];
    __shared__ int c_tile[MINIEVO_LINEAR_TILE];

    const int threads = (int)blockDim.x;
    const int tid = (int)threadIdx.x;
    const int tiles = (N + threads - 1) / threads;
    const int o = (int)blockIdx.x / tiles;
    const int n = ((int)blockIdx.x - o * tiles) * threads + tid;
    const bool active = o < O && n < N;

    const int begin = o < O ? indptr[o] : 0;
    const int end = o < O ? indptr[o + 1] : 0;
    float acc = o < O ? bias[o] : 0.0f;
    const float* x_image = x + (long long)(active ? n : 0) * xs_n;

    for (int first = begin; first < end; first += MINIEVO_LINEAR_TILE) {
        const int count =
            end - first < MINIEVO_LINEAR_TILE ? end - first : MINIEVO_LINEAR_TILE;
        for (int j = tid; j < count; j += threads) {
            v_tile[j] = values[first + j];
            c_tile[j] = indices[first + j];
        }
        __syncthreads();
        if (active) {
            for (int j = 0; j < count; ++j) {
                const int f = c_tile[j];
                if (f < 0 || f >= IN) continue;  // a corrupt index reads nothing
                acc += v_tile[j] * x_image[(long long)f * xs_f];
            }
        }
        __syncthreads();  // the next tile overwrites v_tile and c_tile
    }
    if (active) y[(long long)n * ys_n + (long long)o * ys_o] = acc;
}
