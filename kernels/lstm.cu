// A fused LSTM layer (forward and backward through time), the linear head, the
// squared-error loss and Adam, for training and inference on the GPU.
//
// Compiled by NVRTC once per layer shape with D (input features), H (hidden units)
// and R (sequences per block) defined; G = 4H threads a block, thread j owning
// gate column j (gate order i, f, g, o, as PyTorch/cuDNN and src/forecast/lstm/net.rs).
// A block runs R sequences through every time step, keeping the state in shared
// memory and its column of W_hh in registers, so a step is one pass with no
// kernel launch. Backward walks the steps in reverse; each block accumulates its
// weight gradients in registers and writes them as one partial, summed by
// `sum_partials` (no atomics on the weights).
//
// Layouts (row-major): x [B, T, D]; w_ih [D, G]; w_hh [H, G]; bias [G];
// h/c sequences [B, T, H]; activations [B, T, G].

#ifndef D
#define D 1
#endif
#ifndef H
#define H 64
#endif
#ifndef R
#define R 8
#endif
#define G (4 * H)
#if R % 4 != 0
#error R must be a multiple of 4
#endif

__device__ __forceinline__ float sigm(float v) { return 1.0f / (1.0f + expf(-v)); }

extern "C" __global__ void __launch_bounds__(G) lstm_fwd(
    const float* __restrict__ x, const float* __restrict__ w_ih, const float* __restrict__ w_hh,
    const float* __restrict__ bias, const float* __restrict__ h0, const float* __restrict__ c0,
    float* __restrict__ hs, float* __restrict__ cs, float* __restrict__ acts,
    float* __restrict__ h_last, float* __restrict__ c_last, int B, int T)
{
    __shared__ float xs[R][D];
    __shared__ float hsm[R][H];
    __shared__ float csm[R][H];
    __shared__ float gs[R][G];
    const int j = threadIdx.x;
    const int b0 = blockIdx.x * R;
    float wh[H];
#pragma unroll
    for (int k = 0; k < H; k++) wh[k] = w_hh[k * G + j];
    const float bj = bias[j];
    const int gate = j / H;
    for (int e = j; e < R * H; e += G) {
        const int r = e / H, k = e % H, b = b0 + r;
        hsm[r][k] = (b < B && h0) ? h0[(size_t)b * H + k] : 0.0f;
        csm[r][k] = (b < B && c0) ? c0[(size_t)b * H + k] : 0.0f;
    }
    for (int t = 0; t < T; t++) {
        for (int e = j; e < R * D; e += G) {
            const int r = e / D, k = e % D, b = b0 + r;
            xs[r][k] = b < B ? x[((size_t)b * T + t) * D + k] : 0.0f;
        }
        __syncthreads();
        float acc[R];
#pragma unroll
        for (int r = 0; r < R; r++) acc[r] = bj;
        for (int k = 0; k < D; k++) {
            const float w = w_ih[k * G + j];
#pragma unroll
            for (int r = 0; r < R; r++) acc[r] += xs[r][k] * w;
        }
#pragma unroll
        for (int k = 0; k < H; k++) {
#pragma unroll
            for (int r = 0; r < R; r++) acc[r] += hsm[r][k] * wh[k];
        }
#pragma unroll
        for (int r = 0; r < R; r++) {
            const float a = gate == 2 ? tanhf(acc[r]) : sigm(acc[r]);
            gs[r][j] = a;
            if (acts && b0 + r < B) acts[((size_t)(b0 + r) * T + t) * G + j] = a;
        }
        __syncthreads();
        for (int e = j; e < R * H; e += G) {
            const int r = e / H, k = e % H, b = b0 + r;
            const float c = gs[r][H + k] * csm[r][k] + gs[r][k] * gs[r][2 * H + k];
            const float h = gs[r][3 * H + k] * tanhf(c);
            csm[r][k] = c;
            hsm[r][k] = h;
            if (b < B) {
                if (hs) hs[((size_t)b * T + t) * H + k] = h;
                if (cs) cs[((size_t)b * T + t) * H + k] = c;
            }
        }
        // The next step's first barrier separates these writes from the reads above.
    }
    __syncthreads();
    for (int e = j; e < R * H; e += G) {
        const int r = e / H, k = e % H, b = b0 + r;
        if (b < B) {
            h_last[(size_t)b * H + k] = hsm[r][k];
            c_last[(size_t)b * H + k] = csm[r][k];
        }
    }
}

// Gradients of one layer. dh_seq: gradient w.r.t. every h (from the layer above),
// or null; dh_last: gradient w.r.t. the final h (from the head), or null. Writes dx
// (null for the first layer) and one partial [D*G + H*G + G] per block:
// dW_ih, dW_hh, dbias.
extern "C" __global__ void __launch_bounds__(G) lstm_bwd(
    const float* __restrict__ x, const float* __restrict__ hs, const float* __restrict__ cs,
    const float* __restrict__ acts, const float* __restrict__ w_ihT, const float* __restrict__ w_hhT,
    const float* __restrict__ dh_seq, const float* __restrict__ dh_last,
    float* __restrict__ dx, float* __restrict__ partial, int B, int T)
{
    __shared__ float xs[R][D];
    __shared__ float hprev[R][H];
    __shared__ float dhr[R][H];
    __shared__ float dcs[R][H];
    __shared__ float dgs[R][G];
    const int j = threadIdx.x;
    const int b0 = blockIdx.x * R;
    float awi[D], awh[H], ab = 0.0f;
#pragma unroll
    for (int k = 0; k < D; k++) awi[k] = 0.0f;
#pragma unroll
    for (int k = 0; k < H; k++) awh[k] = 0.0f;
    for (int e = j; e < R * H; e += G) {
        dhr[e / H][e % H] = 0.0f;
        dcs[e / H][e % H] = 0.0f;
    }
    __syncthreads();
    for (int t = T - 1; t >= 0; t--) {
        for (int e = j; e < R * D; e += G) {
            const int r = e / D, k = e % D, b = b0 + r;
            xs[r][k] = b < B ? x[((size_t)b * T + t) * D + k] : 0.0f;
        }
        for (int e = j; e < R * H; e += G) {
            const int r = e / H, k = e % H, b = b0 + r;
            if (b >= B) {
                hprev[r][k] = 0.0f;
                dgs[r][k] = dgs[r][H + k] = dgs[r][2 * H + k] = dgs[r][3 * H + k] = 0.0f;
                continue;
            }
            const size_t bt = (size_t)b * T + t;
            hprev[r][k] = t > 0 ? hs[(bt - 1) * H + k] : 0.0f;
            float dh = dhr[r][k];
            if (dh_seq) dh += dh_seq[bt * H + k];
            if (dh_last && t == T - 1) dh += dh_last[(size_t)b * H + k];
            const float* a = acts + bt * G;
            const float ig = a[k], fg = a[H + k], gg = a[2 * H + k], og = a[3 * H + k];
            const float c = cs[bt * H + k];
            const float cp = t > 0 ? cs[(bt - 1) * H + k] : 0.0f;
            const float tc = tanhf(c);
            const float dc = dcs[r][k] + dh * og * (1.0f - tc * tc);
            dcs[r][k] = dc * fg;
            dgs[r][k] = dc * gg * ig * (1.0f - ig);
            dgs[r][H + k] = dc * cp * fg * (1.0f - fg);
            dgs[r][2 * H + k] = dc * ig * (1.0f - gg * gg);
            dgs[r][3 * H + k] = dh * tc * og * (1.0f - og);
        }
        __syncthreads();
#pragma unroll
        for (int r = 0; r < R; r++) {
            const float g = dgs[r][j];
            ab += g;
#pragma unroll
            for (int k = 0; k < H; k++) awh[k] += hprev[r][k] * g;
#pragma unroll
            for (int k = 0; k < D; k++) awi[k] += xs[r][k] * g;
        }
        // Recurrent gradient and dx: a thread owns one column k for R/4 rows, so each
        // weight read serves R/4 products (rows rg, rg + 4, ...).
        for (int e = j; e < 4 * H; e += G) {
            const int k = e % H, rg = e / H;
            float s[R / 4];
#pragma unroll
            for (int i = 0; i < R / 4; i++) s[i] = 0.0f;
            for (int q = 0; q < G; q++) {
                const float w = w_hhT[q * H + k];
#pragma unroll
                for (int i = 0; i < R / 4; i++) s[i] += dgs[rg + 4 * i][q] * w;
            }
#pragma unroll
            for (int i = 0; i < R / 4; i++) dhr[rg + 4 * i][k] = s[i];
        }
        if (dx) {
            for (int e = j; e < 4 * D; e += G) {
                const int k = e % D, rg = e / D;
                float s[R / 4];
#pragma unroll
                for (int i = 0; i < R / 4; i++) s[i] = 0.0f;
                for (int q = 0; q < G; q++) {
                    const float w = w_ihT[q * D + k];
#pragma unroll
                    for (int i = 0; i < R / 4; i++) s[i] += dgs[rg + 4 * i][q] * w;
                }
#pragma unroll
                for (int i = 0; i < R / 4; i++) {
                    const int b = b0 + rg + 4 * i;
                    if (b < B) dx[((size_t)b * T + t) * D + k] = s[i];
                }
            }
        }
        __syncthreads();
    }
    float* p = partial + (size_t)blockIdx.x * (D * G + H * G + G);
#pragma unroll
    for (int k = 0; k < D; k++) p[k * G + j] = awi[k];
#pragma unroll
    for (int k = 0; k < H; k++) p[D * G + k * G + j] = awh[k];
    p[D * G + H * G + j] = ab;
}

// out[i] = sum over blocks of partial[blk][i] (out overwritten).
extern "C" __global__ void sum_partials(const float* __restrict__ partial, int blocks, int n, float* __restrict__ out)
{
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float s = 0.0f;
    for (int b = 0; b < blocks; b++) s += partial[(size_t)b * n + i];
    out[i] = s;
}

// out[a][b] = in[b][a]: in is [rows, cols].
extern "C" __global__ void transpose(const float* __restrict__ in, int rows, int cols, float* __restrict__ out)
{
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= rows * cols) return;
    const int r = i / cols, c = i % cols;
    out[c * rows + r] = in[i];
}

// y[b][o] = bias[o] + sum_k h[b][k] w[k][o]; with a target, dy = 2 (y - target) / (B O)
// and se = (y - target)^2 per output (summed by sum_into, in a fixed order).
extern "C" __global__ void head_fwd(const float* __restrict__ h, const float* __restrict__ w, const float* __restrict__ bias,
                                    int B, int HH, int O, float* __restrict__ y, const float* __restrict__ target,
                                    float* __restrict__ dy, float* __restrict__ se)
{
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= B * O) return;
    const int b = i / O, o = i % O;
    float s = bias[o];
    for (int k = 0; k < HH; k++) s += h[(size_t)b * HH + k] * w[k * O + o];
    y[i] = s;
    if (target) {
        const float d = s - target[i];
        dy[i] = 2.0f * d / ((float)B * (float)O);
        se[i] = d * d;
    }
}

// Sum of v[lo, hi) by one block of 1024 threads, the same order every time.
__device__ float block_sum(const float* __restrict__ v, int lo, int hi, bool square)
{
    __shared__ float red[32];
    float s = 0.0f;
    for (int i = lo + threadIdx.x; i < hi; i += blockDim.x) s += square ? v[i] * v[i] : v[i];
    for (int off = 16; off > 0; off >>= 1) s += __shfl_down_sync(0xffffffff, s, off);
    if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = s;
    __syncthreads();
    s = 0.0f;
    if (threadIdx.x < 32) {
        s = threadIdx.x < (blockDim.x >> 5) ? red[threadIdx.x] : 0.0f;
        for (int off = 16; off > 0; off >>= 1) s += __shfl_down_sync(0xffffffff, s, off);
    }
    return s;  // valid in thread 0
}

// total[0] += sum of v[0, n): one block of 1024 threads.
extern "C" __global__ void sum_into(const float* __restrict__ v, int n, float* __restrict__ total)
{
    const float s = block_sum(v, 0, n, false);
    if (threadIdx.x == 0) total[0] += s;
}

// dh[b][k] = sum_o dy[b][o] w[k][o]
extern "C" __global__ void head_bwd_h(const float* __restrict__ dy, const float* __restrict__ w, int B, int HH, int O, float* __restrict__ dh)
{
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= B * HH) return;
    const int b = i / HH, k = i % HH;
    float s = 0.0f;
    for (int o = 0; o < O; o++) s += dy[(size_t)b * O + o] * w[k * O + o];
    dh[i] = s;
}

// One block per output (k, o) of dW = h^T dy (k < HH) or dbias (k == HH).
extern "C" __global__ void head_bwd_w(const float* __restrict__ h, const float* __restrict__ dy, int B, int HH, int O,
                                     float* __restrict__ dw, float* __restrict__ db)
{
    __shared__ float red[32];
    const int k = blockIdx.x / O, o = blockIdx.x % O;
    float s = 0.0f;
    for (int b = threadIdx.x; b < B; b += blockDim.x)
        s += (k < HH ? h[(size_t)b * HH + k] : 1.0f) * dy[(size_t)b * O + o];
    for (int off = 16; off > 0; off >>= 1) s += __shfl_down_sync(0xffffffff, s, off);
    if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = s;
    __syncthreads();
    if (threadIdx.x == 0) {
        float t = 0.0f;
        for (int w = 0; w < (int)(blockDim.x >> 5); w++) t += red[w];
        if (k < HH) dw[k * O + o] = t; else db[o] = t;
    }
}

// Squared norm of each parameter tensor: segment s = [start[s], start[s+1]), one
// block of 1024 threads a segment (no atomics: the same result every time).
extern "C" __global__ void seg_sqnorm(const float* __restrict__ g, const int* __restrict__ start, float* __restrict__ out)
{
    const int s = blockIdx.x;
    const float v = block_sum(g, start[s], start[s + 1], true);
    if (threadIdx.x == 0) out[s] = v;
}

// Adam (burn's formula) after clipping each tensor's gradient to norm `clip`.
extern "C" __global__ void adam(float* __restrict__ p, const float* __restrict__ g, float* __restrict__ m, float* __restrict__ v,
                                const int* __restrict__ seg, const float* __restrict__ sqnorm, int n, float lr, float b1, float b2,
                                float eps, float clip, int step)
{
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const float coef = fminf(1.0f, clip / (sqrtf(sqnorm[seg[i]]) + 1.17549435e-38f));
    const float gi = g[i] * coef;
    const float mi = b1 * m[i] + (1.0f - b1) * gi;
    const float vi = b2 * v[i] + (1.0f - b2) * gi * gi;
    m[i] = mi;
    v[i] = vi;
    const float bc2 = sqrtf(1.0f - powf(b2, (float)step));
    const float cf = bc2 / (1.0f - powf(b1, (float)step));
    p[i] -= lr * (mi * cf / (sqrtf(vi) + eps * bc2));
}
