// Expert placement's realized imbalance on the GPU (src/placement/cuda.rs): each
// job is a plan applied to the actual shares of the `H` steps from its first step.
//
// `p` is one layer's shares, float64, step-major: p[t * E + e]. Job j's plan is
// `slots[j * G * S ..]`: device d's S slots at [d * S, (d + 1) * S), each the
// slot's expert in the low 16 bits and that expert's replica count above them, or
// 0xffffffff for an empty slot (a device with fewer replicas than S; skipped). A
// slot carries p[e] / count, computed as p[e] * (1.0 / count) like the CPU path.
// out[j * H + k] = the most loaded device's load × G / the devices' total load at
// step first[j] + k.
//
// Every operation is the CPU path's (`Placement::imbalances`), one for one and
// without fused multiply-adds (the explicit _rn intrinsics), each device's slots in
// order and the devices in order, so the values have the CPU's bits.
//
// Block (j, c): job j, steps c * blockDim.x + threadIdx.x, one a thread; the job's
// slots are staged in dynamic shared memory (G * S unsigned ints).

extern "C" __global__ void placement_imbalance(const double* __restrict__ p, int E, const int* __restrict__ first,
                                               const unsigned* __restrict__ slots, int G, int S, int H,
                                               double* __restrict__ out) {
    extern __shared__ unsigned plan[];
    const int j = blockIdx.x;
    const int n = G * S;
    const unsigned* mine = slots + (size_t)j * n;
    for (int i = threadIdx.x; i < n; i += blockDim.x) plan[i] = mine[i];
    __syncthreads();
    const int k = blockIdx.y * blockDim.x + threadIdx.x;
    if (k >= H) return;
    const double* row = p + ((size_t)first[j] + k) * E;
    double max = __longlong_as_double(0xfff0000000000000ULL), total = 0.0;  // -inf
    for (int d = 0; d < G; d++) {
        double l = 0.0;
        for (int s = 0; s < S; s++) {
            const unsigned v = plan[d * S + s];
            if (v == 0xffffffffu) continue;
            const double part = 1.0 / (double)(v >> 16);
            l = __dadd_rn(l, __dmul_rn(row[v & 0xffffu], part));
        }
        max = fmax(max, l);
        total = __dadd_rn(total, l);
    }
    out[(size_t)j * H + k] = __ddiv_rn(__dmul_rn(max, (double)G), total);
}
