// A trace's shares computed where its loads already are (src/gpu/resident.rs):
// the loads go up once, as float32 [T][L][E], with each (step, layer)'s total as
// the host summed it (float64, experts in order, [T][L]); every share is then the
// host's one float64 division, load / total, which the GPU rounds as the CPU does
// (IEEE division), so the shares have the host's bits.
//
// Indices are 64-bit: a paper-scale trace has 153.6 M loads.

// Layer l's shares, float64, step-major: out[t * E + e] (the scoring kernels'
// input, kernels/score.cu). A grid-stride loop over the T × E shares.
extern "C" __global__ void shares_steps_f64(const float* __restrict__ loads, const double* __restrict__ totals, long long T, int L,
                                            int E, int l, double* __restrict__ out) {
    const long long n = T * E;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        const long long t = i / E;
        const long long tl = t * L + l;
        out[i] = (double)loads[tl * E + (i - t * E)] / totals[tl];
    }
}

// Layers l0 .. l0 + gridDim.z of the shares, float32, series-major: out[(g * E + e)
// * T + t] for layer l0 + g (the window kernels' input, kernels/window_stats.cu),
// each the float64 share rounded to float32 as the host rounds it. Tiles of 32
// steps × 32 experts go through shared memory: read along the experts (a step's
// loads are together), written along the steps. Block (32, 8); grid (⌈T/32⌉,
// ⌈E/32⌉, layers).
extern "C" __global__ void shares_series_f32(const float* __restrict__ loads, const double* __restrict__ totals, int T, int L, int E,
                                             int l0, float* __restrict__ out) {
    __shared__ float tile[32][33];
    const int g = blockIdx.z, l = l0 + g;
    const int t0 = blockIdx.x * 32, e0 = blockIdx.y * 32;
    for (int dy = threadIdx.y; dy < 32; dy += blockDim.y) {
        const int t = t0 + dy, e = e0 + threadIdx.x;
        if (t < T && e < E) {
            const long long tl = (long long)t * L + l;
            tile[dy][threadIdx.x] = (float)((double)loads[tl * E + e] / totals[tl]);
        }
    }
    __syncthreads();
    for (int dy = threadIdx.y; dy < 32; dy += blockDim.y) {
        const int e = e0 + dy, t = t0 + threadIdx.x;
        if (t < T && e < E) {
            out[((long long)g * E + e) * T + t] = tile[threadIdx.x][dy];
        }
    }
}
