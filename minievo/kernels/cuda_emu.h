// cuda_emu.h -- run CUDA kernels on the CPU, for tests on machines without a GPU.
//
// Include this header, then the unchanged .cu file, and compile with g++ -std=c++17 -pthread:
//
//     #include "cuda_emu.h"
//     #include "sparse_linear.cu"
//     ...
//     cuda_emu::launch(dim3(grid), dim3(block), csr_linear_forward, x, indptr, ...);
//
// What is emulated, and how faithfully:
//   * Blocks run one after the other, in CUDA's linear order (x fastest, then y, then z).
//   * The threads of a block are real threads (std::thread), so a kernel that forgets a
//     __syncthreads() between writing and reading shared memory really races (and
//     ThreadSanitizer, -fsanitize=thread, reports it).
//   * __syncthreads() is a real barrier for the threads of the block. It is stricter than a GPU:
//     all threads must meet at the same __syncthreads() (same source line), and a thread that
//     returns from the kernel while others wait at a barrier is reported as divergence. CUDA
//     calls both cases undefined behaviour; here they stop the program with a message.
//   * __shared__ becomes `static`: one object per kernel function, seen by every thread that runs
//     the function. Because blocks run in sequence, that single object is exactly "shared by the
//     threads of the block". (A static is NOT zeroed between blocks; neither is shared memory.)
//   * threadIdx, blockIdx, blockDim and gridDim are thread_local variables that the launcher sets
//     in every worker thread before it calls the kernel.
//   * `extern "C" __global__ void k(...)` is an ordinary host function; launch() calls it once
//     per thread per block.
//   * Launch configurations are checked against CUDA's limits (at most 1024 threads per block,
//     gridDim.y and gridDim.z at most 65535, no zero dimension) and rejected like CUDA does.
//   * atomicAdd is provided (a global mutex; slow but correct).
// Not emulated: warps and warp intrinsics, dynamic shared memory (`extern __shared__`), streams,
// textures, the memory model of global memory beyond what the barrier orders.
#ifndef MINIEVO_CUDA_EMU_H
#define MINIEVO_CUDA_EMU_H

#include <math.h>

#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <thread>
#include <vector>

struct dim3 {
    unsigned int x, y, z;
    constexpr dim3(unsigned int x_ = 1, unsigned int y_ = 1, unsigned int z_ = 1)
        : x(x_), y(y_), z(z_) {}
};
typedef dim3 uint3;

// The built-in index variables: one copy per emulated thread.
inline thread_local uint3 threadIdx;
inline thread_local uint3 blockIdx;
inline thread_local dim3 blockDim;
inline thread_local dim3 gridDim;

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static
#define __syncthreads() ::cuda_emu::syncthreads(__LINE__)

namespace cuda_emu {

[[noreturn]] inline void fail(const char* what) {
    std::fprintf(stderr, "cuda_emu: %s\n", what);
    std::fflush(stderr);
    std::_Exit(97);
}

// A reusable barrier for the threads of one block. Every arrival carries a tag: the source line
// of the __syncthreads() it came from, or kExit when the thread returned from the kernel. All
// threads of one generation must carry the same tag, otherwise the block diverged.
class BlockBarrier {
  public:
    static constexpr int kExit = -1;

    explicit BlockBarrier(int nthreads) : nthreads_(nthreads) {}

    void arrive(int tag) {
        std::unique_lock<std::mutex> lock(mutex_);
        if (arrived_ == 0) {
            tag_ = tag;
        } else if (tag != tag_) {
            char msg[256];
            if (tag == kExit || tag_ == kExit) {
                std::snprintf(msg, sizeof msg,
                              "divergent __syncthreads() in block (%u,%u,%u): some threads "
                              "returned from the kernel while others wait at line %d",
                              blockIdx.x, blockIdx.y, blockIdx.z, tag == kExit ? tag_ : tag);
            } else {
                std::snprintf(msg, sizeof msg,
                              "divergent __syncthreads() in block (%u,%u,%u): threads wait at "
                              "different barriers (lines %d and %d)",
                              blockIdx.x, blockIdx.y, blockIdx.z, tag_, tag);
            }
            fail(msg);
        }
        if (++arrived_ == nthreads_) {
            arrived_ = 0;
            ++generation_;
            cv_.notify_all();
            return;
        }
        const unsigned long my_generation = generation_;
        cv_.wait(lock, [&] { return generation_ != my_generation; });
    }

  private:
    std::mutex mutex_;
    std::condition_variable cv_;
    const int nthreads_;
    int arrived_ = 0;
    int tag_ = 0;
    unsigned long generation_ = 0;
};

// The barrier of the block being run; shared by all worker threads of the launch.
inline BlockBarrier* current_barrier = nullptr;

inline void syncthreads(int line) { current_barrier->arrive(line); }

inline std::mutex& atomic_mutex() {
    static std::mutex m;
    return m;
}

template <typename Kernel, typename... Args>
void launch(dim3 grid, dim3 block, Kernel* kernel, Args... args) {
    const unsigned long nthreads =
        static_cast<unsigned long>(block.x) * block.y * block.z;
    if (grid.x == 0 || grid.y == 0 || grid.z == 0 || nthreads == 0) {
        fail("invalid configuration argument: a grid or block dimension is zero");
    }
    if (nthreads > 1024 || block.z > 64) {
        fail("invalid configuration argument: more than 1024 threads per block (or blockDim.z > 64)");
    }
    if (grid.y > 65535 || grid.z > 65535) {
        fail("invalid configuration argument: gridDim.y and gridDim.z must be at most 65535");
    }
    BlockBarrier barrier(static_cast<int>(nthreads));
    current_barrier = &barrier;
    auto worker = [&](unsigned int tid) {
        threadIdx = uint3(tid % block.x, (tid / block.x) % block.y, tid / (block.x * block.y));
        blockDim = block;
        gridDim = grid;
        for (unsigned int bz = 0; bz < grid.z; ++bz) {
            for (unsigned int by = 0; by < grid.y; ++by) {
                for (unsigned int bx = 0; bx < grid.x; ++bx) {
                    blockIdx = uint3(bx, by, bz);
                    kernel(args...);
                    // Block boundary: nobody starts the next block (and so reuses the
                    // __shared__ statics) before every thread has finished this one.
                    barrier.arrive(BlockBarrier::kExit);
                }
            }
        }
    };
    std::vector<std::thread> threads;
    threads.reserve(nthreads);
    for (unsigned int t = 0; t < nthreads; ++t) threads.emplace_back(worker, t);
    for (auto& t : threads) t.join();
    current_barrier = nullptr;
}

}  // namespace cuda_emu

inline float atomicAdd(float* address, float value) {
    std::lock_guard<std::mutex> lock(cuda_emu::atomic_mutex());
    const float old = *address;
    *address = old + value;
    return old;
}

inline int atomicAdd(int* address, int value) {
    std::lock_guard<std::mutex> lock(cuda_emu::atomic_mutex());
    const int old = *address;
    *address = old + value;
    return old;
}

#endif  // MINIEVO_CUDA_EMU_H
