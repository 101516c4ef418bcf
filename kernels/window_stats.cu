// Window statistics of many series at once: trailing-window mean, population
// variance and range (max - min) for window W. CPU twin: src/stats/cpu.rs
// (`window_series`); tests/gpu.rs compares the two.
//
// Layout: input `x` is series-major float32, x[s * T + t]; outputs are series-major
// too, out[s * n + i] for the window x[i .. i + W - 1] (ending at step W - 1 + i),
// n = T - W + 1.
//
// window_stats_mid (5 <= W <= 128) and window_stats_long (W > 128) do O(1) work per
// output whatever W. One warp handles one series over one chunk of outputs, so
// that a small trace still gives thousands of warps. It walks the chunk in spans of
// 128 outputs, lane l owning outputs 4l .. 4l + 3 of a span, so that each lane
// writes its three results as float4: spans start where the flat output index
// s * n + i is a multiple of 32 (128-byte lines: 9 % faster at W = 10 than spans
// aligned only on float4, whose first and last lines each span half-writes), and
// chunks (a multiple of 128 outputs from the host) start on such a boundary, so only
// a series' first and last spans are partial (their lanes write single floats,
// those outside the chunk nothing). A span's work:
//   - each lane loads the last input of its 4 windows ("ends");
//   - the ends are cut into blocks of B steps, B the largest power of two <= W - 1
//     (at most 128), and scanned within blocks: prefixes (max, min, sum, sum of
//     squares) in registers, suffixes from every end to its block's end stored in a
//     ring in shared memory;
//   - the window of output i is x[i .. i + W - 1]: its first step i was an end
//     W - 1 steps earlier, so window = suffix(i) from the ring, joined with the
//     whole blocks in between (block totals are the suffixes at block starts: Q - 1
//     or Q of them, W - 1 = Q B + r) and the prefix of its end's block.
// Each input is loaded once per chunk (chunks overlap by W - 1 steps, the warm-up
// spans at a chunk's start produce no output). Sums are of x - shift (shift = an
// input of the chunk) and span at most W + B steps, so float32 stays within 1e-6 of
// a float64 computation for shares. window_stats_long keeps the block scheme for
// max and min only: its sums slide, each output's window adding its end and dropping
// the step before its start (read back from a ring of raw inputs), the differences
// prefix-scanned within the span on top of a float64 carry from the spans before
// (the carry is rounded to float32 once a span, so errors do not build up along
// the chunk). Windows of at most 4 steps use window_stats_short, which gathers each
// window from shared memory.

#define FULL 0xffffffffu
// The dynamic shared memory of every kernel here (one declaration).
extern __shared__ float smem[];
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

// One step of an inclusive scan within groups of G lanes (G a power of two): joins
// the aggregate d lanes before (UP) or after in the group. Where that lane lies
// outside the group the shuffle returns the lane's own aggregate, which max and min
// absorb unchanged; the sums add nothing there (`in` false). Max and min are joined
// unconditionally: predicating all four made nvcc copy every quantity between
// registers at each step.
template <bool UP>
__device__ __forceinline__ Agg scan_step(Agg a, int d, int G, bool in) {
    const float mx = UP ? __shfl_up_sync(FULL, a.mx, d, G) : __shfl_down_sync(FULL, a.mx, d, G);
    const float mn = UP ? __shfl_up_sync(FULL, a.mn, d, G) : __shfl_down_sync(FULL, a.mn, d, G);
    const float sum = UP ? __shfl_up_sync(FULL, a.sum, d, G) : __shfl_down_sync(FULL, a.sum, d, G);
    const float sq = UP ? __shfl_up_sync(FULL, a.sq, d, G) : __shfl_down_sync(FULL, a.sq, d, G);
    a.mx = fmaxf(a.mx, mx);
    a.mn = fminf(a.mn, mn);
    if (in) {  // predicated adds: 1% faster than selecting 0 (H200, W = 300 .. 3000)
        a.sum += sum;
        a.sq += sq;
    }
    return a;
}

__device__ __forceinline__ Agg agg_shfl(Agg a, int src) {
    Agg r;
    r.mx = __shfl_sync(FULL, a.mx, src);
    r.mn = __shfl_sync(FULL, a.mn, src);
    r.sum = __shfl_sync(FULL, a.sum, src);
    r.sq = __shfl_sync(FULL, a.sq, src);
    return r;
}

// Shared-memory index with one pad word per 32, so that the 32 lanes touching
// positions 4 * lane + c hit 32 different banks.
__device__ __forceinline__ int pad(int i) { return i + (i >> 5); }

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

// Windows of at most 4 steps (the kernel is right for any W <= 32). A warp moves
// through its chunk GROUP steps at a time: the group's inputs go to shared memory behind the 32 steps before it, and the
// next group is loaded into registers while this one is computed (GROUP / 32 loads
// in flight per lane). Each output then reads its W inputs from shared memory
// (consecutive lanes, consecutive words: no bank conflicts).
#define GROUP 128
// Floats of shared memory per warp of window_stats_short (the harness and
// src/stats/cuda.rs use the same figure).
#define SHORT_SMEM_FLOATS (SLAB + GROUP)

// Both kernels: grid of enough warps for S * chunks (series, chunk) pairs; mean_out
// may be null, var_out and range_out may not.
extern "C" __global__ void __launch_bounds__(256) window_stats_short(const float* __restrict__ x, int T, int S, int W,
                                                                     int chunk, float* __restrict__ mean_out,
                                                                     float* __restrict__ var_out,
                                                                     float* __restrict__ range_out) {
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


// Outputs per span of window_stats_mid and window_stats_long (each lane owns 4).
#define SPAN 128
// A span of 128 positions, padded.
#define SPANP (SPAN + SPAN / 32)
// Windows up to SHORT_MAX_W steps run window_stats_short, up to MID_MAX_W
// window_stats_mid (its blocks hold at least 4 ends, so W - 1 >= 4), longer ones
// window_stats_long (its blocks are spans, so W - 1 >= SPAN). src/stats/cuda.rs and
// the harness use the same figures.
#define SHORT_MAX_W 4
#define MID_MAX_W SPAN
// Spans start where the flat output index is a multiple of this (a 128-byte line of
// outputs; H200, harness: W = 10 / 100 / 1000 0.730 / 0.750 / 0.807 ms, against
// 0.800 / 0.801 / 0.823 ms with spans aligned on 4 outputs).
#ifndef SPAN_ALIGN
#define SPAN_ALIGN 32
#endif
// Positions of the rings of window W: a multiple of SPAN, at least W - 1 + SPAN.
#define RING(W) ((((W) - 1) / SPAN + 2) * SPAN)
// Floats of shared memory per warp of window W. window_stats_mid: 4 padded suffix
// rings. window_stats_long: a padded raw ring, a suffix ring of two spans (max and
// min, padded) and rings of block totals and of suffixes within groups of blocks
// (max and min a span each).
#define SPAN_SMEM_FLOATS(W)                                                           \
    ((W) <= MID_MAX_W ? 4 * (RING(W) + RING(W) / 32)                                \
                      : RING(W) + RING(W) / 32 + 4 * SPANP + 4 * (RING(W) / SPAN))

// The 4 quantities at index i of 4 arrays `stride` apart.
__device__ __forceinline__ Agg agg_at(const float* a0, int stride, int i) {
    Agg a;
    a.mx = a0[i];
    a.mn = a0[stride + i];
    a.sum = a0[2 * stride + i];
    a.sq = a0[3 * stride + i];
    return a;
}

__device__ __forceinline__ void agg_put(float* a0, int stride, int i, Agg a) {
    a0[i] = a.mx;
    a0[stride + i] = a.mn;
    a0[2 * stride + i] = a.sum;
    a0[3 * stride + i] = a.sq;
}

// The same in padded arrays (shared-memory rings and buffers).
__device__ __forceinline__ Agg ring_load(const float* r, int stride, int slot) { return agg_at(r, stride, pad(slot)); }

__device__ __forceinline__ void store3(float* mean_out, float* var_out, float* range_out, long o, float3 r) {
    if (mean_out) __stcs(mean_out + o, r.x);
    __stcs(var_out + o, r.y);
    __stcs(range_out + o, r.z);
}

// The body of window_stats_mid (BIG = false: blocks of B <= W - 1 ends and a suffix
// ring) and window_stats_long (BIG = true: blocks are spans, raw ring); two kernels
// so that each keeps only its own path's registers. AHEAD: spans whose loads are in
// flight ahead of the one being computed.
template <bool BIG, int AHEAD>
__device__ __forceinline__ void span_stats(const float* __restrict__ x, int T, int S, int W, int chunk,
                                           float* __restrict__ mean_out, float* __restrict__ var_out,
                                           float* __restrict__ range_out) {
    constexpr int K = 4;  // outputs a lane
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int n = T - W + 1;
    if (n <= 0) return;
    const int chunks = (n + chunk - 1) / chunk;
    const long gw = (long)blockIdx.x * (blockDim.x >> 5) + warp;
    if (gw >= (long)S * chunks) return;
    const int s = (int)(gw / chunks), c = (int)(gw % chunks);
    const long gbase = (long)s * n;  // flat index of output 0 of the series
    // Chunks start where the flat index is a multiple of SPAN_ALIGN (c * chunk moved
    // back by the series' misalignment), so that with chunk a multiple of the span
    // only a series' first and last spans are partial.
    const int mis = (int)(gbase & (SPAN_ALIGN - 1));
    const int i0 = c == 0 ? 0 : c * chunk - mis;               // first output of the chunk
    const int i1 = c == chunks - 1 ? n : (c + 1) * chunk - mis;  // one past its last
    const int ia = i0 - (int)((gbase + i0) & (SPAN_ALIGN - 1));  // first span, aligned
    const int D = W - 1;
    int B = SPAN;
    if (!BIG)
        for (B = K; 2 * B <= D && B < SPAN;) B *= 2;
    const int G = B / K;  // lanes per block
    const int Q = D / B, r = D % B;
    const int R = RING(W), stride = R + R / 32;
    const int warm = (D + SPAN - 1) / SPAN;
    const int o0 = ia - warm * SPAN;  // output index of span 0 (whose ends start the ring)
    const float* xs = x + (long)s * T;
    const float shift = xs[i0];
    const float inv_w = 1.0f / (float)W;
    const int li = lane & (G - 1);
    const int own = K * lane;  // this lane's first output in a span

    // nx[a][k]: the end of output own + k of span v0 + a, loaded AHEAD spans before
    // it is used; steps outside the series load as 0.
    float nx[AHEAD][K];
#pragma unroll
    for (int a = 0; a < AHEAD; a++) {
#pragma unroll
        for (int k = 0; k < K; k++) {
            const int p = o0 + a * SPAN + own + k + D;
            nx[a][k] = ((unsigned)p < (unsigned)T) ? __ldg(xs + p) : 0.0f;
        }
    }
    int sbase = 0;  // ring slot of the span's first end
    // Long kernel: the raw ring starts as `shift` everywhere, so that the first W
    // ends leave nothing behind them in the sums of differences (below).
    float* raw = smem + (long)warp * SPAN_SMEM_FLOATS(W);
    double csum = 0.0, csq = 0.0;  // long kernel: window sums (of x - shift) before this span
    if (BIG) {
        for (int i = lane; i < stride; i += 32) raw[i] = shift;
        __syncwarp();
    }
    const float shift2 = 2.0f * shift;
    // Long kernel: groups of L blocks for the blocks between a window's ends; the
    // prefix of the current group and the position in it.
    const int L = Q - 1;
    Agg gpre = agg_identity();
    int gpos = 0;
    for (int v0 = 0; o0 + v0 * SPAN < i1; v0 += AHEAD) {
#pragma unroll
        for (int a = 0; a < AHEAD; a++) {
            const int isp = o0 + (v0 + a) * SPAN;  // output index of the span's first output
            if (isp >= i1) break;
            float cur[K];
#pragma unroll
            for (int k = 0; k < K; k++) {
                cur[k] = nx[a][k];
                const int p = isp + AHEAD * SPAN + own + k + D;
                nx[a][k] = ((unsigned)p < (unsigned)T && isp + AHEAD * SPAN < i1) ? __ldg(xs + p) : 0.0f;
            }
            // The lane's K ends and their prefixes within the block (4 quantities):
            // local running joins, then a scan over the G lanes of each block.
            // Steps outside the series (loaded as 0) need no masking: a window's
            // start, whole blocks and end lie inside it, so its suffix, blocks and
            // prefix never include them.
            Agg e[K], pk[K];
            Agg run = agg_identity();
#pragma unroll
            for (int k = 0; k < K; k++) {
                if (BIG) {
                    // The window of output i differs from that of i - 1 by its end
                    // x[i + D] in and x[i - 1] out: x[i - 1] is the end of output
                    // i - W, W slots back in the raw ring (R >= W + SPAN: not this
                    // span's slots). Sums scan these differences and add the carry.
                    int q = sbase + own + k - W;
                    if (q < 0) q += R;
                    const float lv = raw[pad(q)];
                    const float d = cur[k] - lv;
                    e[k].mx = cur[k];
                    e[k].mn = cur[k];
                    e[k].sum = d;
                    e[k].sq = d * ((cur[k] + lv) - shift2);
                } else {
                    e[k] = agg_of(cur[k], shift);
                }
                run = agg_join(run, e[k]);
                pk[k] = run;
            }
            Agg incl = run;
#pragma unroll
            for (int d = 1; d < 32; d <<= 1) {
                if (d >= G) break;
                incl = scan_step<true>(incl, d, G, li >= d);
            }
            Agg ex = agg_shfl_up(incl, 1);
            if (li == 0) ex = agg_identity();
#pragma unroll
            for (int k = 0; k < K; k++) pk[k] = agg_join(ex, pk[k]);
            // win[k]: the window of output own + k up to its end's block.
            Agg win[K];
            if (BIG) {
                // Blocks are spans. The raw ends go to the raw ring and the span's
                // max / min to the totals ring; block J - Q (J this span) is read
                // back from the raw ring and suffix-scanned (max and min) into this
                // span's half (hb) of a suffix ring of two spans (stride SS): the
                // windows of this span start in block J - Q (at offset o - r for
                // o >= r) or in block J - Q - 1 (the other half), so at position
                // hb + o - r of that ring either way (one read per window, no bank
                // conflicts between halves). The sums are the carry plus the prefix
                // of differences.
                constexpr int SS = 2 * SPANP;
                float* sbuf = raw + stride;
                float* tots = sbuf + 2 * SS;
                float* gsuf = tots + 2 * (R / SPAN);
                const int nb = R / SPAN, jb = sbase / SPAN;
                // A lane's 4 positions share one pad word (spans and ring positions
                // here are multiples of 32): pad once.
                float* rawk = raw + pad(sbase + own);
#pragma unroll
                for (int k = 0; k < K; k++) rawk[k] = cur[k];
                if (lane == 31) {
                    tots[jb] = incl.mx;
                    tots[nb + jb] = incl.mn;
                }
                // The span's sums of differences, for the carry of the next span.
                const float tsum = __shfl_sync(FULL, incl.sum, 31), tsq = __shfl_sync(FULL, incl.sq, 31);
                __syncwarp();
                const int hb = ((v0 + a) & 1) * SPAN;  // this span's half
                // Warm-up spans before the one just before the first output only
                // feed the raw ring, the block totals and the carry: no output reads
                // their suffixes.
                if (isp + SPAN >= ia) {
                    int qs = sbase - Q * SPAN;
                    if (qs < 0) qs += R;
                    float smx[K], smn[K];
                    float m1 = -F_INF, m2 = F_INF;
#pragma unroll
                    for (int k = K - 1; k >= 0; k--) {
                        const float f = raw[pad(qs + own) + k];
                        m1 = fmaxf(f, m1);
                        m2 = fminf(f, m2);
                        smx[k] = m1;
                        smn[k] = m2;
                    }
#pragma unroll
                    for (int d = 1; d < 32; d <<= 1) {
                        // Past the warp's end the shuffle returns the lane's own value.
                        m1 = fmaxf(m1, __shfl_down_sync(FULL, m1, d));
                        m2 = fminf(m2, __shfl_down_sync(FULL, m2, d));
                    }
                    float a1 = __shfl_down_sync(FULL, m1, 1), a2 = __shfl_down_sync(FULL, m2, 1);
                    if (lane == 31) {
                        a1 = -F_INF;
                        a2 = F_INF;
                    }
                    float* sk = sbuf + pad(hb + own);
#pragma unroll
                    for (int k = 0; k < K; k++) {
                        sk[k] = fmaxf(smx[k], a1);
                        sk[SS + k] = fminf(smn[k], a2);
                    }
                }
                __syncwarp();
                // Whole blocks between: J - Q + 1 .. J - 1 (ma), and J - Q too (mb).
                // ma slides by one block a span: van Herk again, over the blocks, in
                // groups of L = Q - 1: ma = (suffix of its first block's group) joined
                // with (prefix of block J - 1's group), or that whole group.
                float max_a = -F_INF, min_a = F_INF;
                if (L > 0) {
                    if (gpos == 0) {
                        max_a = gpre.mx;
                        min_a = gpre.mn;
                    } else {
                        int t = jb - L;
                        if (t < 0) t += nb;
                        max_a = fmaxf(gsuf[t], gpre.mx);
                        min_a = fminf(gsuf[nb + t], gpre.mn);
                    }
                    const float tx = tots[jb], tn = tots[nb + jb];
                    gpre.mx = gpos == 0 ? tx : fmaxf(gpre.mx, tx);
                    gpre.mn = gpos == 0 ? tn : fminf(gpre.mn, tn);
                    if (++gpos == L) {
                        // Block J ends a group: the suffixes of its blocks.
                        gpos = 0;
                        float ax = -F_INF, an = F_INF;
                        for (int j = 0; j < L; j++) {
                            int t = jb - j;
                            if (t < 0) t += nb;
                            ax = fmaxf(tots[t], ax);
                            an = fminf(tots[nb + t], an);
                            if (lane == 0) {
                                gsuf[t] = ax;
                                gsuf[nb + t] = an;
                            }
                        }
                    }
                }
                const float max_b = fmaxf(max_a, sbuf[pad(hb)]), min_b = fminf(min_a, sbuf[SS + pad(hb)]);
                const float cs = (float)csum, cq = (float)csq;
#pragma unroll
                for (int k = 0; k < K; k++) {
                    const int o = own + k;
                    const int slot = pad((hb + o - r) & (2 * SPAN - 1));
                    win[k].mx = fmaxf(sbuf[slot], o >= r ? max_a : max_b);
                    win[k].mn = fminf(sbuf[SS + slot], o >= r ? min_a : min_b);
                    win[k].sum = cs;
                    win[k].sq = cq;
                }
                csum += (double)tsum;
                csq += (double)tsq;
            } else {
                // Blocks of B ends: every end's suffix to its block's end goes to the
                // ring; windows read their first step's suffix back.
                float* ring = smem + (long)warp * SPAN_SMEM_FLOATS(W);
                float smx[K], smn[K];
                float m1 = -F_INF, m2 = F_INF;
#pragma unroll
                for (int k = K - 1; k >= 0; k--) {
                    m1 = fmaxf(m1, e[k].mx);
                    m2 = fminf(m2, e[k].mn);
                    smx[k] = m1;
                    smn[k] = m2;
                }
#pragma unroll
                for (int d = 1; d < 32; d <<= 1) {
                    if (d >= G) break;
                    // Past the group's end the shuffle returns the lane's own value.
                    m1 = fmaxf(m1, __shfl_down_sync(FULL, m1, d, G));
                    m2 = fminf(m2, __shfl_down_sync(FULL, m2, d, G));
                }
                const Agg tot = agg_shfl(incl, lane | (G - 1));
                float a1 = __shfl_down_sync(FULL, m1, 1), a2 = __shfl_down_sync(FULL, m2, 1);
                if (li == G - 1) {
                    a1 = -F_INF;
                    a2 = F_INF;
                }
#pragma unroll
                for (int k = 0; k < K; k++) {
                    Agg f;
                    f.mx = fmaxf(smx[k], a1);
                    f.mn = fminf(smn[k], a2);
                    f.sum = tot.sum - pk[k].sum + e[k].sum;
                    f.sq = tot.sq - pk[k].sq + e[k].sq;
                    agg_put(ring, stride, pad(sbase + own) + k, f);
                }
                __syncwarp();
                // B is the largest power of two <= W - 1 = D (and W <= MID_MAX_W keeps
                // it below the cap), so D < 2 B: a window's first step lies in the
                // block before its end's block (at offset off - r, for off >= r) or
                // in the one before that, with the block between whole (its total
                // is the suffix at its start).
                int qb = sbase + (own & ~(B - 1)) - B;
                if (qb < 0) qb += R;
                const Agg mb = ring_load(ring, stride, qb);
#pragma unroll
                for (int k = 0; k < K; k++) {
                    int q = sbase + own + k - D;
                    if (q < 0) q += R;
                    const Agg f = ring_load(ring, stride, q);
                    win[k] = ((own + k) & (B - 1)) >= r ? f : agg_join(f, mb);
                }
            }
            __syncwarp();
            if (isp >= ia) {
                const long o = gbase + isp + own;
                float3 res[K];
#pragma unroll
                for (int k = 0; k < K; k++) res[k] = finish(agg_join(win[k], pk[k]), inv_w, shift);
                if (isp >= i0 && isp + SPAN <= i1) {
                    if (mean_out) __stcs((float4*)(mean_out + o), make_float4(res[0].x, res[1].x, res[2].x, res[3].x));
                    __stcs((float4*)(var_out + o), make_float4(res[0].y, res[1].y, res[2].y, res[3].y));
                    __stcs((float4*)(range_out + o), make_float4(res[0].z, res[1].z, res[2].z, res[3].z));
                } else {
#pragma unroll
                    for (int k = 0; k < K; k++) {
                        const int i = isp + own + k;
                        if (i >= i0 && i < i1) store3(mean_out, var_out, range_out, o + k, res[k]);
                    }
                }
            }
            sbase += SPAN;
            if (sbase == R) sbase = 0;
        }
    }
}

// Settings measured on an H200 with benches/cuda/window_stats_harness.cu (the
// macros let the harness try others). The mid kernel: one span of loads ahead,
// capped at 80 registers so that 3 blocks of 256 threads share a multiprocessor
// (W = 10 / 100: 0.795 / 0.796 ms; with two spans ahead and no cap, 106 registers,
// 0.772 / 0.811 ms). The long kernel: two spans ahead, capped at 128 registers (2
// blocks a multiprocessor; at 80 registers, W = 1000 took 1.148 ms instead of
// 1.075 ms in an earlier version; three spans ahead: 0.936 instead of 0.921 ms).
#ifndef MID_AHEAD
#define MID_AHEAD 1
#endif
#ifndef MID_MIN_BLOCKS
#define MID_MIN_BLOCKS 3
#endif
#ifndef LONG_AHEAD
#define LONG_AHEAD 2
#endif
#ifndef LONG_MIN_BLOCKS
#define LONG_MIN_BLOCKS 2
#endif
extern "C" __global__ void __launch_bounds__(256, MID_MIN_BLOCKS)
    window_stats_mid(const float* __restrict__ x, int T, int S, int W, int chunk, float* __restrict__ mean_out,
                     float* __restrict__ var_out, float* __restrict__ range_out) {
    span_stats<false, MID_AHEAD>(x, T, S, W, chunk, mean_out, var_out, range_out);
}

extern "C" __global__ void __launch_bounds__(256, LONG_MIN_BLOCKS)
    window_stats_long(const float* __restrict__ x, int T, int S, int W, int chunk, float* __restrict__ mean_out,
                      float* __restrict__ var_out, float* __restrict__ range_out) {
    span_stats<true, LONG_AHEAD>(x, T, S, W, chunk, mean_out, var_out, range_out);
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
