// Window statistics of many series at once: trailing-window mean, population
// variance and range (max - min) for window W. CPU twin: src/stats/cpu.rs
// (`window_series`); tests/gpu.rs compares the two.
//
// Layout: input `x` is series-major float32, x[s * T + t]; outputs are series-major
// too, out[s * n + i] for the window ending at step t = W - 1 + i, n = T - W + 1.
//
// One warp handles one series over one chunk of outputs, so that a small trace still
// gives thousands of warps (the time axis is split into chunks that overlap by
// W - 1 input steps). Lanes walk the time axis together, so a warp's loads cover
// consecutive steps of one series: whole 128-byte lines.
//
// O(1) work per output whatever W (van Herk / Gil-Werman): the chunk's inputs are cut
// into blocks of W steps. The window ending at offset i of block j+1 is the suffix of
// block j from offset i+1 plus the prefix of block j+1 up to offset i. Prefixes are
// scans (each lane K consecutive steps in registers, then one warp scan of the lanes'
// totals); each finished block's suffix max, min, sum and sum of squares are kept in
// shared memory (4 padded arrays of W floats per warp) for the next block. Windows
// of at most 32 steps are gathered from registers by warp shuffles instead. Sums are of
// x - shift (shift = the chunk's first input), and never span more than 2 W steps,
// so float32 sums stay within 1e-6 of a float64 computation.

#define FULL 0xffffffffu
#define SLAB 32
// NVRTC has no math.h: +infinity by its bits.
#define F_INF __int_as_float(0x7f800000)

struct Agg {
    float mx, mn, sum, sq;
};

__device__ __forceinline__ Agg agg_identity() {
    Agg a;
    a.mx = -F_INF;
    a.mn = F_INF;
    a.sum = 0.0f;
    a.sq = 0.0f;
    return a;
}

__device__ __forceinline__ Agg agg_of(float x, float shift) {
    Agg a;
    float d = x - shift;
    a.mx = x;
    a.mn = x;
    a.sum = d;
    a.sq = d * d;
    return a;
}

__device__ __forceinline__ Agg agg_join(Agg a, Agg b) {
    Agg r;
    r.mx = fmaxf(a.mx, b.mx);
    r.mn = fminf(a.mn, b.mn);
    r.sum = a.sum + b.sum;
    r.sq = a.sq + b.sq;
    return r;
}

__device__ __forceinline__ Agg agg_shfl_up(Agg a, int d) {
    Agg r;
    r.mx = __shfl_up_sync(FULL, a.mx, d);
    r.mn = __shfl_up_sync(FULL, a.mn, d);
    r.sum = __shfl_up_sync(FULL, a.sum, d);
    r.sq = __shfl_up_sync(FULL, a.sq, d);
    return r;
}

__device__ __forceinline__ Agg agg_shfl_down(Agg a, int d) {
    Agg r;
    r.mx = __shfl_down_sync(FULL, a.mx, d);
    r.mn = __shfl_down_sync(FULL, a.mn, d);
    r.sum = __shfl_down_sync(FULL, a.sum, d);
    r.sq = __shfl_down_sync(FULL, a.sq, d);
    return r;
}

__device__ __forceinline__ Agg agg_shfl(Agg a, int src) {
    Agg r;
    r.mx = __shfl_sync(FULL, a.mx, src);
    r.mn = __shfl_sync(FULL, a.mn, src);
    r.sum = __shfl_sync(FULL, a.sum, src);
    r.sq = __shfl_sync(FULL, a.sq, src);
    return r;
}

// Inclusive prefix scan over the 32 lanes.
__device__ __forceinline__ Agg scan_up(Agg a, int lane) {
#pragma unroll
    for (int d = 1; d < 32; d <<= 1) {
        Agg o = agg_shfl_up(a, d);
        if (lane >= d) a = agg_join(o, a);
    }
    return a;
}

// Inclusive suffix scan over the 32 lanes.
__device__ __forceinline__ Agg scan_down(Agg a, int lane) {
#pragma unroll
    for (int d = 1; d < 32; d <<= 1) {
        Agg o = agg_shfl_down(a, d);
        if (lane + d < 32) a = agg_join(a, o);
    }
    return a;
}

// Both kernels: grid of enough warps for S * chunks (series, chunk) pairs; mean_out
// may be null, var_out and range_out may not.

// Each lane owns K consecutive positions of a span of 32 K: local scans in registers,
// one warp scan of the lanes' totals per span.
#define K 4
#define SPAN (SLAB * K)

// Shared-memory index with one pad word per 32, so that the 32 lanes touching
// positions K * lane + c hit 32 different banks.
__device__ __forceinline__ int pad(int i) { return i + (i >> 5); }

// Suffix aggregates of the W raw values held in suf_mx (the raw buffer), written to
// the four suffix arrays; suf_mx is overwritten in place.
__device__ void block_suffix(float* suf_mx, float* suf_mn, float* suf_sum, float* suf_sq, int W, float shift,
                             int lane) {
    Agg carry = agg_identity();
    for (int e = W; e > 0; e -= SPAN) {
        const int s0 = e - SPAN + lane * K;
        Agg sk[K];
        Agg run = agg_identity();
#pragma unroll
        for (int k = K - 1; k >= 0; k--) {
            const int i = s0 + k;
            run = agg_join(i >= 0 ? agg_of(suf_mx[pad(i)], shift) : agg_identity(), run);
            sk[k] = run;
        }
        const Agg incl = scan_down(run, lane);
        Agg after = agg_shfl_down(incl, 1);
        if (lane == 31) after = agg_identity();
        const Agg base = agg_join(after, carry);
        carry = agg_join(agg_shfl(incl, 0), carry);
        __syncwarp();
#pragma unroll
        for (int k = 0; k < K; k++) {
            const int i = s0 + k;
            if (i >= 0) {
                const Agg r = agg_join(sk[k], base);
                const int p = pad(i);
                suf_mx[p] = r.mx;
                suf_mn[p] = r.mn;
                suf_sum[p] = r.sum;
                suf_sq[p] = r.sq;
            }
        }
        __syncwarp();
    }
}

// Mean, population variance and range of a window from its aggregate, in float32:
// the sums are of x - shift, so for shares (0 <= x <= 1) the cancellation in
// q / W - m^2 costs at most a few ulps of q / W <= 1, far inside 1e-6 (double
// precision here made the long kernel 7% slower on the H200 for no visible gain:
// largest error 2.2e-9 either way in benches/cuda/window_stats_harness.cu).
__device__ __forceinline__ float3 finish(Agg w, float inv_w, float shift) {
    const float m = w.sum * inv_w;
    const float var = fmaf(-m, m, w.sq * inv_w);
    return make_float3(shift + m, fmaxf(var, 0.0f), w.mx - w.mn);
}

__device__ __forceinline__ void emit(float* mean_out, float* var_out, float* range_out, long idx, Agg w, float inv_w,
                                     float shift) {
    const float3 r = finish(w, inv_w, shift);
    if (mean_out) mean_out[idx] = r.x;
    var_out[idx] = r.y;
    range_out[idx] = r.z;
}

// The (series, chunk) of this warp and the steps it covers.
struct Task {
    int lane, warp, n, c0, c1, a;
    const float* xs;
    long obase;  // output index of step t is obase + t
    float shift;
    float inv_w;
};

__device__ __forceinline__ bool task_of(const float* x, int T, int S, int W, int chunk, Task& k) {
    k.lane = threadIdx.x & 31;
    k.warp = threadIdx.x >> 5;
    k.n = T - W + 1;
    if (k.n <= 0) return false;
    const int chunks = (k.n + chunk - 1) / chunk;
    const long gw = (long)blockIdx.x * (blockDim.x >> 5) + k.warp;
    if (gw >= (long)S * chunks) return false;
    const int s = (int)(gw / chunks);
    const int c = (int)(gw % chunks);
    k.c0 = c * chunk + (W - 1);   // first output step of this chunk
    k.c1 = min(k.c0 + chunk, T);  // one past its last output step
    k.a = k.c0 - W + 1;           // first input step: start of block 0
    k.xs = x + (long)s * T;
    k.obase = (long)s * k.n - (W - 1);
    k.shift = k.xs[k.a];
    k.inv_w = 1.0f / (float)W;
    return true;
}

// Windows of at most 32 steps. A warp moves through its chunk GROUP steps at a time:
// the group's inputs go to shared memory behind the 32 steps before it, and the
// next group is loaded into registers while this one is computed (GROUP / 32 loads
// in flight per lane). Each output then reads its W inputs from shared memory
// (consecutive lanes, consecutive words: no bank conflicts).
#define GROUP 128
// Floats of shared memory per warp of window_stats_short (the harness and
// src/stats/cuda.rs use the same figure).
#define SHORT_SMEM_FLOATS (SLAB + GROUP)

extern "C" __global__ void __launch_bounds__(256) window_stats_short(const float* __restrict__ x, int T, int S, int W,
                                                                     int chunk, float* __restrict__ mean_out,
                                                                     float* __restrict__ var_out,
                                                                     float* __restrict__ range_out) {
    extern __shared__ float smem[];
    Task k;
    if (!task_of(x, T, S, W, chunk, k)) return;
    const int lane = k.lane, c0 = k.c0, c1 = k.c1, a = k.a;
    const float* xs = k.xs;
    const float shift = k.shift;
    float* buf = smem + k.warp * SHORT_SMEM_FLOATS;
    buf[lane] = (c0 - SLAB + lane >= a) ? xs[c0 - SLAB + lane] : 0.0f;
    float nx[GROUP / SLAB];
#pragma unroll
    for (int j = 0; j < GROUP / SLAB; j++) {
        const int t = c0 + SLAB * j + lane;
        nx[j] = (t < c1) ? xs[t] : 0.0f;
    }
    for (int t0 = c0; t0 < c1; t0 += GROUP) {
#pragma unroll
        for (int j = 0; j < GROUP / SLAB; j++) buf[SLAB + SLAB * j + lane] = nx[j];
#pragma unroll
        for (int j = 0; j < GROUP / SLAB; j++) {
            const int t = t0 + GROUP + SLAB * j + lane;
            nx[j] = (t < c1) ? xs[t] : 0.0f;
        }
        __syncwarp();
#pragma unroll
        for (int j = 0; j < GROUP / SLAB; j++) {
            const int i = SLAB + SLAB * j + lane;
            Agg w = agg_identity();
            for (int d = 0; d < W; d++) w = agg_join(w, agg_of(buf[i - d], shift));
            const int t = t0 + SLAB * j + lane;
            if (t < c1) emit(mean_out, var_out, range_out, k.obase + t, w, k.inv_w, shift);
        }
        __syncwarp();
        buf[lane] = buf[GROUP + lane];
        __syncwarp();
    }
}

// Windows longer than 32 steps: van Herk blocks. Dynamic shared memory per warp:
// 4 padded arrays of W + W / 32 + 1 floats, and 4 staging arrays of 132 floats
// through which each span's inputs and outputs move coalesced.
#define LONG_SMEM_FLOATS(W) (4 * ((W) + (W) / 32 + 1) + 4 * (SPAN + SPAN / 32))
extern "C" __global__ void __launch_bounds__(256) window_stats_long(const float* __restrict__ x, int T, int S, int W,
                                                                    int chunk, float* __restrict__ mean_out,
                                                                    float* __restrict__ var_out,
                                                                    float* __restrict__ range_out) {
    extern __shared__ float smem[];
    Task k;
    if (!task_of(x, T, S, W, chunk, k)) return;
    const int lane = k.lane, warp = k.warp, c0 = k.c0, c1 = k.c1, a = k.a;
    const float* xs = k.xs;
    const float shift = k.shift;
    const float inv_w = k.inv_w;
    const long obase = k.obase;

    const int stride = W + (W >> 5) + 1;  // padded length of one suffix array
    float* suf_mx = smem + (long)warp * 4 * (stride + SPAN + SPAN / 32);
    float* suf_mn = suf_mx + stride;
    float* suf_sum = suf_mn + stride;
    float* suf_sq = suf_sum + stride;

    // Block 0: raw values (eight loads in flight per lane), then its suffixes; its
    // last step is the first output. The first span of block 1 is loaded meanwhile.
    for (int i0 = 0; i0 < W; i0 += 8 * SLAB) {
        float v[8];
#pragma unroll
        for (int j = 0; j < 8; j++) {
            const int i = i0 + SLAB * j + lane;
            v[j] = (i < W) ? xs[a + i] : 0.0f;
        }
#pragma unroll
        for (int j = 0; j < 8; j++) {
            const int i = i0 + SLAB * j + lane;
            if (i < W) suf_mx[pad(i)] = v[j];
        }
    }
    // nx holds the next span to be scanned, loaded coalesced: nx[j] is step
    // b + i0 + 32 j + lane of that span. Spans run through blocks and on into the
    // next block, so a load is always in flight, also when a block is a single span.
    float nx[K];
#pragma unroll
    for (int j = 0; j < K; j++) {
        const int t = a + W + SLAB * j + lane;
        nx[j] = (t < c1) ? xs[t] : 0.0f;
    }
    __syncwarp();
    block_suffix(suf_mx, suf_mn, suf_sum, suf_sq, W, shift, lane);
    if (lane == 0) {
        Agg w;
        w.mx = suf_mx[0];
        w.mn = suf_mn[0];
        w.sum = suf_sum[0];
        w.sq = suf_sq[0];
        emit(mean_out, var_out, range_out, obase + c0, w, inv_w, shift);
    }
    __syncwarp();

    // Staging for coalesced global access: a span's inputs, and its outputs.
    const int sp = SPAN + SPAN / 32;
    float* st_in = suf_sq + stride;
    float* st_mean = st_in + sp;
    float* st_var = st_mean + sp;
    float* st_rng = st_var + sp;

    // Blocks 1, 2, ...: prefix scans joined with the previous block's suffixes.
    for (int b = a + W; b < c1; b += W) {
        const int len = min(W, c1 - b);
        Agg carry = agg_identity();
        for (int i0 = 0; i0 < len; i0 += SPAN) {
#pragma unroll
            for (int j = 0; j < K; j++) st_in[pad(SLAB * j + lane)] = nx[j];
            // Prefetch the span after this one (in this block or the next) while
            // this one is scanned.
            const int next = (i0 + SPAN < len) ? b + i0 + SPAN : b + W;
#pragma unroll
            for (int j = 0; j < K; j++) {
                const int t = next + SLAB * j + lane;
                nx[j] = (t < c1) ? xs[t] : 0.0f;
            }
            __syncwarp();
            float v[K];
            Agg pk[K];
            Agg run = agg_identity();
#pragma unroll
            for (int k = 0; k < K; k++) {
                const int i = i0 + lane * K + k;
                v[k] = st_in[pad(lane * K + k)];
                run = agg_join(run, i < len ? agg_of(v[k], shift) : agg_identity());
                pk[k] = run;
            }
            const Agg incl = scan_up(run, lane);
            Agg before = agg_shfl_up(incl, 1);
            if (lane == 0) before = agg_identity();
            const Agg base = agg_join(carry, before);
            carry = agg_join(carry, agg_shfl(incl, 31));
#pragma unroll
            for (int k = 0; k < K; k++) {
                const int i = i0 + lane * K + k;
                if (i < len) {
                    Agg w = agg_join(base, pk[k]);
                    if (i + 1 < W) {
                        const int p = pad(i + 1);
                        Agg q;
                        q.mx = suf_mx[p];
                        q.mn = suf_mn[p];
                        q.sum = suf_sum[p];
                        q.sq = suf_sq[p];
                        w = agg_join(q, w);
                    }
                    const float3 r = finish(w, inv_w, shift);
                    const int p = pad(lane * K + k);
                    st_mean[p] = r.x;
                    st_var[p] = r.y;
                    st_rng[p] = r.z;
                }
            }
            __syncwarp();
#pragma unroll
            for (int k = 0; k < K; k++) {
                const int i = i0 + lane * K + k;
                if (i < len) suf_mx[pad(i)] = v[k];  // raw values of this block, for its suffixes
            }
#pragma unroll
            for (int j = 0; j < K; j++) {
                const int i = i0 + SLAB * j + lane;
                if (i < len) {
                    const long o = obase + b + i;
                    const int p = pad(SLAB * j + lane);
                    if (mean_out) mean_out[o] = st_mean[p];
                    var_out[o] = st_var[p];
                    range_out[o] = st_rng[p];
                }
            }
            __syncwarp();
        }
        if (b + W < c1) block_suffix(suf_mx, suf_mn, suf_sum, suf_sq, W, shift, lane);
    }
}

// Layer summaries from the per-expert variance and range: for each layer l and
// output i, the mean and max over its experts of the variance and of the range, and
// the mean of the standard deviation (the s(t) of the states rule).
// grid: (ceil(n / blockDim.x), layers). Series s = l * experts + e.
extern "C" __global__ void layer_summary(const float* __restrict__ var, const float* __restrict__ range, int n,
                                         int experts, float* __restrict__ var_mean, float* __restrict__ var_max,
                                         float* __restrict__ range_mean, float* __restrict__ range_max,
                                         float* __restrict__ std_mean) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    const int l = blockIdx.y;
    if (i >= n) return;
    double vs = 0.0, rs = 0.0, ss = 0.0;
    float vm = 0.0f, rm = 0.0f;
    for (int e = 0; e < experts; e++) {
        const long k = (long)(l * experts + e) * n + i;
        const float v = var[k], r = range[k];
        vs += v;
        rs += r;
        ss += sqrt((double)v);
        vm = fmaxf(vm, v);
        rm = fmaxf(rm, r);
    }
    const long o = (long)l * n + i;
    var_mean[o] = (float)(vs / experts);
    var_max[o] = vm;
    range_mean[o] = (float)(rs / experts);
    range_max[o] = rm;
    std_mean[o] = (float)(ss / experts);
}
