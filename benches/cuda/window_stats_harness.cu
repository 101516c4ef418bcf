// Standalone check-and-time harness for kernels/window_stats.cu, for kernel work on a
// GPU machine that has nvcc but no Rust toolchain:
//
//   nvcc -O3 -arch=sm_90 -o ws benches/cuda/window_stats_harness.cu && ./ws [reps] [W ...]
//   nvcc ... -DKFILE='"other.cu"'      # a candidate version of the kernels
//
// It launches the kernels with the geometry of src/stats/cuda.rs (`geometry`), checks
// every output of awkward small shapes and of four whole paper-scale series against
// a float64 computation (outputs poisoned with NaN first), and times each window with
// CUDA events beside a device-to-device copy of the input and four kernels that move
// the same bytes with no arithmetic (ceilings of the access pattern). Environment:
// WS_CHUNK_W (shortest chunk in windows, default 8), WS_FEW (see geometry), WS_BALANCE=0 (no balancing of
// waves), WS_WPB (warps a block) and WS_SMEM_KIB (shared memory a block, default 96)
// override the geometry; the kernels' AHEAD / MIN_BLOCKS macros can be set with -D.
// `expertcast bench` remains the benchmark of record; this harness is for trying
// kernel variants quickly.

#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <vector>

#ifndef KFILE
#define KFILE "../../kernels/window_stats.cu"
#endif
#include KFILE

#ifndef SHORT_SMEM_FLOATS  // versions before the short kernel used shared memory
#define SHORT_SMEM_FLOATS 0
#define LONG_SMEM_FLOATS(W) (4 * ((W) + (W) / 32 + 1) + 4 * 132)
#endif
#ifndef SPAN_SMEM_FLOATS  // versions with 4 outputs a lane everywhere
#define SHORT_MAX_W 4
#define MID_MAX_W 128
#define SPAN_SMEM_FLOATS(W) LONG_SMEM_FLOATS(W)
#endif

#define CK(x)                                                                                         \
    do {                                                                                              \
        cudaError_t e_ = (x);                                                                         \
        if (e_ != cudaSuccess) {                                                                      \
            fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_));        \
            exit(1);                                                                                  \
        }                                                                                             \
    } while (0)

// What the access pattern allows: read each series' steps W - 1 .. T - 1 and write
// three outputs per step, with no arithmetic to speak of; STREAM: with streaming
// stores (evict-first, as the outputs are not read again by the kernel).
template <bool STREAM>
__global__ void ceiling_kernel(const float* __restrict__ x, int T, int W, float* __restrict__ m,
                               float* __restrict__ v, float* __restrict__ r) {
    const int n = T - W + 1;
    const long s = blockIdx.y;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
        const float a = x[s * T + W - 1 + i];
        if (STREAM) {
            __stcs(m + s * n + i, a);
            __stcs(v + s * n + i, a * a);
            __stcs(r + s * n + i, a + 1.0f);
        } else {
            m[s * n + i] = a;
            v[s * n + i] = a * a;
            r[s * n + i] = a + 1.0f;
        }
    }
}

// The same bytes moved as flat float4 streams (16-byte loads and streaming stores):
// the pattern's ceiling without per-series offsets or alignment concerns.
__global__ void ceiling4_kernel(const float4* __restrict__ x, long n4, float4* __restrict__ m,
                                float4* __restrict__ v, float4* __restrict__ r) {
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n4; i += (long)gridDim.x * blockDim.x) {
        const float4 a = x[i];
        __stcs(m + i, a);
        __stcs(v + i, make_float4(a.x * a.x, a.y * a.y, a.z * a.z, a.w * a.w));
        __stcs(r + i, make_float4(a.x + 1, a.y + 1, a.z + 1, a.w + 1));
    }
}

// Outputs as one flat index g = s n + i cut into aligned float4 groups (a group may
// straddle two series); each output's input x[g + (s + 1)(W - 1)] read as a scalar.
// The ceiling of a kernel that writes float4 in the real output layout.
__global__ void ceiling_g4_kernel(const float* __restrict__ x, int n, int W, long total, float* __restrict__ m,
                                  float* __restrict__ v, float* __restrict__ r) {
    for (long g = 4 * (blockIdx.x * (long)blockDim.x + threadIdx.x); g < total;
         g += 4 * (long)gridDim.x * blockDim.x) {
        float a[4];
#pragma unroll
        for (int k = 0; k < 4; k++) {
            const long gk = min(g + k, total - 1);
            a[k] = __ldg(x + gk + (gk / n + 1) * (long)(W - 1));
        }
        __stcs((float4*)(m + g), make_float4(a[0], a[1], a[2], a[3]));
        __stcs((float4*)(v + g), make_float4(a[0] * a[0], a[1] * a[1], a[2] * a[2], a[3] * a[3]));
        __stcs((float4*)(r + g), make_float4(a[0] + 1, a[1] + 1, a[2] + 1, a[3] + 1));
    }
}

#ifndef CHUNK_W
#define CHUNK_W 8
#endif

struct Geo {
    int chunk, wpb, blocks;
    size_t smem;
};

static size_t smem_per_warp(int w) { return 4 * (size_t)(w <= SHORT_MAX_W ? SHORT_SMEM_FLOATS : SPAN_SMEM_FLOATS(w)); }

// Blocks of the kernel of window w resident on one multiprocessor.
static int blocks_per_sm(int w, int wpb, size_t smem) {
    const void* f = w <= SHORT_MAX_W ? (const void*)window_stats_short
                    : w <= MID_MAX_W ? (const void*)window_stats_mid
                                     : (const void*)window_stats_long;
    CK(cudaFuncSetAttribute(f, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
    int b = 0;
    CK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&b, f, 32 * wpb, smem));
    return std::max(b, 1);
}

// Mirror of block_shape() and geometry() in src/stats/cuda.rs. WS_BALANCE=0: chunks
// of chunk0, no wave balancing.
static Geo geometry(int w, int T, int S, int sms) {
    long n = std::max(T - w + 1, 1);
    long want_warps = 16L * 32 * sms;
    long want_chunks = (want_warps + S - 1) / S;
    static long per_w = getenv("WS_CHUNK_W") ? atol(getenv("WS_CHUNK_W")) : CHUNK_W;
    static bool balance = !getenv("WS_BALANCE") || atoi(getenv("WS_BALANCE")) != 0;
    auto whole = [&](long c) { return std::min((c + 127) / 128 * 128, n); };
    size_t spw = smem_per_warp(w);
    static size_t budget = 1024 * (getenv("WS_SMEM_KIB") ? atol(getenv("WS_SMEM_KIB")) : 96);
    int wpb = (int)std::min<size_t>(std::max<size_t>(budget / std::max<size_t>(spw, 1), 1), 8);
    if (getenv("WS_WPB")) wpb = atoi(getenv("WS_WPB"));
    const long chunk0 = whole(std::max(std::max(per_w * w, (n + want_chunks - 1) / want_chunks), 32L));
    const long c0 = (n + chunk0 - 1) / chunk0;
    const long resident = (long)sms * blocks_per_sm(w, wpb, wpb * spw) * wpb;
    const long warm = w > SHORT_MAX_W ? (w - 1 + 127) / 128 * 128 : 0;
    auto cost = [&](long chunk) { return ((S * ((n + chunk - 1) / chunk)) + resident - 1) / resident * (chunk + warm); };
    long chunk = chunk0;
    // Down to 1/4 as many chunks for the long kernel, 3/4 for the others;
    // WS_FEW=k: down to 1/k of them for every kernel.
    static long few = getenv("WS_FEW") ? atol(getenv("WS_FEW")) : 0;
    const long lo = few > 0 ? std::max(c0 / few, 1L) : std::max(w > MID_MAX_W ? c0 / 4 : c0 - c0 / 4, 1L);
    for (long c = c0 - 1; balance && c >= lo; c--) {
        const long ch = whole((n + c - 1) / c);
        if (cost(ch) < cost(chunk)) chunk = ch;
    }
    long warps = (long)S * ((n + chunk - 1) / chunk);
    return Geo{(int)chunk, wpb, (int)((warps + wpb - 1) / wpb), wpb * spw};
}

static void launch(const float* x, int T, int S, int W, int sms, float* m, float* v, float* r) {
    Geo g = geometry(W, T, S, sms);
    if (W <= SHORT_MAX_W) {
        CK(cudaFuncSetAttribute(window_stats_short, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)g.smem));
        window_stats_short<<<g.blocks, 32 * g.wpb, g.smem>>>(x, T, S, W, g.chunk, m, v, r);
    } else if (W <= MID_MAX_W) {
        CK(cudaFuncSetAttribute(window_stats_mid, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)g.smem));
        window_stats_mid<<<g.blocks, 32 * g.wpb, g.smem>>>(x, T, S, W, g.chunk, m, v, r);
    } else {
        CK(cudaFuncSetAttribute(window_stats_long, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)g.smem));
        window_stats_long<<<g.blocks, 32 * g.wpb, g.smem>>>(x, T, S, W, g.chunk, m, v, r);
    }
    CK(cudaGetLastError());
}

static float share(long s, long t, unsigned* seed) {
    *seed = *seed * 1664525u + 1013904223u;
    double u = (double)(*seed >> 8) / (double)(1u << 24) * 2.0 - 1.0;
    return (float)((1.0 + 0.5 * sin(t * 0.001 * (1 + s % 7)) + 0.2 * u) / 128.0);
}

// Float64 reference for series s: prefix sums for mean and variance (two-pass on
// each window would be O(T W)), monotone deques for max and min.
static double check_series(const float* xs, int T, int W, const float* m, const float* v, const float* r) {
    double worst = 0.0;
    std::deque<int> dmax, dmin;
    for (int t = 0; t < T; t++) {
        while (!dmax.empty() && xs[dmax.back()] <= xs[t]) dmax.pop_back();
        dmax.push_back(t);
        while (!dmin.empty() && xs[dmin.back()] >= xs[t]) dmin.pop_back();
        dmin.push_back(t);
        if (dmax.front() <= t - W) dmax.pop_front();
        if (dmin.front() <= t - W) dmin.pop_front();
        if (t < W - 1) continue;
        int i = t - W + 1;
        double s = 0.0;
        for (int j = i; j <= t; j++) s += xs[j];
        double mean = s / W, q = 0.0;
        for (int j = i; j <= t; j++) q += (xs[j] - mean) * (xs[j] - mean);
        double var = q / W, rng = (double)xs[dmax.front()] - xs[dmin.front()];
        double e = std::max({fabs(mean - m[i]), fabs(var - v[i]), fabs(rng - r[i])});
        if (!(e <= worst)) worst = std::isnan(e) ? INFINITY : std::max(worst, e);
    }
    return worst;
}

struct Run {
    float *x, *m, *v, *r;
};

static Run alloc_run(const std::vector<float>& h, long outputs) {
    Run d;
    CK(cudaMalloc(&d.x, h.size() * 4));
    CK(cudaMemcpy(d.x, h.data(), h.size() * 4, cudaMemcpyHostToDevice));
    CK(cudaMalloc(&d.m, outputs * 4));
    CK(cudaMalloc(&d.v, outputs * 4));
    CK(cudaMalloc(&d.r, outputs * 4));
    return d;
}

static void free_run(Run d) {
    cudaFree(d.x);
    cudaFree(d.m);
    cudaFree(d.v);
    cudaFree(d.r);
}

// Runs one shape and returns the worst |GPU - float64| over the listed series.
static double check_shape(const std::vector<float>& h, int T, int S, int W, int sms, const std::vector<int>& series,
                          Run* keep) {
    int n = T - W + 1;
    long outputs = std::max(1L, (long)S * n);
    Run d = keep ? *keep : alloc_run(h, outputs);
    CK(cudaMemset(d.m, 0xff, outputs * 4));
    CK(cudaMemset(d.v, 0xff, outputs * 4));
    CK(cudaMemset(d.r, 0xff, outputs * 4));
    launch(d.x, T, S, W, sms, d.m, d.v, d.r);
    CK(cudaDeviceSynchronize());
    double worst = 0.0;
    if (n > 0) {
        std::vector<float> m(n), v(n), r(n);
        for (int s : series) {
            CK(cudaMemcpy(m.data(), d.m + (long)s * n, n * 4, cudaMemcpyDeviceToHost));
            CK(cudaMemcpy(v.data(), d.v + (long)s * n, n * 4, cudaMemcpyDeviceToHost));
            CK(cudaMemcpy(r.data(), d.r + (long)s * n, n * 4, cudaMemcpyDeviceToHost));
            double e = check_series(h.data() + (long)s * T, T, W, m.data(), v.data(), r.data());
            worst = std::isnan(e) ? INFINITY : std::max(worst, e);
        }
    }
    if (!keep) free_run(d);
    return worst;
}

int main(int argc, char** argv) {
    int reps = argc > 1 ? atoi(argv[1]) : 20;
    std::vector<int> windows;
    for (int i = 2; i < argc; i++) windows.push_back(atoi(argv[i]));
    if (windows.empty()) windows = {10, 100, 1000};
    int sms = 0;
    CK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
    bool ok = true;

    // Awkward small shapes, every series checked.
    const int shapes[][3] = {{50, 3, 10},  {10, 2, 10},     {9, 2, 10},    {1000, 1, 1},   {3000, 4, 33},
                             {1100, 4, 1000}, {5000, 3, 100}, {20000, 2, 32}, {777, 5, 129}, {40000, 3, 1000},
                             {3001, 5, 4},  {3001, 5, 5},     {3001, 5, 6},  {3001, 5, 9},    {3001, 5, 10},
                             {3001, 5, 17}, {3001, 5, 64},    {3001, 5, 65}, {3001, 5, 128},  {3001, 5, 257},
                             {3001, 5, 8},   {3001, 5, 200},   {3001, 5, 256}, {3001, 5, 129},
                             {3001, 5, 300}, {2999, 7, 513},  {5, 3, 5},     {131, 9, 7},     {1000, 1, 999}};
    for (auto& sh : shapes) {
        int T = sh[0], S = sh[1], W = sh[2];
        std::vector<float> h((size_t)S * T);
        unsigned seed = 7;
        for (int s = 0; s < S; s++)
            for (int t = 0; t < T; t++) h[(size_t)s * T + t] = share(s, t, &seed);
        std::vector<int> all;
        for (int s = 0; s < S; s++) all.push_back(s);
        double e = check_shape(h, T, S, W, sms, all, nullptr);
        printf("check T=%d S=%d W=%d: max |gpu - f64| = %.3g%s\n", T, S, W, e, e <= 1e-6 ? "" : "  FAIL");
        ok &= e <= 1e-6;
    }

    // Paper scale.
    const int T = 100000, S = 12 * 128;
    std::vector<float> h((size_t)S * T);
    unsigned seed = 11;
    for (int s = 0; s < S; s++)
        for (int t = 0; t < T; t++) h[(size_t)s * T + t] = share(s, t, &seed);
    Run d = alloc_run(h, (long)S * T);
    float* y;
    CK(cudaMalloc(&y, h.size() * 4));
    // Milliseconds per call of f: one call to warm up, then reps between events.
    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));
    auto time_ms = [&](auto f) {
        f();
        CK(cudaEventRecord(e0));
        for (int i = 0; i < reps; i++) f();
        CK(cudaEventRecord(e1));
        CK(cudaEventSynchronize(e1));
        float ms = 0;
        CK(cudaEventElapsedTime(&ms, e0, e1));
        CK(cudaGetLastError());
        return ms / reps;
    };
    double ms = time_ms([&] { CK(cudaMemcpy(y, d.x, h.size() * 4, cudaMemcpyDeviceToDevice)); });
    double copy_gbs = 2.0 * h.size() * 4 / (ms * 1e-3) / 1e9;
    printf("copy %.1f MB: %.3f ms, %.0f GB/s (read + write)\n", h.size() * 4 / 1e6, ms, copy_gbs);
    cudaFree(y);
    for (int W : windows) {
        double e = check_shape(h, T, S, W, sms, {0, 1, S / 2, S - 1}, &d);
        const double n = T - W + 1, bytes = (double)S * T * 4 + 3.0 * S * n * 4;
        auto report = [&](const char* what, double ms) {
            const double gbs = bytes / (ms * 1e-3) / 1e9;
            printf("W=%5d ceiling, %s: %.3f ms %6.0f GB/s %5.1f%% of copy\n", W, what, ms, gbs, 100 * gbs / copy_gbs);
        };
        double t = time_ms([&] { launch(d.x, T, S, W, sms, d.m, d.v, d.r); });
        double gbs = bytes / (t * 1e-3) / 1e9;
        Geo g = geometry(W, T, S, sms);
        dim3 cg((unsigned)((n + 1023) / 1024), S);
        report("per series (1 read, 3 writes, no work)",
               time_ms([&] { ceiling_kernel<false><<<cg, 256>>>(d.x, T, W, d.m, d.v, d.r); }));
        report("per series, streaming stores",
               time_ms([&] { ceiling_kernel<true><<<cg, 256>>>(d.x, T, W, d.m, d.v, d.r); }));
        const long total = (long)S * (long)n;
        report("flat outputs as float4, scalar reads",
               time_ms([&] { ceiling_g4_kernel<<<132 * 16, 256>>>(d.x, (int)n, W, total & ~3L, d.m, d.v, d.r); }));
        // Flat streams: 16 bytes read and 48 written per 4 outputs (n4 * 64 bytes).
        const long n4 = total / 4;
        const double fms = time_ms([&] {
            ceiling4_kernel<<<132 * 16, 256>>>((const float4*)d.x, n4, (float4*)d.m, (float4*)d.v, (float4*)d.r);
        });
        const double fgbs = 64.0 * n4 / (fms * 1e-3) / 1e9;
        printf("W=%5d ceiling, flat float4 streams: %.3f ms %6.0f GB/s %5.1f%% of copy\n", W, fms, fgbs,
               100 * fgbs / copy_gbs);
        printf("W=%5d %.3f ms %6.0f GB/s %5.1f%% of copy  chunk %d, %d warps/block, %zu B smem  max err %.3g%s\n", W,
               t, gbs, 100 * gbs / copy_gbs, g.chunk, g.wpb, g.smem, e, e <= 1e-6 ? "" : "  FAIL");
        ok &= e <= 1e-6;
    }
    free_run(d);
    return ok ? 0 : 1;
}
