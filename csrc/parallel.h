// A small thread pool and the multi-tensor elementwise runner.
//
// One call over a list of tensors is one parallel region: the concatenated element range of all
// tensors is cut into one contiguous piece per thread (cut points on 64-byte boundaries of the
// tensor they fall in), so 161 tensors cost one fork/join, not 161. Every elementwise kernel
// gives each element the same bits whichever chunk holds it (see for_each_lane), so results do
// not depend on the thread count.
#pragma once
#include <cstddef>
#include <functional>
#include <vector>

#include "dispatch.h"

namespace fusedopt {

// At most this many threads: the most CPUs a Linux cpu_set_t (CPU_SETSIZE) describes, i.e. the
// most that sched_getaffinity reports here. More threads than CPUs only take turns on them, and
// each pool thread, once started, keeps its stack (8 MiB of address space) for the process's
// life.
constexpr int kMaxThreads = 1024;

int get_num_threads();
// 1 <= n <= kMaxThreads (the bindings check; clamped here). Workers beyond n sleep; they never
// spin between calls. A forked child keeps the count and gets a pool of its own.
void set_num_threads(int n);

// Runs task(i) for i in [0, ntasks) on up to get_num_threads() threads, the caller among them,
// and returns when all are done. A call made while another is running (from a second Python
// thread) runs its tasks on its own thread.
void parallel_for(int ntasks, const std::function<void(int)>& task);

// An OpenMP runtime's parallel-region entry point with libgomp's GOMP_parallel signature: runs
// body(data) on num_threads threads, the caller among them, and returns when all are done.
using OpenMPParallel = void (*)(void (*body)(void*), void* data, unsigned num_threads, unsigned flags);

// Runs parallel_for's regions on that runtime's threads instead of the pool's (nullptr: the pool
// again). fusedopt.torch hands it torch's libgomp: in a training loop the step follows torch's
// backward, whose OpenMP workers spin for milliseconds after it; on their team the step's region
// starts on workers already awake instead of competing with them for the cores. Which thread runs
// a task never changes its result (tasks are claimed from a counter either way). A forked child
// goes back to its own pool: libgomp's team does not survive fork.
void set_openmp_parallel(OpenMPParallel parallel);
OpenMPParallel get_openmp_parallel();

// The arrays of a multi-tensor call: tensor t's k-th array is ptrs[t * arrays_per_tensor + k].
struct TensorBatch {
    std::size_t arrays_per_tensor = 0;
    std::size_t elem_size = 0;
    std::size_t cut_multiple = 0;  // cut points at multiples of this many elements of their tensor (0: 64 bytes)
    std::size_t min_elements_per_thread = 0;  // 0: kMinElementsPerThread
    std::vector<void*> ptrs;
    std::vector<std::size_t> sizes;
};

// Below this many elements per thread a call stays on the calling thread. Waking a sleeping
// worker and joining it costs ~6 us (an empty parallel_for on 2 threads, median, 2-core Zen 3),
// but the data of a small call sits in the caller's L2 and the second thread must fetch its half
// from there: with 32K elements per thread, 64K-element Adam/SGD/RMSprop/Adagrad calls were
// 10-50% slower on 2 threads than on 1 (bench), while 1M-element Adam ran 1.9x faster.
constexpr std::size_t kMinElementsPerThread = 131072;

// The L2 cache of one core of this machine, in bytes (read at the first call; see parallel.cpp):
// thresholds that depend on what stays in cache come from it, not from one machine's constant.
std::size_t l2_cache_bytes();

// chunk(arrays, n, tensor, offset): n elements of tensor `tensor` from its element `offset`.
void for_each_chunk(const TensorBatch& batch,
                    const std::function<void(void* const*, std::size_t, std::size_t, std::size_t)>& chunk);

// Reductions cut every tensor into blocks of this many elements whatever the thread count, and
// combine the blocks' results in order, so a norm has the same bits on 1 thread or 64.
constexpr std::size_t kReduceBlock = 65536;

// block(pointer, n) for every block of array `role` of every tensor, in parallel; returns the
// results in tensor-then-offset order.
std::vector<double> reduce_blocks(const TensorBatch& batch, std::size_t role,
                                  const std::function<double(const void*, std::size_t)>& block);

template <class Config>
void run_elementwise(ElementwiseKernel<Config> kernel, const Config& config, const TensorBatch& batch) {
    for_each_chunk(batch, [&](void* const* arrays, std::size_t n, std::size_t, std::size_t) { kernel(config, arrays, n); });
}

}  // namespace fusedopt
