// Batch normalization forward and backward, written once over the vector layer and compiled
// once per ISA (torch.nn.functional.batch_norm semantics; formulas in fusedopt/batchnorm.py):
// this header holds what both passes share (the work decomposition, the sums, the elementwise
// loop, the two layouts, the task runner); batchnorm_forward.cpp and batchnorm_backward.cpp,
// two translation units per ISA so that the build's two cores share them, hold the passes.
//
// x is viewed as (outer, C, inner): rows of C * inner elements, channel c owning columns
// [c * inner, (c + 1) * inner) of every row. Two layouts of the work:
//   planar  (inner >= kPlanarMinInner, NCHW): a tile is one channel; each row of a block is a
//           contiguous run of that channel, summed into register accumulators.
//   columns (small inner: channels-last, (N, C); also short planar rows of large tensors with
//           many rows, see Plan::short_rows_as_columns): a tile is every channel (rows up to
//           kWholeRowMaxCols long) or kTileCols columns (whole channels); sums run down the
//           rows into one accumulator per column, then each channel adds up its columns.
// A tile's rows are cut into blocks (about kBlockElems elements planar, kColumnBlockElems in
// columns). Statistics are computed per block, while it is in L1/L2, from sums of deviations
// from a shift near the mean (see forward_statistics), and merged across blocks with Chan's
// formula: no E[x^2] - E[x]^2 cancellation, and x is read from memory once. With many tiles,
// one task does a whole tile (statistics, then the normalizing pass while the channel is
// still in L2); with few, a tile's blocks are cut into groups that run in parallel and are
// merged in group order.
//
// Sums are added in the data's type T over short runs (at most 16 terms per lane in the planar
// layout, 16 rows in the columns one: a float sum of k terms is within about k ulp of their
// absolute sum, and the deviations from a shift near the mean are what is summed for the
// variance) and accumulated in double from there. Widening every element to double instead
// costs twice the vector instructions, which is what bounded the statistics passes. Every
// block, group and merge order depends only on the shape, never on the thread count (a tile
// of whole rows may be cut into tiles of whole channels for the threads, which changes no
// channel's sums), so results are bitwise identical for any number of threads.
// Included only by the ISA copies (namespace fusedopt::<isa>), each of which gets its own.
#pragma once
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <numeric>
#include <type_traits>
#include <vector>

#include "../dispatch.h"
#include "../parallel.h"
#include "../simd/vec.h"

namespace fusedopt {
namespace FUSEDOPT_ISA_NS {
namespace {
constexpr std::size_t kPlanarMinInner = 32;    // shorter channel runs waste the vector width
constexpr std::size_t kBlockElems = 8192;      // planar: 32 KB of float: the second pass hits L1/L2
// planar: rows per block at most. A tile's statistics pass takes its blocks one after the other
// (a shift, the sums, a merge per block: work per block, not per element), and the tile's
// elementwise pass follows the whole tile's statistics, so a block's rows need not stay in L1
// between passes (they are a whole row length apart, often a multiple of 4 KiB: 256 channels of
// 14x14 floats are 49 pages, so they share L1 sets). Measured 8 -> 32, 1 thread, Zen 5, both
// builds on the same arrays, best of 25 shuffled, two runs, training forward / backward:
// (32, 256, 14, 14) 1.20-1.23x / 0.90-1.07x, (64, 128, 14, 14) 1.05-1.10x / 1.14-1.15x, (48,
// 256, 14, 14) 1.06-1.07x / 1.00-1.03x, (16, 1024, 14, 14) 1.02-1.07x / 0.97-0.99x, (128, 64,
// 16, 16) 0.98-1.08x / 0.95-0.96x.
constexpr std::size_t kMaxPlanarBlockRows = 32;
// columns, long rows: 8 KB of double accumulators per sum (measured, 1 / 2 threads, both builds
// in one process, 256 -> 1024 columns: (32, 1024, 3, 3) fwd 0.84x / 0.83x the time, (128, 2048,
// 2, 2) 0.98x / 0.86x, (256, 512, 4, 4) 0.96x / 0.83x, (1024, 8192) bwd 0.76x / 0.66x; (64,
// 8192) fwd 1.03x / 1.03x, (256, 512, 4, 4) bwd 1.05x / 0.82x)
constexpr std::size_t kTileCols = 1024;
// columns: whole rows cut into a tile per thread (see Plan) keep at least this many columns each
// (the former kTileCols: with 1024, a (256, 1024) call was one tile, one thread, on torch's
// 2-thread team; its fusedopt.torch.BatchNorm1d step went from 0.32 to 0.44 ms)
constexpr std::size_t kMinThreadTileCols = 256;
// columns: rows up to this long are one tile, so every pass reads whole rows in order (tiles
// of a row cut it into strided pieces, which the prefetchers and the streaming stores handle
// at half the speed); longer rows are cut into tiles of kTileCols columns
constexpr std::size_t kWholeRowMaxCols = 4096;
// columns: per-block work (clearing the accumulators, a merge per channel) amortized over rows:
// blocks of at least kMinColumnBlockRows rows and kColumnBlockElems elements (128 KB of float:
// a block read again for a reshift still comes from L2). Measured 1 thread, 32 -> 128 rows:
// (256, 1024) forward 0.198 -> 0.168 ms, (1024, 4096) 6.1 -> 4.0 ms, (6272, 256) 1.80 -> 1.45
// ms; 8192 -> 32768 elements (128 -> 512 rows of 64 channels): (32, 56, 56, 64) forward
// 6.1-6.2 -> 5.2-5.3 ms, backward 8.2-8.3 -> 7.4; (65536 * 4 / C, C) for C = 3 .. 64 even or
// up to 10% faster. 128 -> 256 rows: a block costs ~24 cycles per channel besides its sums
// (the (129, 1024) forward takes 8 us more than (128, 1024)); measured, 1 thread, thread CPU,
// best of 9-15 in 3 alternating runs: (256, 1024) forward 134-145 -> 105-131 us, backward
// 193-201 -> 177-191 (with blocks and rows taken last to first, as before session 26; first to
// last the backward was 189-209), (1024, 4096) forward 2452-2520 -> 2252-2284, NHWC (32, 14, 14, 256) forward
// 787-847 -> 783-827; other shapes within noise. (256, 1024) is then one block, one group: a
// call of that size runs on one thread anyway where L2 is >= 1 MB (run_tasks), not on a 512 KB
// L2, where two groups could have run on two threads. Rows of more than 128 float columns make
// blocks larger than 128 KB (1 MB at 1024 columns, 4 MB at 4096): a reshift's second read of
// such a block (a shift over ~1 standard deviation off, rare) may come from L3 or memory.
constexpr std::size_t kMinColumnBlockRows = 256;
constexpr std::size_t kColumnBlockElems = 32768;
// split path: at least this much work per task (when each group's first block took an extra
// sum pass, 2^17 over 2^16 measured (32, 56, 56, 64) channels-last forward -4%, (256, 1024) -12%
// on 1 thread and -15% on 2; 2^18 leaves (256, 1024) a single group, one thread)
constexpr std::size_t kGroupElems = 1 << 17;
constexpr std::size_t kShiftSample = 32;  // forward: elements per channel that set a group's first shift
constexpr std::size_t kMinTilesForFused = 16;  // at least this many tiles: each tile whole in one task
constexpr std::size_t kTileRunsPerThread = 8;  // fused path: tasks per thread (runs of neighbouring tiles)
constexpr std::size_t kColumnRowsPerPass = 16;  // columns: rows added in T per widening into double
constexpr std::size_t kColumnVecsPerPass = 4;   // columns: vectors of columns summed side by side
constexpr std::size_t kVectorBytes = Vec<float>::size * sizeof(float);  // of one vector of the ISA
constexpr std::size_t kPrefetchRowsMaxBytes = 16384;  // see Plan::statistics_prefetch_distance
constexpr std::size_t kSumLaneTerms = 16;      // planar: terms a T lane adds up before widening into double
// run_tiles: tiles of one block go through the stages in batches of up to this many bytes of
// the call's arrays (measured, (8, 512, 7, 7) forward, 1 thread, best of 15, two rounds: one
// tile at a time 78 us; 16 KiB 69-72, 32 KiB 67-71, 64 KiB 70-71; backward with 32 KiB, best
// of 5 in 6 alternating runs: (8, 512, 7, 7) 89-92 -> 84-89 us, (1, 512, 7, 7) 17.6-18.3 ->
// 14.3-15.8)
constexpr std::size_t kBatchBytes = 32768;
// apply_block: a block of whole rows shorter than this is one run (measured, 1 thread,
// (262144 / C, C) float, fwd + bwd: C = 8 546 -> 294 us, 20 544 -> 379, 32 318 -> 283, 48
// 330 -> 302; 64 even; 128 and 256 11-17% slower as one run)
constexpr std::size_t kShortRowBytes = 256;
// planar rows shorter than this are not streamed, and may be summed as columns (see Plan)
constexpr std::size_t kShortPlanarRowBytes = 512;

template <class F>
void with_flag(bool b, F&& f) {
    if (b)
        f(std::true_type{});
    else
        f(std::false_type{});
}

// The options of a call (forward: the fused ReLU; backward: the ReLU mask, training or eval)
// are template arguments of the float kernels, a copy per value, and read at run time by the
// double ones: one copy per layout (with the output streaming a run-time flag for all, the
// copies per ISA went from 64 to 16 and the compile time of these files from 46 to 17 s of
// CPU for avx512). Option<V>::get(value) is the option: V itself, or with V = kRunTime the
// argument (a loop-invariant branch, or a max with -inf for the ReLU). Measured, 1 thread,
// float64, against a copy per option: (16, 64, 56, 56), (32, 14, 14, 256) and (256, 1024)
// within +-4% (the noise); (8, 512, 7, 7) backward with a ReLU mask or in eval mode ~10% slower.
constexpr int kRunTime = -1;
template <class T>
constexpr bool kOptionsAtRunTime = std::is_same_v<T, double>;
template <int V>
struct Option {
    template <class A>
    static A get(A value) { return V == kRunTime ? value : static_cast<A>(V); }
};

// Whether a call whose arrays (those it reads and writes) take `bytes` runs its tasks on the
// thread pool: not when it is small, when those bytes take at most twice one core's L2 and the
// region would run on fusedopt's own pool. Those of the caller's last call are there or in the
// other L2, the task's share is a few microseconds of work, and the pool's sleeping workers
// cost a wake-up and a join (measured with a constant 2^16 elements instead, 2 threads against
// 1, 2 MB L2: (8, 512, 7, 7) forward (1.6 MB) and backward (2.4 MB), (256, 1024) forward (2 MB)
// and backward (3 MB) 15-30% slower in every run; on a 4 MB L2, fwd + bwd, best of 30, the
// pool's 2 threads against 1: (8, 512, 7, 7) 0.202 against 0.205 ms, (16, 512, 7, 7) 0.445
// against 0.499: a threshold of one L2 may serve there). On torch's OpenMP team
// (fusedopt.torch) the workers spin between regions and a region costs a microsecond or two:
// there small calls gain from the second thread (fwd + bwd, best of 30, 2 threads against 1: (8, 512, 7, 7) 0.121
// against 0.194 ms, (16, 512, 7, 7) 0.313 against 0.410; in a fusedopt.torch.BatchNorm2d
// training step 0.338 against 0.530 ms, the calling core's L2 then keeping more of the
// surrounding code). Which tasks run where never changes a result.
// (Below kMinTeamBytes a second thread did not pay on torch's team either: 2 threads against 1,
// best of 25 in separate processes, which differ by up to 15%: (2, 7, 7, 512) channels-last,
// 0.4 MB, forward 26.5-27.5 against 19.5-22.5 us; (256, 512), 1 MB, forward 47-53 against
// 43-46, backward (1.5 MB) 50-60 against 65-78.)
constexpr std::size_t kMinTeamBytes = std::size_t(1) << 20;
inline bool runs_in_parallel(std::size_t bytes) {
    return get_num_threads() > 1 &&
           (bytes > 2 * l2_cache_bytes() || (get_openmp_parallel() != nullptr && bytes > kMinTeamBytes));
}

// Runs task(0 .. ntasks) on the thread pool when `parallel` (runs_in_parallel), else inline.
template <class F>
void run_tasks(std::size_t ntasks, bool parallel, F&& task) {
    if (ntasks <= 1 || !parallel) {
        for (std::size_t i = 0; i < ntasks; ++i) task(i);
        return;
    }
    parallel_for(static_cast<int>(ntasks), [&](int i) { task(static_cast<std::size_t>(i)); });
}

// ---- the work decomposition ------------------------------------------------------------------

struct Block {
    std::size_t row_begin, row_end, col_begin, col_end;  // columns counted from the tile's first
};

struct Plan {
    std::size_t outer, channels, inner, row_len;
    bool planar;
    std::size_t tile_channels, ntiles;
    std::size_t block_rows, block_cols, col_chunks, blocks_per_tile;
    std::size_t groups, blocks_per_group;  // groups == 1: each tile whole in one task (the fused path)
    std::size_t tiles_per_batch;  // of the fused path (see run_tiles): several small tiles of one block each, else 1
    std::size_t bytes;  // of the arrays the call reads and writes
    std::size_t input_bytes;  // of the arrays it reads (all but the output)
    std::size_t value_bytes;  // of one element of x
    bool parallel;      // runs_in_parallel(bytes)
    bool stream;        // the output is written with non-temporal stores (see streams)

    // bytes_per_element: of all the arrays the call reads and writes, per element of x;
    // value_bytes: of one element of x
    Plan(const BatchNormShape& s, std::size_t bytes_per_element, std::size_t value_bytes)
        : outer(s.outer), channels(s.channels), inner(s.inner), row_len(s.channels * s.inner),
          bytes(s.outer * s.channels * s.inner * bytes_per_element),
          input_bytes(s.outer * s.channels * s.inner * (bytes_per_element - value_bytes)), value_bytes(value_bytes),
          parallel(runs_in_parallel(bytes)) {
        planar = inner >= kPlanarMinInner && !short_rows_as_columns(value_bytes);
        if (planar) {
            tile_channels = 1;
            block_cols = std::min(inner, kBlockElems);
            col_chunks = (inner + block_cols - 1) / block_cols;
            block_rows = std::min(kMaxPlanarBlockRows, std::max<std::size_t>(1, kBlockElems / inner));
        } else {
            tile_channels = row_len <= kWholeRowMaxCols ? channels
                                                        : std::min(channels, std::max<std::size_t>(1, kTileCols / inner));
            block_cols = tile_channels * inner;
            col_chunks = 1;
            block_rows = std::max(kMinColumnBlockRows, kColumnBlockElems / block_cols);
            if (parallel && tile_channels == channels && outer <= block_rows && row_len > kMinThreadTileCols) {
                // Whole rows of one block, e.g. (256, 1024), are one tile: one task. On several
                // threads they are cut into a tile of whole channels per thread (at least
                // kMinThreadTileCols columns), with the same block rows: every channel's sums are the
                // same terms in the same order in any tile (whole rows are not short, see
                // kShortRowBytes), so the results do not depend on the cut. (On 1 thread the
                // cut costs: (256, 1024) backward 209-211 -> 235-237 us; on torch's 2-thread
                // team fwd / bwd 137-141 / 213-216 -> 102-106 / 140-142 us, best of 25.)
                const std::size_t threads = static_cast<std::size_t>(get_num_threads());
                tile_channels = std::max((channels + threads - 1) / threads, std::max<std::size_t>(1, kMinThreadTileCols / inner));
                block_cols = tile_channels * inner;
            }
        }
        ntiles = (channels + tile_channels - 1) / tile_channels;
        blocks_per_tile = (outer + block_rows - 1) / block_rows * col_chunks;
        const std::size_t tile_elems = outer * tile_channels * inner;
        groups = ntiles >= kMinTilesForFused ? 1 : std::clamp<std::size_t>(tile_elems / kGroupElems, 1, blocks_per_tile);
        blocks_per_group = (blocks_per_tile + groups - 1) / groups;
        groups = (blocks_per_tile + blocks_per_group - 1) / blocks_per_group;
        const std::size_t tile_bytes = std::max<std::size_t>(1, bytes / std::max<std::size_t>(1, ntiles));
        tiles_per_batch = blocks_per_tile == 1 ? std::max<std::size_t>(1, kBatchBytes / tile_bytes) : 1;
        stream = streams(value_bytes);
    }
    // Channels of short rows (NCHW with a small spatial size, rows under kShortPlanarRowBytes)
    // are read a short run per row, a whole row length apart, and their outputs, not streamed
    // (see streams), are read for ownership first. From beyond L2 and with enough rows the
    // columns layout, which reads and streams tiles of kTileCols columns a row at a time, is
    // faster; with few rows (a block or two per channel) planar is. Measured, 1 thread, float,
    // both builds in one process, each output written to the next of a ring of 256 MB of
    // buffers (as a network's layers find theirs: not in cache), ms, planar -> columns from half
    // as many rows as a row has elements: (32, 2048, 7, 7) forward 2.44 -> 1.69, eval 1.91 ->
    // 1.27, (48, 512, 7, 7) forward 1.58 -> 0.86, eval 0.92 -> 0.65; backward (its output
    // rewritten in cache) (32, 2048, 7, 7) 3.04 -> 2.01, (64, 512, 7, 7) 1.25 -> 0.93. At fewer
    // rows, planar: (8, 8192, 7, 7) forward 1.53 against 2.64 and backward 1.98 against 3.00
    // (outputs not in cache), (16, 2048, 10, 10) forward 1.72 against 1.86, (32, 1024, 10, 10)
    // backward 1.79 against 1.99 (but (48, 1024, 10, 10), just under the line, measured 5.00
    // against 3.73 for its backward). (An output rewritten in a loop, as the bench does, stays
    // in L3, which favours the planar forward's ordinary stores: (32, 2048, 7, 7) planar 1.37 ms
    // against columns 1.46.) In L2, (64, 64, 7, 7), the two were mixed (forward 0.055 -> 0.064,
    // backward 0.115 -> 0.103): planar.
    bool short_rows_as_columns(std::size_t value_bytes) const {
        return short_rows(value_bytes) && 2 * outer >= inner && outer * row_len * value_bytes > l2_cache_bytes();
    }
    bool short_rows(std::size_t value_bytes) const { return inner * value_bytes < kShortPlanarRowBytes; }
    // Outputs of kStreamMinBytes or more are streamed, but not in short planar runs: a channel's
    // row of 49 floats has at most three whole lines to stream and partial lines at both ends,
    // and the rows are a whole row length apart, so the write-combining buffers are flushed
    // after a line or two (measured, 1 thread, float, fwd / bwd ms, streamed -> ordinary
    // stores: (16, 4096, 7, 7) 2.87 / 3.29 -> 1.39 / 1.78, (8, 8192, 7, 7) 3.34 / 3.77 -> 1.15 /
    // 1.55, (16, 2048, 10, 10) 2.25 / 2.45 -> 1.17 / 1.56; each output a buffer not in cache,
    // forward (16, 4096, 7, 7) 3.25 -> 1.92, (8, 8192, 7, 7) 3.80 -> 1.53; with rows of 196
    // floats, (32, 1024, 14, 14), streaming is faster: 2.55 / 3.50 against 2.33 / 4.10).
    bool streams(std::size_t value_bytes) const {
        return total() * value_bytes >= kStreamMinBytes && !(planar && short_rows(value_bytes));
    }

    std::size_t total() const { return outer * row_len; }
    std::size_t channel_begin(std::size_t t) const { return t * tile_channels; }
    std::size_t tile_nchannels(std::size_t t) const { return std::min(channels, (t + 1) * tile_channels) - t * tile_channels; }
    std::size_t tile_offset(std::size_t t) const { return channel_begin(t) * inner; }  // first column in a row
    std::size_t tile_cols(std::size_t t) const { return planar ? inner : tile_nchannels(t) * inner; }
    std::size_t group_begin(std::size_t g) const { return g * blocks_per_group; }
    std::size_t group_end(std::size_t g) const { return std::min(blocks_per_tile, (g + 1) * blocks_per_group); }

    Block block(std::size_t t, std::size_t b) const {
        // (no 64-bit division where it is by 1, every layout but planar blocks of long rows)
        const std::size_t rb = col_chunks == 1 ? b : b / col_chunks, cc = col_chunks == 1 ? 0 : b % col_chunks;
        return {rb * block_rows, std::min(outer, (rb + 1) * block_rows), cc * block_cols,
                std::min(tile_cols(t), (cc + 1) * block_cols)};
    }
    // How far (in elements) the next block of the tile is from block b, or 0 where there is none
    // or it is smaller (its last rows or columns: element i + distance of block b would be past
    // it, in other channels' data or past the array).
    std::ptrdiff_t next_block_distance(std::size_t t, std::size_t b) const {
        if (b + 1 >= blocks_per_tile) return 0;
        const Block now = block(t, b), next = block(t, b + 1);
        if (next.row_end - next.row_begin < now.row_end - now.row_begin || next.col_end - next.col_begin < now.col_end - now.col_begin)
            return 0;
        return static_cast<std::ptrdiff_t>((next.row_begin - now.row_begin) * row_len) +
               (static_cast<std::ptrdiff_t>(next.col_begin) - static_cast<std::ptrdiff_t>(now.col_begin));
    }
    // How far (in elements) the same element of the next tile is (the next channel planar, the next
    // tile's columns of the same row in the columns layout), for the elementwise pass of tile t to
    // prefetch, or 0 (nothing to prefetch), in a call that takes statistics (with_statistics: the
    // training forward, the backward's sums). On the fused path one tile at a time reads its
    // channel for the statistics, then runs the elementwise pass from cache, whose only DRAM
    // traffic is the streamed output: prefetching the next channel there makes the reads of the
    // next statistics pass overlap the writes instead of following them (the forward took the time
    // of reading x twice: a read-only pass, then a read-write one). Only where two tiles' inputs
    // fit in L2: a prefetch would otherwise evict the tile being applied. Measured, 1 thread, Zen 5
    // (1 MB L2, 32 MB L3), best of 15 interleaved, ms: forward (32, 64, 56, 56) 1.20 -> 0.88 (probe
    // 0.75), (16, 64, 56, 56) 0.47 -> 0.41, (32, 256, 14, 14) 0.31 -> 0.24, (128, 64, 32, 32) 1.81
    // -> 1.67; backward (16, 64, 56, 56) 0.91 -> 0.70, (32, 256, 14, 14) 0.58 -> 0.39, (32, 128,
    // 28, 28) 0.81 -> 0.74; but backward (128, 64, 32, 32), 1 MB of x and dy per channel, 3.27 ->
    // 3.53 before the L2 bound. Columns tiles of short NCHW rows, backward (32, 2048, 7, 7) 1.32 ->
    // 1.17, (64, 1024, 7, 7) 1.34 -> 1.11; (64, 512, 7, 7), (256, 512, 4, 4), (1024, 8192) within
    // +-3%. (A pass without statistics has nothing to overlap: the eval forward, prefetching, was
    // 1.24x faster at (32, 64, 56, 56) but 0.93-0.95x at (128, 64, 32, 32) and (32, 256, 14, 14) on
    // 2 threads.)
    // Not into a narrower last tile (past its columns), nor, on several threads, into the next
    // run of tiles (see run_tiles), which another thread may take.
    std::ptrdiff_t next_tile_distance(std::size_t t, bool with_statistics) const {
        const bool one_at_a_time = with_statistics && groups == 1 && tiles_per_batch == 1;
        const bool two_fit = 2 * (input_bytes / ntiles) <= l2_cache_bytes();
        if (!one_at_a_time || !two_fit || t + 1 >= ntiles || tile_nchannels(t + 1) < tile_nchannels(t)) return 0;
        if (parallel && run_begins_at(t + 1)) return 0;
        return static_cast<std::ptrdiff_t>(tile_channels * inner);
    }
    // The fused path's tasks: runs of neighbouring tiles, run r = tiles [r * ntiles / runs,
    // (r + 1) * ntiles / runs) (see run_tiles)
    std::size_t tile_runs() const {
        return std::min(ntiles, kTileRunsPerThread * static_cast<std::size_t>(get_num_threads()));
    }
    bool run_begins_at(std::size_t t) const {
        const std::size_t runs = tile_runs(), r = (t * runs + ntiles - 1) / ntiles;  // the first run starting at t or later
        return r * ntiles / runs == t;
    }
    // How far (in elements) ahead the statistics pass over block b of tile t asks for x's (and
    // dy's) lines, or 0. Planar: the next block of the tile. Its blocks are rows of one channel a
    // whole row length apart, which the hardware prefetchers find late (the backward's sums,
    // which did not prefetch, measured 1 thread, Zen 5, best of 16 interleaved, ms: (32, 64, 56,
    // 56) 2.16 -> 1.94, (128, 64, 32, 32) 3.40 -> 3.16, (4, 64, 224, 224) 4.68 -> 4.40; where
    // the last tile's pass prefetched this one (next_tile_distance) within +-4%).
    // Columns, tiles of whole rows: Columns::reduce_block reads kColumnRowsPerPass rows at a
    // time, kColumnVecsPerPass vectors of columns across them per pass, so a row of more
    // columns than a pass is read in pieces a row apart, and the prefetchers fetch ahead within
    // each piece, not into the next pass's. Asked for: the same element of the next rows
    // (kColumnRowsPerPass of them, where they take at most 16 KB, so that the lines stay in L1
    // until read), else of the next pass (columns further on). Measured, 1 thread, Zen 5, both
    // builds on the same arrays in one process, best of 25 in shuffled order, training forward /
    // backward, against no software prefetch: (32, 56, 56, 64) 1.21x / 1.17x faster, (64, 28,
    // 28, 128) 1.11x / 1.16x, (32, 14, 14, 256) 1.14x / 1.14x, (6272, 256) 1.16x / 1.11x, (1024,
    // 4096) 1.26x / 1.05x; (256, 1024) (one block) and (8, 14, 14, 512) within 2%. The next pass
    // instead of the next rows for 256 columns: (32, 14, 14, 256) 1.02x / 1.06x, (6272, 256)
    // 1.05x / 1.01x; two row groups ahead at 1024 columns: (256, 1024) 0.89x. Rows shorter than
    // a pass, read in a few sequential sweeps, are left to the hardware prefetchers ((100352, 16)
    // forward 0.9x with the next rows asked for), as are tiles of part of a row.
    std::ptrdiff_t statistics_prefetch_distance(std::size_t t, std::size_t b) const {
        if (planar) return next_block_distance(t, b);
        const std::size_t pass_cols = kColumnVecsPerPass * kVectorBytes / value_bytes;
        if (tile_cols(t) != row_len || row_len < pass_cols) return 0;
        const std::size_t next_rows = kColumnRowsPerPass * row_len;
        return static_cast<std::ptrdiff_t>(next_rows * value_bytes <= kPrefetchRowsMaxBytes ? next_rows : pass_cols);
    }
    // elements of one channel in block b
    double channel_count(const Block& b) const {
        return static_cast<double>((b.row_end - b.row_begin) * (planar ? b.col_end - b.col_begin : inner));
    }
};


// V (a vector of doubles, or Scalar<double>) from and to an array of T: floats widened to
// double and rounded back (as static_cast), doubles as they are. The per-channel finishes work
// in double whatever T is.
template <class V, class T>
V load_as_double(const T* p) {
    if constexpr (std::is_same_v<T, float>) return V::load_float(p);
    else return V::load(p);
}
template <class V, class T>
void store_from_double(V x, T* p) {
    if constexpr (std::is_same_v<T, float>) x.store_float(p);
    else x.store(p);
}

// Adds the lanes of v, widened to double, into p[0 .. V::size).
// (VD is a parameter so that the branches not taken are not compiled: the scalar ISA's
// Vec<double> has no widen_low.)
template <class V, class VD = Vec<double>>
void add_widened(V v, double* p) {
    using T = typename V::value_type;
    if constexpr (V::size == 1) {
        *p += static_cast<double>(v.v);
    } else if constexpr (std::is_same_v<T, double>) {
        (VD::load(p) + v).store(p);
    } else {
        (VD::load(p) + VD::widen_low(v)).store(p);
        (VD::load(p + VD::size) + VD::widen_high(v)).store(p + VD::size);
    }
}

// The lanes of v widened to double and added up (VD as in add_widened).
template <class V, class VD = Vec<double>>
double widened_sum(V v) {
    if constexpr (V::size == 1)
        return static_cast<double>(v.v);
    else if constexpr (std::is_same_v<typename V::value_type, double>)
        return reduce_add(v);
    else
        return reduce_add(VD::widen_low(v) + VD::widen_high(v));
}

// Sums of NS terms over the contiguous runs of a block. add_run(n, term): term(v, i, acc) adds
// element i's terms (vectors V = decltype(v) of T) into acc[0 .. NS), for i in [0, n). Terms
// are added in T by four independent accumulators (hiding the add latency), which are added
// together pairwise and widened into double lanes (see the file comment) before a lane of any
// of them would hold more than kSumLaneTerms terms: each lane of the float sum is then rounded
// as one of kSumLaneTerms + 2 terms added in a row would be. A run's last vectors (fewer than
// four) go to different accumulators, so short runs (a 7x7 channel's rows, 6 vectors and one
// element) do not make one long chain of dependent adds, and they share the accumulators, so
// the widening is paid every few runs, not for each (measured, 1 thread, (8, 512, 7, 7) float,
// alternating builds: forward 171-174 -> 162-163 us, backward 183-184 -> 175-176, against
// widening when the four held 16 terms together and a run's last vectors all in the first).
// The tail of a run goes to a Scalar<T> per term, counted the same way. add_to(sums) widens
// what is left and adds every lane to sums.
template <class T, std::size_t NS>
struct RunSums {
    using V = Vec<T>;
    static constexpr std::size_t W = V::size, U = 4;
    V acc[U][NS];
    Scalar<T> tail[NS];
    double lanes[NS][W] = {};
    std::size_t vector_terms = 0, tail_terms = 0;  // terms in a lane of acc[0] (the fullest), of tail

    RunSums() { clear(); }
    void clear() {
        for (auto& a : acc)
            for (auto& s : a) s = V(T(0));
        for (auto& s : tail) s = Scalar<T>(T(0));
        vector_terms = tail_terms = 0;
    }
    void widen() {
        for (std::size_t s = 0; s < NS; ++s) {
            add_widened(combined(s), lanes[s]);
            lanes[s][0] += static_cast<double>(tail[s].v);
        }
        clear();
    }
    template <class Term>
    void add_run(std::size_t n, Term&& term) {
        constexpr std::size_t kChunk = kSumLaneTerms * U * W;
        for (std::size_t begin = 0; begin < n; begin += kChunk) {
            const std::size_t end = std::min(n, begin + kChunk), len = end - begin;
            const std::size_t vectors = (len / W + U - 1) / U, tails = len % W;  // per lane of acc[0], of tail
            if (vector_terms + vectors > kSumLaneTerms || tail_terms + tails > kSumLaneTerms) widen();
            vector_terms += vectors;
            tail_terms += tails;
            add_elements(begin, end, term, acc, tail);
        }
    }
    // term for the elements [begin, end) into the four accumulators and the tail: whole groups
    // of four vectors, then the last vectors in different accumulators, then one at a time
    template <class Term>
    static void add_elements(std::size_t begin, std::size_t end, Term& term, V (&acc)[U][NS], Scalar<T> (&tail)[NS]) {
        std::size_t i = begin;
        for (; i + U * W <= end; i += U * W)
            for (std::size_t u = 0; u < U; ++u) term(V{}, i + u * W, acc[u]);
        for (std::size_t u = 0; u + 1 < U && i + W <= end; ++u, i += W) term(V{}, i, acc[u]);
        for (; i < end; ++i) term(Scalar<T>{}, i, tail);
    }
    // the four accumulators of term s, added pairwise
    V combined(std::size_t s) const { return (acc[0][s] + acc[1][s]) + (acc[2][s] + acc[3][s]); }
    void add_to(double* sums) {
        widen();
        for (std::size_t s = 0; s < NS; ++s)
            for (double lane : lanes[s]) sums[s] += lane;
    }
};

// A planar tile (one channel) small enough to be summed in one go (small_channel): the sums
// of NS terms over its rows in four vector accumulators of T and one Scalar<T> for the row
// tails, widened into double once, at the end. No block, no double lanes in memory, no lane
// by lane addition: for a 7x7 channel of 8 rows the block machinery (a sample pass, the
// deviation pass, their merges) cost ~380 cycles more than the sums themselves. The lanes are
// filled as RunSums fills them (a row's last vectors in different accumulators) and
// small_channel admits only tiles where no lane of the four or of the tail holds more than
// kSumLaneTerms terms: the same rounding bound. term(v, i, acc) as in RunSums, for the
// elements i of the rows [0, rows) of tile t.
template <class T>
bool small_channel(const Plan& p) {
    constexpr std::size_t W = Vec<T>::size, U = 4;
    if (!p.planar || W == 1 || p.blocks_per_tile != 1 || p.groups != 1) return false;
    return p.outer * ((p.inner / W + U - 1) / U) <= kSumLaneTerms && p.outer * (p.inner % W) <= kSumLaneTerms;
}
template <class T, std::size_t NS, class Term>
FUSEDOPT_INLINE void small_channel_sums(const Plan& p, std::size_t t, std::size_t rows, Term term, double* sums) {
    RunSums<T, NS> r;  // only its accumulators: small_channel bounds the terms per lane
    for (std::size_t row = 0; row < rows; ++row) {
        const std::size_t begin = row * p.row_len + p.tile_offset(t);
        RunSums<T, NS>::add_elements(begin, begin + p.inner, term, r.acc, r.tail);
    }
    for (std::size_t s = 0; s < NS; ++s) sums[s] = widened_sum(r.combined(s)) + static_cast<double>(r.tail[s].v);
}

// Streamed stores go the other way through memory when out is a little ahead of an input
// modulo 4 KiB (as arrays from the heap often are): going forward, every load of that input
// would follow a pending non-temporal store to the same page offset, which the CPU takes as a
// possible dependence and stalls on (4K aliasing; measured (32, 56, 56, 64) channels-last
// forward 3.2x slower for y 16 bytes ahead of x). Going backward, those stores are to offsets
// already loaded. Ordinary stores leave the store queue fast enough not to matter (same
// measurement on (6272, 256): 1.13 vs 1.10 ms), and going backward through short rows costs
// them more (1.94 ms). kAliasWindow: the store queue's reach, measured: 64 bytes ahead is slow,
// 1 KiB is not.
constexpr std::uintptr_t kAliasWindow = 512;
inline bool ahead_in_page(const void* a, const void* b) {
    const std::uintptr_t d = (reinterpret_cast<std::uintptr_t>(a) - reinterpret_cast<std::uintptr_t>(b)) % kPageBytes;
    return d != 0 && d < kAliasWindow;
}
inline bool store_backward(const void* out, std::initializer_list<const void*> inputs) {
    bool out_ahead = false, input_ahead = false;
    for (const void* in : inputs) {
        if (!in) continue;
        out_ahead = out_ahead || ahead_in_page(out, in);
        input_ahead = input_ahead || ahead_in_page(in, out);
    }
    return out_ahead && !input_ahead;
}

// out[i] = body(v, i, col) for every element i of block b of tile t (i indexes the arrays, col is
// i's column within the tile, for per-column values), one row at a time, rows in increasing order,
// i increasing or (backward, see store_backward) decreasing within a row. (After a statistics pass
// the callers take the blocks last to first, so that what that pass read last, still in L2, is read
// again before this pass's misses evict it; measured, 1 thread, with rows last to first too: (256,
// 1024) backward, x, dy and dx 3 MB, 201-209 us first to last, 188-191 last to first. Within a
// block the rows go first to last, even so: the block is in L2 or not as a whole, and rows taken
// last to first were streams the hardware prefetchers followed badly, measured, 1 thread, Zen 5,
// ABBA, best of 15 in 4-6 processes of each, us: channels-last (32, 14, 14, 256) forward 340 ->
// 273, backward 690 -> 522, (32, 56, 56, 64) forward 1713 -> 1529, backward 2844 -> 2784; (32,
// 2048, 7, 7) 828 / 1304 -> 740 / 1225, planar shapes and (256, 1024) within noise.) stream: whole
// cache lines are written with non-temporal stores (aligned vectors), the partial lines at either
// end of a run with ordinary ones: a line written both ways would flush the write-combining buffer
// on every store, about ten times slower. So that short rows do not leave partial lines everywhere,
// a streamed block of whole rows (contiguous) is done as one run, its columns wrapping back to the
// first at the end of each row (a vector may straddle two rows: per-column values are made with
// wrap, see Columns::values); so is a block of short rows, whose scalar tails would otherwise cost
// more than their vectors. Scalar<T> rounds as Vec<T> does, so the values are the same either way.
// (body is taken by value: a local copy, which the stores cannot alias, stays in registers. Always
// inlined, into the one place that calls each copy: called, it took body, a closure of per-channel
// values, on the stack, written there by scalar stores and read back by a vector load that could
// not be forwarded from them, a stall per call, i.e. per tile of a small channel; measured, 1
// thread, both builds in one process, best of 15 interleaved: (8, 512, 7, 7) eval forward
// 0.83-0.87x the time in five runs (58-61 -> 48-53 us); the other shapes and passes within the
// comparison's noise, +-5-7% between two copies of one build.)
// Whether a pass may run across row ends (apply_block's runs of whole rows; with stream false,
// also Columns::short_row_sums): per-column values must then wrap (see Columns::values).
template <class T>
bool wraps_rows(const Plan& p, bool stream) {
    return stream || (!p.planar && p.row_len * sizeof(T) < kShortRowBytes);
}
// (PER_COLUMN: whether body uses col; the planar layout's values are the same in every column,
// and its loops then keep no column count: measured, 1 thread, float, in separate runs on a busy
// machine, against keeping one: (32, 64, 56, 56) backward 3.89 -> 3.67 ms, (32, 256, 14, 14)
// 1.00 -> 0.93 ms.)
template <class T, bool PER_COLUMN, class Body>
FUSEDOPT_INLINE void apply_block(const Plan& p, std::size_t t, const Block& b, T* out, bool stream, bool backward,
                                 Body body) {
    constexpr std::size_t W = Vec<T>::size, kLine = kCacheLineBytes / sizeof(T);
    const std::size_t ncols = b.col_end - b.col_begin, rows = b.row_end - b.row_begin;
    const bool whole_rows = ncols == p.row_len && wraps_rows<T>(p, stream);
    const std::size_t nruns = whole_rows ? 1 : rows, run_len = whole_rows ? rows * ncols : ncols;
    if (!stream && !backward) {
        // ordinary stores in increasing order, the common case of small tensors: a loop of its
        // own, with none of the others' bookkeeping per run (the general loop below kept the
        // stream and direction flags and the line bounds live across every row of 49 floats,
        // and spilled; measured, 1 thread, both builds in one process, best of 15-21
        // interleaved, three runs: (8, 512, 7, 7) forward 44.6-46.5 -> 41.6-43.0 us, backward
        // 0.97-0.985x, eval 0.93-1.05x (within noise); (1, 512, 7, 7) forward 0.97x; the
        // larger shapes within +-1%)
        const std::size_t first = b.row_begin * p.row_len + p.tile_offset(t) + b.col_begin;
        for (std::size_t r = 0; r < nruns; ++r) {
            std::size_t i = first + r * p.row_len, col = b.col_begin;
            const std::size_t end = i + run_len;
            auto step = [&](auto v) {
                const auto value = body(v, i, col);
                value.store(out + i);
                i += decltype(v)::size;
                if constexpr (PER_COLUMN) {
                    col += decltype(v)::size;
                    while (col >= b.col_end) col -= ncols;  // see the loop below
                }
            };
            while (i + W <= end) step(Vec<T>{});
            while (i < end) step(Scalar<T>{});
        }
        return;
    }
    for (std::size_t r = 0; r < nruns; ++r) {
        const std::size_t begin = (b.row_begin + r) * p.row_len + p.tile_offset(t) + b.col_begin, end = begin + run_len;
        // [begin, head) ordinary stores up to a line boundary, [head, lines) whole lines,
        // [lines, vectors) vectors, [vectors, end) one element at a time
        std::size_t head = begin, lines = begin;
        if (stream) {
            head = std::min(end, begin + elements_to_cache_line(out + begin));
            lines = head + (end - head) / kLine * kLine;
        }
        const std::size_t vectors = lines + (end - lines) / W * W;
        auto put = [&](auto v, auto stream, std::size_t i, std::size_t col) {
            const auto value = body(v, i, col);
            if constexpr (decltype(stream)::value) value.stream(out + i); else value.store(out + i);
        };
        if (!backward) {
            std::size_t i = begin, col = b.col_begin;
            auto step = [&](auto v, auto stream) {
                put(v, stream, i, col);
                i += decltype(v)::size;
                if constexpr (PER_COLUMN) {
                    col += decltype(v)::size;
                    // only whole rows wrap (more than once for rows shorter than a vector); a run
                    // of one row ends where col reaches col_end (no test of whole_rows: GCC would
                    // make a copy of the loop for each value)
                    while (col >= b.col_end) col -= ncols;
                }
            };
            while (i < head) step(Scalar<T>{}, std::false_type{});
            while (i < lines) step(Vec<T>{}, std::true_type{});
            while (i < vectors) step(Vec<T>{}, std::false_type{});
            while (i < end) step(Scalar<T>{}, std::false_type{});
        } else {
            std::size_t i = end, col = b.col_end;  // col: i's column (end wraps to col_begin)
            auto step = [&](auto v, auto stream) {
                constexpr std::size_t size = decltype(v)::size;
                i -= size;
                if constexpr (PER_COLUMN) {
                    while (col < b.col_begin + size) col += ncols;  // only whole rows wrap
                    col -= size;
                }
                put(v, stream, i, col);
            };
            while (i > vectors) step(Scalar<T>{}, std::false_type{});
            while (i > lines) step(Vec<T>{}, std::false_type{});
            while (i > head) step(Vec<T>{}, std::true_type{});
            while (i > begin) step(Scalar<T>{}, std::false_type{});
        }
    }
}

// ---- the two layouts ---------------------------------------------------------------------------
// Each gives reduce_block (per-channel sums of NS terms over a block, added into
// sums[channel_in_tile * NS + s]) and Values: per-column access to per-channel values.

struct Planar {
    static constexpr bool kPerColumn = false;  // see apply_block
    template <class A>
    struct Values {  // the tile's one channel: the same value in every column
        A value;
        template <class V> V at(V, std::size_t) const { return V(value); }
    };
    template <class A>
    static Values<A> values(const A* per_channel, std::size_t, std::size_t, std::vector<A>&, bool) {
        return {per_channel[0]};
    }

    template <class T, std::size_t NS, class Term>
    static void reduce_block(const Plan& p, std::size_t t, const Block& b, Term&& term, double* sums,
                             std::vector<double>&) {
        RunSums<T, NS> run_sums;
        for (std::size_t r = b.row_begin; r < b.row_end; ++r) {
            const std::size_t row = r * p.row_len + p.tile_offset(t) + b.col_begin;
            run_sums.add_run(b.col_end - b.col_begin,
                             [&](auto v, std::size_t i, auto* acc) { term(v, row + i, b.col_begin + i, acc); });
        }
        run_sums.add_to(sums);
    }
};

struct Columns {
    static constexpr bool kPerColumn = true;
    template <class A>
    struct Values {  // one value per column of the tile
        const A* column;
        template <class V> V at(V, std::size_t col) const { return V::load(column + col); }
    };
    // channel values repeated for each of the channel's inner columns (a view when inner == 1);
    // wrap: then the first columns again, for apply_block's runs of whole rows, where a vector
    // that starts at one of the last columns reads on into the next row's
    template <class A>
    static Values<A> values(const A* per_channel, std::size_t inner, std::size_t nchannels, std::vector<A>& scratch,
                            bool wrap) {
        if (inner == 1 && !wrap) return {per_channel};
        using V = Vec<A>;
        const std::size_t ncols = nchannels * inner;
        // whole vectors per channel, the last one running into the next channel's columns, which
        // that channel's stores then overwrite (std::fill_n's runs of a 7x7 channel's 49 were
        // ~5% of the (32, 2048, 7, 7) backward's samples)
        scratch.resize(ncols + V::size - 1);
        for (std::size_t c = 0; c < nchannels; ++c)
            for (std::size_t j = 0; j < inner; j += V::size) V(per_channel[c]).store(&scratch[c * inner + j]);
        if (wrap)
            for (std::size_t j = ncols; j < scratch.size(); ++j) scratch[j] = scratch[j - ncols];
        return {scratch.data()};
    }

    // acc[s][col] += term s of x[r, col] for the rows r of the block: kColumnRowsPerPass rows
    // at a time are summed in T in registers, then widened into the double accumulators (each
    // column's order of additions is the same in a vector lane or the scalar tail); then each
    // channel adds up its inner columns. A pass takes kColumnVecsPerPass vectors of columns
    // side by side: their independent sums hide the add latency, and the pass reads 128-byte
    // pieces of kColumnRowsPerPass rows (measured from DRAM, 64 columns, two terms: 0.87 ns per
    // element one vector and 8 rows at a time, 0.47 four vectors and 16 rows).
    // Short whole rows (wraps_rows) that are not whole vectors but whose columns repeat every
    // K or fewer vectors (K = 3, or 4 for a period of 1, 2 or 4 vectors) are summed as one run
    // of vectors that straddle rows instead of a vector or two and a scalar tail per row:
    // vector k of every K has the same columns and goes to accumulator k; kColumnRowsPerPass
    // rounds of K vectors are summed in T, then widened into double lanes, which are added to
    // their columns at the end. (measured, 1 thread, float (262144 / C, C), fwd + bwd: C = 3
    // 910 -> 381 us, 6 840 -> 305, 12 498 -> 276; whole vectors, C = 8, 16, 32: even or
    // slower this way.)
    template <class T, std::size_t NS, std::size_t K, class Term>
    static void short_row_sums(const Plan& p, const Block& b, Term&& term, double* acc) {
        using V = Vec<T>;
        constexpr std::size_t W = V::size;
        const std::size_t ncols = p.row_len, end = b.row_end * ncols;
        double lanes[NS][K * W] = {};  // lane e of the K vectors holds column e % ncols
        std::size_t i = b.row_begin * ncols;
        while (i + K * W <= end) {
            V a[K][NS];
            for (auto& ak : a)
                for (auto& as : ak) as = V(T(0));
            for (std::size_t round = 0; round < kColumnRowsPerPass && i + K * W <= end; ++round, i += K * W)
                for (std::size_t k = 0; k < K; ++k) term(V{}, i + k * W, k * W % ncols, a[k]);
            for (std::size_t k = 0; k < K; ++k)
                for (std::size_t s = 0; s < NS; ++s) add_widened(a[k][s], lanes[s] + k * W);
        }
        for (std::size_t s = 0; s < NS; ++s)
            for (std::size_t e = 0; e < K * W; ++e) acc[s * ncols + e % ncols] += lanes[s][e];
        for (; i < end; ++i) {  // the last few, one at a time
            Scalar<T> a[NS];
            for (auto& as : a) as = Scalar<T>(T(0));
            term(Scalar<T>{}, i, i % ncols, a);
            for (std::size_t s = 0; s < NS; ++s) acc[s * ncols + i % ncols] += static_cast<double>(a[s].v);
        }
    }

    template <class T, std::size_t NS, class Term>
    static void reduce_block(const Plan& p, std::size_t t, const Block& b, Term&& term, double* sums,
                             std::vector<double>& scratch) {
        const std::size_t ncols = b.col_end - b.col_begin, row_len = p.row_len;
        // (not assign(n, 0.0): vector's fill of a run-time value, a store per double, was ~7% of
        // the (32, 2048, 7, 7) forward's samples; a fill with the constant 0 is a memset)
        scratch.resize(NS * ncols);
        std::fill_n(scratch.data(), NS * ncols, 0.0);
        double* const acc = scratch.data();
        const std::size_t period = std::lcm(ncols, Vec<T>::size) / Vec<T>::size;  // vectors until the columns repeat
        const bool short_rows = ncols == row_len && wraps_rows<T>(p, false) && ncols % Vec<T>::size != 0;
        if (short_rows && period == 3) {
            short_row_sums<T, NS, 3>(p, b, term, acc);
        } else if (short_rows && 4 % period == 0) {
            short_row_sums<T, NS, 4>(p, b, term, acc);
        } else {
            for (std::size_t r = b.row_begin; r < b.row_end; r += kColumnRowsPerPass) {
                const std::size_t rows = std::min(kColumnRowsPerPass, b.row_end - r);
                const std::size_t row = r * row_len + p.tile_offset(t) + b.col_begin;
                // columns [j, j + Q * v.size)
                auto pass = [&](auto v, auto q_vectors, std::size_t j) {
                    using V = decltype(v);
                    constexpr std::size_t Q = decltype(q_vectors)::value;
                    V a[Q][NS];
                    for (auto& aq : a)
                        for (auto& as : aq) as = V(T(0));
                    for (std::size_t k = 0; k < rows; ++k)
                        for (std::size_t q = 0; q < Q; ++q)
                            term(v, row + k * row_len + j + q * V::size, b.col_begin + j + q * V::size, a[q]);
                    for (std::size_t q = 0; q < Q; ++q)
                        for (std::size_t s = 0; s < NS; ++s) add_widened(a[q][s], acc + s * ncols + j + q * V::size);
                };
                constexpr std::size_t W = Vec<T>::size;
                std::size_t j = 0;
                for (; j + kColumnVecsPerPass * W <= ncols; j += kColumnVecsPerPass * W)
                    pass(Vec<T>{}, std::integral_constant<std::size_t, kColumnVecsPerPass>{}, j);
                for (; j + W <= ncols; j += W) pass(Vec<T>{}, std::integral_constant<std::size_t, 1>{}, j);
                for (; j < ncols; ++j) pass(Scalar<T>{}, std::integral_constant<std::size_t, 1>{}, j);
            }
        }
        if (p.inner == 1) {  // a column is a channel
            for (std::size_t c = 0; c < ncols; ++c)
                for (std::size_t s = 0; s < NS; ++s) sums[c * NS + s] += acc[s * ncols + c];
            return;
        }
        // four partial sums per channel: a chain of inner dependent adds per channel and term
        // was ~15% of the statistics of (32, 2048, 7, 7)
        for (std::size_t c = 0; c < ncols / p.inner; ++c)
            for (std::size_t s = 0; s < NS; ++s) {
                const double* a = acc + s * ncols + c * p.inner;
                double part[4] = {0.0, 0.0, 0.0, 0.0};
                std::size_t i = 0;
                for (; i + 4 <= p.inner; i += 4)
                    for (std::size_t k = 0; k < 4; ++k) part[k] += a[i + k];
                double channel_sum = (part[0] + part[1]) + (part[2] + part[3]);
                for (; i < p.inner; ++i) channel_sum += a[i];
                sums[c * NS + s] += channel_sum;
            }
    }
};

// Per-task buffers (the planar layout uses only sums and means; columns: the apply pass's
// per-column values in `columns`).
template <class T>
struct Scratch {
    std::vector<double> acc, sums;
    std::vector<T> means, expanded;
    std::vector<T> columns[4];
};

// Runs the three stages over every tile:
//   reduce(t0, t1, b0, b1, partial, scratch): merge blocks [b0, b1) of each tile t of [t0, t1) into
//       partial[(t - t0) * tile_channels + channel in tile] (t1 > t0 + 1 only for tiles of one block)
//   finish(c0, nch, partial): per-channel results of channels [c0, c0 + nch) from their merged partials
//   apply(t, b0, b1, scratch): the elementwise pass over blocks [b0, b1)
// Each tile whole in one task when there are many tiles (it stays in cache from reduce to apply);
// otherwise groups of blocks in parallel, their partials merged in group order.
template <class Partial, class T, class Reduce, class Finish, class Apply>
void run_tiles(const Plan& p, Reduce&& reduce, Finish&& finish, Apply&& apply) {
    // per thread, kept from task to task and call to call: small tiles cost a few microseconds
    // or less, which allocating them for each would double
    thread_local Scratch<T> scratch;
    if (p.groups == 1) {
        // A task is a run of neighbouring tiles, not one tile: neighbouring channels' rows meet
        // inside cache lines of the output, and two threads writing them at once pass those
        // lines back and forth (measured on 2 threads, a tile per task: (32, 256, 14, 14)
        // forward no faster than on 1, (8, 512, 7, 7) slower).
        const std::size_t runs = p.tile_runs();
        // Tiles of one block go through the stages a batch of them at a time
        // (kBatchBytes of the arrays, so that the batch is still in cache for its elementwise
        // pass): the per-channel chains of dependent operations (the sums' reductions, the
        // divisions and square roots of finish) of neighbouring tiles then overlap instead of
        // following each other, and the forward's finish works on a vector of channels at a time.
        const std::size_t batch = p.tiles_per_batch;
        run_tasks(runs, p.parallel, [&](std::size_t r) {
            thread_local std::vector<Partial> partial;
            const std::size_t run_end = (r + 1) * p.ntiles / runs;
            if (batch == 1) {
                // (the loop below with batches of one tile compiled slower than this one:
                // measured, 1 thread, best of 5 in 4 alternating runs: (32, 256, 14, 14) forward
                // 670-700 -> 840-890 us, (8, 512, 7, 7) backward 90-92 -> 99-103 us)
                for (std::size_t t = r * p.ntiles / runs; t < run_end; ++t) {
                    partial.assign(p.tile_channels, Partial{});
                    reduce(t, t + 1, 0, p.blocks_per_tile, partial.data(), scratch);
                    finish(p.channel_begin(t), p.tile_nchannels(t), partial.data());
                    apply(t, 0, p.blocks_per_tile, scratch);
                }
                return;
            }
            for (std::size_t t0 = r * p.ntiles / runs; t0 < run_end; t0 += batch) {
                const std::size_t t1 = std::min(run_end, t0 + batch);
                partial.assign((t1 - t0) * p.tile_channels, Partial{});
                reduce(t0, t1, 0, p.blocks_per_tile, partial.data(), scratch);
                const std::size_t c0 = p.channel_begin(t0);
                finish(c0, p.channel_begin(t1 - 1) + p.tile_nchannels(t1 - 1) - c0, partial.data());
                for (std::size_t t = t0; t < t1; ++t) apply(t, 0, p.blocks_per_tile, scratch);
            }
        });
        return;
    }
    std::vector<Partial> partial(p.ntiles * p.groups * p.tile_channels);
    auto group_partial = [&](std::size_t t, std::size_t g) { return &partial[(t * p.groups + g) * p.tile_channels]; };
    run_tasks(p.ntiles * p.groups, p.parallel, [&](std::size_t task) {
        const std::size_t t = task / p.groups, g = task % p.groups;
        reduce(t, t + 1, p.group_begin(g), p.group_end(g), group_partial(t, g), scratch);
    });
    for (std::size_t t = 0; t < p.ntiles; ++t) {
        Partial* first = group_partial(t, 0);
        for (std::size_t g = 1; g < p.groups; ++g)
            for (std::size_t c = 0; c < p.tile_nchannels(t); ++c) first[c] = merge(first[c], group_partial(t, g)[c]);
        finish(p.channel_begin(t), p.tile_nchannels(t), first);
    }
    // The elementwise pass takes the groups last to first (and, after a statistics pass, each
    // group's blocks too, see apply_block): the reduction read them first to last, so
    // the last ones are still in L2/L3 (measured, 1 thread: (32, 56, 56, 64) channels-last
    // forward 6.6 -> 5.8 ms, (32, 14, 14, 256) backward 4.4 -> 3.8 ms). Its results do not
    // depend on the order.
    const std::size_t ntasks = p.ntiles * p.groups;
    run_tasks(ntasks, p.parallel, [&](std::size_t i) {
        const std::size_t task = ntasks - 1 - i;
        const std::size_t t = task / p.groups, g = task % p.groups;
        apply(t, p.group_begin(g), p.group_end(g), scratch);
    });
}

// Count, mean and sum of squared deviations from the mean of a set of values. The mean is kept
// as shift + mean_d, the shift of the set's first block (a value of the data's type near the
// mean) and the mean of the deviations from it, added only when the mean is read: merging blocks
// by their rounded means lost the low bits of the blocks' mean differences (float64 data of mean
// 1e9, std 1, (128, 3, 14, 14): invstd 1.8e-10 off, relative; now 2e-16).
struct Moments {
    double n = 0.0, shift = 0.0, mean_d = 0.0, m2 = 0.0;
    double mean() const { return shift + mean_d; }
};
// Chan, Golub & LeVeque's pairwise update: the moments of the union of two sets.
//   delta = mean_b - mean_a = (shift_b - shift_a) + (mean_d_b - mean_d_a)
//   mean = mean_a + delta * n_b / n         (shift_a + (mean_d_a + delta * n_b / n))
//   m2 = m2_a + m2_b + delta^2 * n_a * n_b / n
// (shift_b - shift_a is exact (Sterbenz) where the shifts are within a factor 2 of each other,
// the case where it matters, |mean| >> std; otherwise its rounding is small beside the spread.)
// ratio = n_b / n and cross = n_a * n_b / n are passed in: the channels of a tile share their
// counts, so a block merge computes them once for all channels. With n_a == 0 the result is b,
// returned as it is: the formula would fold b's shift and mean_d into one rounded mean (and
// delta^2 overflows for |mean_b| above ~1.3e154, float64, where inf * 0 made a constant
// channel's variance NaN).
// (A mean of +-inf, from an inf in the set, stays +-inf, as sum(x) / n does: the formula's
// inf - inf would make it NaN. Then m2 is NaN, and so the variance, as torch has them.)
inline Moments merge(const Moments& a, const Moments& b, double ratio, double cross) {
    if (a.n == 0.0) return b;
    const double delta = (b.shift - a.shift) + (b.mean_d - a.mean_d);  // not finite: a mean is not
    const double m2 = a.m2 + b.m2 + delta * delta * cross;
    if (!std::isfinite(delta)) return {a.n + b.n, a.mean() + b.mean(), 0.0, m2};
    return {a.n + b.n, a.shift, a.mean_d + delta * ratio, m2};
}
inline Moments merge(const Moments& a, const Moments& b) {
    const double ratio = b.n / (a.n + b.n);
    return merge(a, b, ratio, a.n * ratio);
}

// The backward's per-channel sums: sum(dy) and sum(dy * (x - mean)).
struct GradSums {
    double dy = 0.0, dy_xmu = 0.0;
};
inline GradSums merge(const GradSums& a, const GradSums& b) { return {a.dy + b.dy, a.dy_xmu + b.dy_xmu}; }


// ---- entry points -------------------------------------------------------------------------------

template <class F>
void with_layout(const Plan& p, F&& f) {
    if (p.planar)
        f(Planar{});
    else
        f(Columns{});
}

}  // namespace
}  // namespace FUSEDOPT_ISA_NS
}  // namespace fusedopt
