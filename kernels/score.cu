// The rolling-origin protocol on the GPU (src/eval/cuda.rs): forecasts made and
// scored where the layer's shares already are.
//
// `p` is one layer's shares, float64, step-major: p[t * E + e]. `origins` are step
// indices, ascending; `horizons` ascending and distinct. Each origin's error sums
// are running sums over its steps ahead, read off at every horizon it reaches:
// out[(i * nh + hi) * 2 + {0, 1}] = (Σ |p̂ − p|, Σ (p̂ − p)²) over the first
// horizons[hi] steps of origin i, every expert. A horizon an origin does not reach
// is left as it was (the host reads only those with o + h <= T).
//
// Every sum is taken in a fixed order (each thread's experts and steps in order,
// then the block's threads by a fixed tree), so a run gives the same bits each time.
// Blocks are a multiple of 32 threads, at most 1024.

#define FULL 0xffffffffu

// The block's sums of (a, b): warp shuffles, then the warps' sums in warp order.
// Every thread of the block calls it; every thread gets the result. `red` holds
// at least 2 * 33 doubles.
__device__ __forceinline__ void block_sum2(double& a, double& b, double* red) {
    for (int o = 16; o > 0; o >>= 1) {
        a += __shfl_down_sync(FULL, a, o);
        b += __shfl_down_sync(FULL, b, o);
    }
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    __syncthreads();  // the previous call's readers are done with `red`
    if (lane == 0) {
        red[warp] = a;
        red[33 + warp] = b;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        double sa = 0.0, sb = 0.0;
        for (int w = 0; w < warps; ++w) {
            sa += red[w];
            sb += red[33 + w];
        }
        red[32] = sa;
        red[65] = sb;
    }
    __syncthreads();
    a = red[32];
    b = red[65];
}

// A prediction that is one row for every step ahead (`last`, `mean`, `ema`, the
// medians). Block (i, j) scores origin i with row rows[(j * n_origins + i) * E]:
// when `per_horizon` (the oracle's medians, one row per horizon) only horizon j,
// else (j = 0) every horizon.
extern "C" __global__ void score_flat(const double* __restrict__ p, int T, int E, const int* __restrict__ origins,
                                      int n_origins, const double* __restrict__ rows, const int* __restrict__ horizons,
                                      int nh, int per_horizon, double* __restrict__ out) {
    __shared__ double red[66];
    const int i = blockIdx.x, j = blockIdx.y;
    const int o = origins[i];
    const double* row = rows + ((size_t)j * n_origins + i) * E;
    const int h_first = per_horizon ? j : 0, h_end = per_horizon ? j + 1 : nh;
    if (o + horizons[h_first] > T) return;  // reaches none of its horizons
    double a = 0.0, s = 0.0;
    int k = 0;
    for (int hi = h_first; hi < h_end; ++hi) {
        const int h = horizons[hi];
        if (o + h > T) break;
        for (; k < h; ++k) {
            const double* y = p + (size_t)(o + k) * E;
            for (int e = threadIdx.x; e < E; e += blockDim.x) {
                const double d = row[e] - y[e];
                a += fabs(d);
                s += d * d;
            }
        }
        double ra = a, rs = s;
        block_sum2(ra, rs, red);
        if (threadIdx.x == 0) {
            out[((size_t)i * nh + hi) * 2] = ra;
            out[((size_t)i * nh + hi) * 2 + 1] = rs;
        }
    }
}

// Experts a thread of sw_avg_score holds at most (E <= SW_PER * blockDim).
#define SW_PER 4

// `sw-avg:w=W`, the paper's sliding-window average fed its own predictions, made
// and scored: block i runs origin i. Step k predicts sum × (1/W) per expert (sum: the
// last W values, actual then predicted), feeds the prediction back, clips it at 0
// and renormalises it over the experts when `renorm`, and scores it. `ring` is
// scratch of n_origins × W × E doubles. The recursion is the CPU's, operation for
// operation, so the predictions have its bits; the renormalising sum runs in the
// block's order.
extern "C" __global__ void sw_avg_score(const double* __restrict__ p, int T, int E, const int* __restrict__ origins,
                                        int W, const int* __restrict__ horizons, int nh, int renorm,
                                        double* __restrict__ ring, double* __restrict__ out) {
    __shared__ double red[66];
    const int i = blockIdx.x;
    const int o = origins[i];
    double* r = ring + (size_t)i * W * E;
    double sum[SW_PER];
    for (int m = 0; m < SW_PER; ++m) {
        const int e = threadIdx.x + m * blockDim.x;
        sum[m] = 0.0;
        if (e < E) {
            for (int j = 0; j < W; ++j) {
                const double v = p[(size_t)(o - W + j) * E + e];
                r[(size_t)j * E + e] = v;
                sum[m] += v;
            }
        }
    }
    const int steps = min(horizons[nh - 1], T - o);
    const double inv_w = 1.0 / (double)W;
    double a = 0.0, s = 0.0;
    int hi = 0, head = 0;
    // The value leaving the window at the coming step, loaded a step ahead (it was
    // written W steps before, or is history), so that its latency overlaps the
    // step's block sum; with W = 1 it is the prediction just made.
    double leaving[SW_PER];
    for (int m = 0; m < SW_PER; ++m) {
        const int e = threadIdx.x + m * blockDim.x;
        leaving[m] = e < E ? r[e] : 0.0;
    }
    for (int k = 0; k < steps; ++k) {
        double pred[SW_PER], actual[SW_PER];
        double c = 0.0, unused = 0.0;
        const double* y = p + (size_t)(o + k) * E;
        for (int m = 0; m < SW_PER; ++m) {
            const int e = threadIdx.x + m * blockDim.x;
            pred[m] = 0.0;
            actual[m] = 0.0;
            if (e < E) {
                actual[m] = y[e];
                const double v = sum[m] * inv_w;
                sum[m] += v - leaving[m];
                r[(size_t)head * E + e] = v;
                pred[m] = v;
                c += v >= 0.0 ? v : 0.0;
            }
        }
        head = head + 1 == W ? 0 : head + 1;
        for (int m = 0; m < SW_PER; ++m) {
            const int e = threadIdx.x + m * blockDim.x;
            if (e < E) leaving[m] = W == 1 ? pred[m] : r[(size_t)head * E + e];
        }
        double scale = 1.0, uniform = -1.0;
        if (renorm) {
            block_sum2(c, unused, red);
            if (c > 0.0) scale = c; else uniform = 1.0 / (double)E;
        }
        for (int m = 0; m < SW_PER; ++m) {
            const int e = threadIdx.x + m * blockDim.x;
            if (e < E) {
                double v = pred[m];
                if (renorm) v = uniform >= 0.0 ? uniform : (v >= 0.0 ? v : 0.0) / scale;
                const double d = v - actual[m];
                a += fabs(d);
                s += d * d;
            }
        }
        if (k + 1 == horizons[hi]) {
            double ra = a, rs = s;
            block_sum2(ra, rs, red);
            if (threadIdx.x == 0) {
                out[((size_t)i * nh + hi) * 2] = ra;
                out[((size_t)i * nh + hi) * 2 + 1] = rs;
            }
            ++hi;
        }
    }
}

// `oracle-median`'s rows: for origin i and each horizon h it reaches, every expert's
// median of p[o .. o + h - 1] (the mean of the two middle values when h is even, as
// 0.5 * (lower + upper)), into med[(hi * n_origins + i) * E + e]. The origins are the
// protocol's grid, every `c` steps from `b`, so consecutive origins' spans share all
// but `c` steps: oracle_chunk_sort sorts each expert's `c`-step chunks of the grid
// once, and oracle_select finds each middle value by its rank among the sorted chunks
// inside the span and the steps after the last whole one, bit by bit of its key. The
// middle values are elements of the span, so the medians are the CPU's values.

// Order-preserving u64 keys of doubles (and back).
__device__ __forceinline__ unsigned long long dkey(double v) {
    const unsigned long long u = (unsigned long long)__double_as_longlong(v);
    return (u >> 63) ? ~u : (u | 0x8000000000000000ull);
}
__device__ __forceinline__ double dval(unsigned long long k) {
    return __longlong_as_double((long long)((k >> 63) ? (k & 0x7fffffffffffffffull) : ~k));
}

// One warp per (chunk q = blockIdx.x, expert e): steps b + q·c .. min(b + (q + 1)·c,
// T) − 1 sorted ascending into sorted[(q · E + e) · c ...]. Dynamic shared memory:
// cpow doubles per warp (cpow: c rounded up to a power of two, at least 32).
extern "C" __global__ void oracle_chunk_sort(const double* __restrict__ p, int T, int E, int b, int c, int cpow, int chunks,
                                             double* __restrict__ sorted) {
    extern __shared__ double smem[];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    const int q = blockIdx.x;
    const int e = blockIdx.y * warps + warp;
    if (e >= E || q >= chunks) return;
    double* v = smem + (size_t)warp * cpow;
    const int t0 = b + q * c;
    const int len = min(c, T - t0);
    for (int k = lane; k < cpow; k += 32)
        v[k] = k < len ? p[(size_t)(t0 + k) * E + e] : __longlong_as_double(0x7ff0000000000000LL);
    __syncwarp();
    for (int size = 2; size <= cpow; size <<= 1) {
        for (int stride = size >> 1; stride > 0; stride >>= 1) {
            for (int t = lane; t < (cpow >> 1); t += 32) {
                const int lo = ((t & ~(stride - 1)) << 1) | (t & (stride - 1));
                const int hi = lo + stride;
                const double x = v[lo], y = v[hi];
                if ((x > y) == ((lo & size) == 0)) {
                    v[lo] = y;
                    v[hi] = x;
                }
            }
            __syncwarp();
        }
    }
    double* out = sorted + ((size_t)q * E + e) * c;
    for (int k = lane; k < len; k += 32) out[k] = v[k];
}

// The first index in [a, z) of the sorted chunk s whose key is above y (z if none).
__device__ __forceinline__ int above(const double* __restrict__ s, int a, int z, unsigned long long y) {
    while (a < z) {
        const int mid = (a + z) >> 1;
        if (dkey(s[mid]) <= y) a = mid + 1; else z = mid;
    }
    return a;
}

// How many of the span's values have keys <= x: each lane binary-searches its whole
// chunks (m = lane, lane + 32, ...; chunk i + m of expert e) and counts its share of
// the r steps after them (from p); summed over the warp.
__device__ __forceinline__ int count_le(const double* __restrict__ p, const double* __restrict__ sorted, int E, int e, int c,
                                        int i, int full, int t_tail, int r, unsigned long long x, int lane) {
    int n = 0;
    for (int m = lane; m < full; m += 32) {
        n += above(sorted + ((size_t)(i + m) * E + e) * c, 0, c, x);
    }
    for (int t = lane; t < r; t += 32) n += dkey(p[(size_t)(t_tail + t) * E + e]) <= x;
    for (int o = 16; o > 0; o >>= 1) n += __shfl_xor_sync(FULL, n, o);
    return n;
}

// Chunks a lane's search narrows (lane, lane + 32, ...; more are searched whole).
#define NR 4

// One warp per (origin i = blockIdx.x, expert e); origin i is b + i·c, so the whole
// chunks of its span are chunks i, i + 1, ... For each horizon h it reaches, the value
// of rank (h − 1) / 2 (the largest key x with fewer than rank + 1 values below x,
// found bit by bit), and for even h the next value up, into
// med[(hi * n_origins + i) * E + e].
extern "C" __global__ void oracle_select(const double* __restrict__ p, const double* __restrict__ sorted, int T, int E, int b,
                                         int c, int n_origins, const int* __restrict__ horizons, int nh,
                                         double* __restrict__ med) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    const int i = blockIdx.x;
    const int e = blockIdx.y * warps + warp;
    if (e >= E || i >= n_origins) return;
    const int o = b + i * c;
    const int n = min(horizons[nh - 1], T - o);
    for (int hi = 0; hi < nh; ++hi) {
        const int h = horizons[hi];
        if (h > n) break;
        const int full = h / c, r = h % c, t_tail = o + full * c;
        const int k1 = (h - 1) / 2, k2 = h / 2;
        // x's bits from the top: x becomes cand when at most k1 values lie below
        // cand. The values of a lane's first NR chunks whose keys can still be
        // counted either way lie in [from, to) of the chunk (those before `from` are
        // below x, those from `to` on above every cand to come), so each search narrows.
        int from[NR], to[NR], pos[NR];
#pragma unroll
        for (int q = 0; q < NR; ++q) {
            from[q] = 0;
            to[q] = c;
            pos[q] = 0;
        }
        unsigned long long x = 0;
        for (int bit = 63; bit >= 0; --bit) {
            const unsigned long long cand = x | (1ull << bit), y = cand - 1;
            int below = 0;
#pragma unroll
            for (int q = 0; q < NR; ++q) {
                const int m = lane + 32 * q;
                if (m < full) {
                    pos[q] = above(sorted + ((size_t)(i + m) * E + e) * c, from[q], to[q], y);
                    below += pos[q];
                }
            }
            for (int m = lane + 32 * NR; m < full; m += 32) below += above(sorted + ((size_t)(i + m) * E + e) * c, 0, c, y);
            for (int t = lane; t < r; t += 32) below += dkey(p[(size_t)(t_tail + t) * E + e]) <= y;
            for (int o = 16; o > 0; o >>= 1) below += __shfl_xor_sync(FULL, below, o);
            if (below <= k1) {
                x = cand;
#pragma unroll
                for (int q = 0; q < NR; ++q) from[q] = pos[q];
            } else {
#pragma unroll
                for (int q = 0; q < NR; ++q) to[q] = pos[q];
            }
        }
        double upper = dval(x);
        const double lower = upper;
        if (k2 != k1 && count_le(p, sorted, E, e, c, i, full, t_tail, r, x, lane) <= k2) {
            // The next value up: the smallest key above x.
            unsigned long long y = ~0ull;
            for (int m = lane; m < full; m += 32) {
                const double* s = sorted + ((size_t)(i + m) * E + e) * c;
                const int a = above(s, 0, c, x);
                if (a < c) y = min(y, dkey(s[a]));
            }
            for (int t = lane; t < r; t += 32) {
                const unsigned long long k = dkey(p[(size_t)(t_tail + t) * E + e]);
                if (k > x) y = min(y, k);
            }
            for (int s = 16; s > 0; s >>= 1) y = min(y, (unsigned long long)__shfl_xor_sync(FULL, y, s));
            upper = dval(y);
        }
        if (lane == 0) med[((size_t)hi * n_origins + i) * E + e] = (h & 1) ? upper : 0.5 * (lower + upper);
    }
}

// The one row a flat forecast is, made where the layer's shares are (then scored by
// score_flat), with the CPU's operations in the CPU's order, so the rows have its
// bits before they are renormalised.
//
// `last` (kind 0) and `mean:w=W` (kind 1): block i makes origin i's row:
// p[o − 1], or the sum of p[o − W .. o − 1] in step order divided by W.
extern "C" __global__ void flat_rows(const double* __restrict__ p, int T, int E, const int* __restrict__ origins, int kind,
                                     int W, double* __restrict__ rows) {
    const int i = blockIdx.x;
    const int o = origins[i];
    for (int e = threadIdx.x; e < E; e += blockDim.x) {
        double v;
        if (kind == 0) {
            v = p[(size_t)(o - 1) * E + e];
        } else {
            double s = 0.0;
            for (int t = o - W; t < o; ++t) s += p[(size_t)t * E + e];
            v = s / (double)W;
        }
        rows[(size_t)i * E + e] = v;
    }
}

// `ema:alpha=A` as a chunked scan: the average S(t) through step t (S(0) = p[0], then
// S(t) = A·p[t] + (1 − A)·S(t − 1)) is, within a chunk of `chunk` steps starting at
// t0, L(t) + (1 − A)^(t − t0 + 1)·S(t0 − 1), where L is the chunk's own average
// started from 0. ema_chunk makes every chunk's L at once; ema_carry then walks the
// chunks in order, one thread an expert. Not the CPU's sequential bits: the sums
// differ in their roundings (about 1e-16 relative). The chunk length `chunk` is given
// by the host (src/eval/cuda.rs), the same to both kernels.

// The first origin index i with origins[i] > t (origins ascend).
__device__ __forceinline__ int first_origin_after(const int* origins, int no, int t) {
    int lo = 0, hi = no;
    while (lo < hi) {
        const int mid = (lo + hi) / 2;
        if (origins[mid] > t) hi = mid; else lo = mid + 1;
    }
    return lo;
}

// Thread (expert e, chunks blockIdx.y, + gridDim.y, ...): each chunk's own average L
// through each step before an origin o in the chunk (t0 < o <= t1) into
// rows[i * E + e], and through the chunk's last step into ends[c * E + e]. Steps run
// to the last origin, `last`.
extern "C" __global__ void ema_chunk(const double* __restrict__ p, int E, const int* __restrict__ origins, int no,
                                     int last, int chunk, double alpha, double* __restrict__ rows, double* __restrict__ ends) {
    const int e = blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= E) return;
    const double beta = 1.0 - alpha;
    const int chunks = (last + chunk - 1) / chunk;
    for (int c = blockIdx.y; c < chunks; c += gridDim.y) {
        const int t0 = c * chunk;
        const int t1 = min(t0 + chunk, last);
        double a = 0.0;
        int t = t0;
        if (c == 0) {
            a = p[e];
            t = 1;
        }
        for (int i = first_origin_after(origins, no, t0); i < no && origins[i] <= t1; ++i) {
            const int o = origins[i];
            for (; t < o; ++t) a = __dadd_rn(__dmul_rn(alpha, p[(size_t)t * E + e]), __dmul_rn(beta, a));
            rows[(size_t)i * E + e] = a;
        }
        for (; t < t1; ++t) a = __dadd_rn(__dmul_rn(alpha, p[(size_t)t * E + e]), __dmul_rn(beta, a));
        ends[(size_t)c * E + e] = a;
    }
}

// Thread e: carries S through the chunks in order, adding (1 − A)^k·S(t0 − 1) to the
// rows of chunk c's origins (k = o − t0 steps of the chunk before origin o).
extern "C" __global__ void ema_carry(int E, const int* __restrict__ origins, int no, int last, int chunk, double alpha,
                                     const double* __restrict__ ends, double* __restrict__ rows) {
    const int e = blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= E) return;
    const double beta = 1.0 - alpha;
    const int chunks = (last + chunk - 1) / chunk;
    double s = ends[e];
    int i = first_origin_after(origins, no, min(chunk, last));
    for (int c = 1; c < chunks; ++c) {
        const int t0 = c * chunk, t1 = min(t0 + chunk, last);
        for (; i < no && origins[i] <= t1; ++i) rows[(size_t)i * E + e] += pow(beta, (double)(origins[i] - t0)) * s;
        s = ends[(size_t)c * E + e] + pow(beta, (double)(t1 - t0)) * s;
    }
}

// forecast::renormalize on the device: block i clips row i at 0 and scales it by
// the reciprocal of its clipped sum (uniform 1/E when that sum is 0); the sum runs
// in the block's order.
extern "C" __global__ void renorm_rows(double* __restrict__ rows, int E) {
    __shared__ double red[66];
    double* r = rows + (size_t)blockIdx.x * E;
    double c = 0.0, unused = 0.0;
    for (int e = threadIdx.x; e < E; e += blockDim.x) {
        const double v = r[e];
        c += v >= 0.0 ? v : 0.0;
    }
    block_sum2(c, unused, red);
    const double inv = 1.0 / c, uniform = 1.0 / (double)E;
    for (int e = threadIdx.x; e < E; e += blockDim.x) {
        const double v = r[e];
        r[e] = c > 0.0 ? (v >= 0.0 ? v : 0.0) * inv : uniform;
    }
}
