#include "parallel.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <thread>

#if defined(__unix__) || defined(__APPLE__)
#include <pthread.h>
#endif
#if defined(__linux__)
#include <sched.h>
#endif
#if __has_include(<unistd.h>)
#include <unistd.h>  // sysconf
#endif

namespace fusedopt {
namespace {

inline void pause() {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    asm volatile("yield");
#endif
}
constexpr std::chrono::microseconds kJoinSpin{50};

// The thread count before any set_num_threads: the CPUs this process may run on. (The package
// applies FUSEDOPT_NUM_THREADS at import, checked there: see fusedopt/__init__.py.)
int default_num_threads() {
#if defined(__linux__)
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof(set), &set) == 0) return std::clamp(CPU_COUNT(&set), 1, kMaxThreads);
#endif
    return static_cast<int>(std::clamp(std::thread::hardware_concurrency(), 1u, static_cast<unsigned>(kMaxThreads)));
}

// The thread count is not the pool's: a forked child's new pool keeps it (see pool()).
std::atomic<int> g_num_threads{default_num_threads()};

class ThreadPool {
  public:
    // Workers are left running at exit: joining them from a static destructor can deadlock
    // with the interpreter's shutdown, and the OS reclaims them.

    void run(int ntasks, const std::function<void(int)>& task) {
        int nthreads = std::min(ntasks, get_num_threads());
        std::unique_lock<std::mutex> busy(run_mutex_, std::try_to_lock);
        if (nthreads <= 1 || !busy.owns_lock()) {
            for (int i = 0; i < ntasks; ++i) task(i);
            return;
        }
        if (OpenMPParallel openmp = get_openmp_parallel()) {
            Region region{&task, ntasks, {0}};
            openmp(&Region::body, &region, static_cast<unsigned>(nthreads), 0);
            return;
        }
        ensure_workers(nthreads - 1);
        {
            std::lock_guard<std::mutex> lock(mutex_);
            task_ = &task;
            ntasks_ = ntasks;
            next_.store(0);
            pending_.store(nthreads - 1);
            wanted_ = nthreads - 1;
            ++generation_;
        }
        wake_.notify_all();
        work();
        // The workers' last tasks end at most a task's time after the caller's: wait for them
        // awake for a while (a sleeping caller would add its own wake-up, ~5-10 us, to the
        // call), then asleep.
        const auto spin_until = std::chrono::steady_clock::now() + kJoinSpin;
        while (pending_.load(std::memory_order_acquire) != 0 && std::chrono::steady_clock::now() < spin_until) pause();
        std::unique_lock<std::mutex> lock(mutex_);
        done_.wait(lock, [&] { return pending_.load() == 0; });
        task_ = nullptr;
    }

  private:
    // A region run on an OpenMP runtime's team: each of its threads claims tasks until none is left.
    struct Region {
        const std::function<void(int)>* task;
        int ntasks;
        std::atomic<int> next;
        static void body(void* data) {
            auto* r = static_cast<Region*>(data);
            for (int i = r->next.fetch_add(1); i < r->ntasks; i = r->next.fetch_add(1)) (*r->task)(i);
        }
    };

    void work() {
        for (int i = next_.fetch_add(1); i < ntasks_; i = next_.fetch_add(1)) (*task_)(i);
    }

    void worker_loop(int index) {
        unsigned long seen = 0;
        for (;;) {
            {
                std::unique_lock<std::mutex> lock(mutex_);
                wake_.wait(lock, [&] { return generation_ != seen && index < wanted_; });
                seen = generation_;
            }
            work();
            if (pending_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
                std::lock_guard<std::mutex> lock(mutex_);  // the caller tests pending_ under it before sleeping
                done_.notify_one();
            }
        }
    }

    void ensure_workers(int n) {
        while (static_cast<int>(workers_.size()) < n) {
            int index = static_cast<int>(workers_.size());
            workers_.push_back(new std::thread([this, index] { worker_loop(index); }));
            workers_.back()->detach();
        }
    }

    std::mutex run_mutex_;  // one parallel region at a time
    std::mutex mutex_;
    std::condition_variable wake_, done_;
    std::vector<std::thread*> workers_;
    const std::function<void(int)>* task_ = nullptr;
    int ntasks_ = 0;
    std::atomic<int> next_{0};
    std::atomic<int> pending_{0};
    int wanted_ = 0;
    unsigned long generation_ = 0;
};

// The process's pool, never destroyed (see the note on workers above).
//
// A forked child has only the thread that called fork, and a byte copy of the pool: its
// condition variables count waiters (the parent's sleeping workers) that do not exist in the
// child, so the first notify_all can wait forever inside glibc, and its mutexes may be held by
// threads that are gone. The child therefore gets a new pool, made by a pthread_atfork handler
// before any of the child's code runs; the parent's pool is leaked untouched (destroying it
// would operate on those same copied objects). Its workers start on the child's first
// multi-threaded call, at the parent's thread count. The first pool is made when the module
// loads, so that no thread can be inside a first-use initialization when the process forks.
std::atomic<ThreadPool*> g_pool{new ThreadPool()};
std::atomic<OpenMPParallel> g_openmp_parallel{nullptr};

#if defined(__unix__) || defined(__APPLE__)
void new_pool_in_child() {
    g_pool.store(new ThreadPool(), std::memory_order_release);
    g_openmp_parallel.store(nullptr, std::memory_order_release);
}
const int g_atfork_registered = pthread_atfork(nullptr, nullptr, new_pool_in_child);
#endif

ThreadPool& pool() { return *g_pool.load(std::memory_order_acquire); }

}  // namespace

int get_num_threads() { return g_num_threads.load(std::memory_order_relaxed); }
void set_num_threads(int n) { g_num_threads.store(std::clamp(n, 1, kMaxThreads)); }
void parallel_for(int ntasks, const std::function<void(int)>& task) { pool().run(ntasks, task); }
void set_openmp_parallel(OpenMPParallel parallel) { g_openmp_parallel.store(parallel, std::memory_order_release); }
OpenMPParallel get_openmp_parallel() { return g_openmp_parallel.load(std::memory_order_acquire); }

void for_each_chunk(const TensorBatch& b,
                    const std::function<void(void* const*, std::size_t, std::size_t, std::size_t)>& chunk) {
    const std::size_t ntensors = b.sizes.size(), k = b.arrays_per_tensor;
    std::vector<std::size_t> start(ntensors + 1, 0);  // start[t]: tensor t's first element in the concatenation
    for (std::size_t t = 0; t < ntensors; ++t) start[t + 1] = start[t] + b.sizes[t];
    const std::size_t total = start[ntensors];

    // Elements [lo, hi) of the concatenation, tensor by tensor.
    auto run_range = [&](std::size_t lo, std::size_t hi) {
        std::size_t t = std::upper_bound(start.begin(), start.end(), lo) - start.begin() - 1;
        std::vector<void*> arrays(k);
        for (; t < ntensors && start[t] < hi; ++t) {
            std::size_t begin = std::max(lo, start[t]) - start[t];
            std::size_t end = std::min(hi, start[t + 1]) - start[t];
            if (begin >= end) continue;
            for (std::size_t j = 0; j < k; ++j)
                arrays[j] = b.ptrs[t * k + j] ? static_cast<char*>(b.ptrs[t * k + j]) + begin * b.elem_size : nullptr;
            chunk(arrays.data(), end - begin, t, begin);
        }
    };

    const std::size_t nthreads = static_cast<std::size_t>(get_num_threads());
    const std::size_t per_thread = b.min_elements_per_thread ? b.min_elements_per_thread : kMinElementsPerThread;
    const std::size_t ntasks = std::min(nthreads, std::max<std::size_t>(1, total / per_thread));
    if (ntasks <= 1) {
        run_range(0, total);
        return;
    }
    // Cut points near k * total / ntasks, moved down to a 64-byte multiple within their tensor.
    const std::size_t line = b.cut_multiple ? b.cut_multiple : 64 / b.elem_size;
    std::vector<std::size_t> cut(ntasks + 1);
    cut[0] = 0;
    cut[ntasks] = total;
    for (std::size_t i = 1; i < ntasks; ++i) {
        std::size_t c = total / ntasks * i;
        std::size_t t = std::upper_bound(start.begin(), start.end(), c) - start.begin() - 1;
        c = start[t] + (c - start[t]) / line * line;
        cut[i] = std::max(c, cut[i - 1]);
    }
    parallel_for(static_cast<int>(ntasks), [&](int i) { run_range(cut[i], cut[i + 1]); });
}

std::vector<double> reduce_blocks(const TensorBatch& b, std::size_t role,
                                  const std::function<double(const void*, std::size_t)>& block) {
    struct Block {
        const char* ptr;
        std::size_t n;
    };
    std::vector<Block> blocks;
    std::size_t total = 0;
    for (std::size_t t = 0; t < b.sizes.size(); ++t) {
        const char* base = static_cast<const char*>(b.ptrs[t * b.arrays_per_tensor + role]);
        for (std::size_t lo = 0; lo < b.sizes[t]; lo += kReduceBlock)
            blocks.push_back({base + lo * b.elem_size, std::min(kReduceBlock, b.sizes[t] - lo)});
        total += b.sizes[t];
    }
    std::vector<double> out(blocks.size());
    const std::size_t ntasks = std::min<std::size_t>({static_cast<std::size_t>(get_num_threads()), blocks.size(),
                                                      std::max<std::size_t>(1, total / kMinElementsPerThread)});
    // task i takes blocks i, i + ntasks, ...: which thread computes a block never changes its value
    parallel_for(static_cast<int>(std::max<std::size_t>(1, ntasks)), [&](int i) {
        for (std::size_t j = static_cast<std::size_t>(i); j < blocks.size(); j += std::max<std::size_t>(1, ntasks))
            out[j] = block(blocks[j].ptr, blocks[j].n);
    });
    return out;
}

// The L2 cache of one core of the machine this runs on, in bytes, read once (the one place
// the kernels learn a cache size): sysconf where the C library reports it (glibc),
// else Linux's sysfs, else 256 KiB, the smallest L2 of the cores this project has run on.
std::size_t l2_cache_bytes() {
    static const std::size_t bytes = [] {
        long n = -1;
#ifdef _SC_LEVEL2_CACHE_SIZE
        n = sysconf(_SC_LEVEL2_CACHE_SIZE);
#endif
        if (n <= 0) {
            if (std::FILE* f = std::fopen("/sys/devices/system/cpu/cpu0/cache/index2/size", "r")) {
                char unit = 0;
                if (std::fscanf(f, "%ld%c", &n, &unit) >= 1) n *= unit == 'K' ? 1024 : unit == 'M' ? 1024 * 1024 : 1;
                std::fclose(f);
            }
        }
        return n > 0 ? static_cast<std::size_t>(n) : std::size_t(256) << 10;
    }();
    return bytes;
}

}  // namespace fusedopt
