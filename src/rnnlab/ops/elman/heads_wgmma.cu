// E1 heads scan on Hopper's warpgroup MMA (wgmma): one CTA a head and a tile of 16 batch rows runs
// all T steps of
//   forward   h_t    = tanh(wx_t + h_{t-1} @ W^T)                 (M = W)
//   backward  dpre_t = (g_t + dpre_{t+1} @ W) * (1 - h_t^2)       (M = W^T)
// with W the head's [HD, HD] block (HD = 64 or 128), bf16 in, fp32 accumulation; the backward's
// weight gradient and dh0 are GEMMs over dpre afterwards (rnnlab/ops/elman/triton.py).
//
// Why not Triton (docs/kernels.md, E1 heads): Triton's loop re-reads W from shared memory every step
// and moves the step's load and store through two layout conversions, each a shared-memory round
// trip with a barrier. Here warpgroup w (one a 64-row block of M: HD / 64 of them, 128 threads
// each) holds its rows of M as wgmma's A fragments in registers for all T (32 registers a thread),
// the state tile [16 x HD] is wgmma's B operand in shared memory (K-major core matrices, as
// wgmma.cu's exchange buffer), and a step is
//   1. HD / 16 wgmma.m64n16k16 a warpgroup;
//   2. the epilogue straight from the accumulators (8 elements a thread): the step's operands (wx,
//      or g and h), copied into shared memory by cp.async DEPTH - 1 steps ahead (a ring of DEPTH:
//      a copy from HBM takes longer than a step), are read in the accumulators' layout; the new state goes to the other of two state tiles and to the
//      output. Every address is a per-thread base fixed before the loop plus a constant: with one
//      warpgroup per SM sub-partition nothing hides a long epilogue's instruction latencies (a
//      first version that computed them each step took 1.6 us a step);
//   3. fence.proxy.async (the state's generic stores, before wgmma reads them) and one barrier.
// Padded batch rows (B not a multiple of 16) have zero operands and stay zero.
// Built for sm_90a only by rnnlab/ops/elman/wgmma.py.
#include <torch/extension.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_bf16.h>

#include "sm90.cuh"

namespace {

using namespace rnnlab_sm90;
using bf16 = __nv_bfloat16;

constexpr int NB = 16;  // batch rows a CTA (wgmma's N)

// element (n, k) of a state tile [NB x HD] in wgmma's K-major layout: core matrix (n / 8, k / 8) of
// 8 x 8 elements (128 bytes, row n % 8 holds k % 8 = 0..7), adjacent in K 128 bytes apart, in N
// HD / 8 core matrices apart
template <int HD>
__device__ __forceinline__ int state_offset(int n, int k) {
  return n / 8 * (HD * 8) + k / 8 * 64 + n % 8 * 8 + k % 8;
}

// e1: forward wx, backward g; e2: backward h (unused forward), all [B, T, H]; w: [H / HD, HD, HD];
// h0: forward's [B, H] or null (zeros; the backward starts from zeros); out: [B, T, H]
template <int HD, bool BWD>
__global__ void __launch_bounds__(2 * HD, 1)
elman_heads_wgmma(const bf16* __restrict__ e1, const bf16* __restrict__ e2, const bf16* __restrict__ w,
                  const bf16* __restrict__ h0, bf16* __restrict__ out, int B, int Tn, int H) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  constexpr int THREADS = 2 * HD, KS = HD / 16, OPS = BWD ? 2 : 1;
  constexpr int DEPTH = BWD ? 4 : 6;  // the operands' ring (static shared memory stays under 48 KB)
  constexpr int OLD = HD + 8;  // an operand row (elements), padded against bank conflicts
  __shared__ __align__(128) bf16 state[2][NB * HD];
  __shared__ __align__(16) bf16 ops[DEPTH][OPS][NB * OLD];
  const int head = blockIdx.x, b0 = blockIdx.y * NB, c0 = head * HD;
  const int lane = threadIdx.x % 32, g = lane / 4, t4 = lane % 4;
  const long sT = static_cast<long>(Tn) * H, dt = BWD ? -H : H;  // a step in time, in elements
  const long t0 = BWD ? Tn - 1 : 0;
  const bf16* wh = w + static_cast<long>(head) * HD * HD;
  // this thread's accumulator rows jt (+ 8) and batch rows nt + 8 i + q (i, q in 0, 1): element e
  // of the accumulator is row jt + 8 (e / 2 % 2), batch row nt + 8 (e / 4) + e % 2
  const int jt = threadIdx.x / 32 * 16 + g, nt = 2 * t4;

  // M's rows jt (and + 8), K columns 16 s + 2 t4 (+ 1, + 8, + 9): A's fragments; M[r][k] is W[r][k]
  // forward, W[k][r] backward (read transposed, once a launch)
  unsigned a[KS][4];
  {
    auto pair = [&](int r, int k) -> unsigned {  // M[r][k], M[r][k + 1]
      if constexpr (BWD) {
        const auto lo = __bfloat16_as_ushort(wh[k * HD + r]), hi = __bfloat16_as_ushort(wh[(k + 1) * HD + r]);
        return static_cast<unsigned>(lo) | static_cast<unsigned>(hi) << 16;
      } else {
        return *reinterpret_cast<const unsigned*>(wh + r * HD + k);
      }
    };
#pragma unroll
    for (int s = 0; s < KS; ++s) {
      const int k = 16 * s + 2 * t4;
      a[s][0] = pair(jt, k);
      a[s][1] = pair(jt + 8, k);
      a[s][2] = pair(jt, k + 8);
      a[s][3] = pair(jt + 8, k + 8);
    }
  }
  // the operands: thread i copies chunk i (16 bytes: batch row i / (HD / 8), columns i % (HD / 8)
  // * 8 ..) of each tensor a step (NB x HD / 8 = THREADS chunks), zeros for rows past B
  const int pn = threadIdx.x / (HD / 8), pk = threadIdx.x % (HD / 8) * 8;
  const bool pok = b0 + pn < B;
  const bf16* src[OPS];
#pragma unroll
  for (int r = 0; r < OPS; ++r) src[r] = (r ? e2 : e1) + (pok ? (b0 + pn) * sT + t0 * H + c0 + pk : 0);
  // step s's operands into ops[s % DEPTH], called for s = 0, 1, 2, ... in order; a group is
  // committed even past the last step, so the waits count alike
  auto prefetch = [&](int s) {
    if (s < Tn) {
#pragma unroll
      for (int r = 0; r < OPS; ++r) {
        cp_async16(smem_u32(&ops[s % DEPTH][r][pn * OLD + pk]), src[r], pok ? 16u : 0u);
        if (pok) src[r] += dt;
      }
    }
    cp_async_commit();
  };
  // the outputs' rows: out + row's offset + time's, for batch rows nt + 8 i + q (index 2 i + q)
  bf16* orow[4];
  bool ook[4];
#pragma unroll
  for (int r = 0; r < 4; ++r) {
    const int n = nt + 8 * (r / 2) + r % 2;
    ook[r] = b0 + n < B;
    orow[r] = out + (ook[r] ? (b0 + n) * sT + t0 * H : 0) + c0 + jt;
  }
  const int obase = nt * OLD + jt;                            // ops' element (nt, jt)
  const int sbase = jt / 8 * 64 + nt * 8 + g;                 // the state's element (nt, jt)

  for (int s = 0; s < DEPTH - 1; ++s) prefetch(s);
#pragma unroll
  for (int r = 0; r < NB * HD / THREADS; ++r) {  // the state before the first step
    const int i = threadIdx.x + r * THREADS, n = i / HD, k = i % HD;
    state[0][state_offset<HD>(n, k)] = !BWD && h0 != nullptr && b0 + n < B ? h0[(b0 + n) * H + c0 + k]
                                                                           : __float2bfloat16(0.f);
  }
  cp_async_wait<DEPTH - 2>();  // step 0's operands
  fence_async_shared();
  __syncthreads();

  float acc[8];
  for (int s = 0; s < Tn; ++s) {
    const int buf = s % DEPTH;
    // 1. this warpgroup's rows of M times the previous state
    const unsigned from = smem_u32(state[s & 1]);
    asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#pragma unroll
    for (int k = 0; k < KS; ++k) wgmma_64x16x16(acc, a[k], smem_desc(from + k * 256, 128, HD * 16), k);
    asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
    prefetch(s + DEPTH - 1);  // into ops[(s - 1) % DEPTH], last read by step s - 1 (before its barrier)
    asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
    // 2. the epilogue, element e: row jt + 8 half, batch row nt + 8 i + q
    const bf16* x1 = &ops[buf][0][obase];
    const bf16* hx = &ops[buf][OPS - 1][obase];
    bf16* next = &state[(s + 1) & 1][sbase];
#pragma unroll
    for (int e = 0; e < 8; ++e) {
      const int half = e / 2 % 2, i = e / 4, q = e % 2, r = 2 * i + q;
      const int o = (8 * i + q) * OLD + 8 * half;
      const float v = acc[e] + __bfloat162float(x1[o]);
      bf16 y;
      if constexpr (BWD) {
        const float hv = __bfloat162float(hx[o]);
        y = __float2bfloat16(v * (1.f - hv * hv));
      } else {
        y = __float2bfloat16(tanh_approx(v));
      }
      next[i * HD * 8 + half * 64 + q * 8] = y;
      if (ook[r]) orow[r][8 * half] = y;
    }
#pragma unroll
    for (int r = 0; r < 4; ++r) orow[r] += ook[r] ? dt : 0;
    // 3. step s + 1's operands (issued DEPTH - 2 steps ago) and the new state, for every thread
    cp_async_wait<DEPTH - 2>();
    fence_async_shared();
    __syncthreads();
  }
#else
  __trap();
#endif
}

template <int HD, bool BWD>
void launch(const bf16* e1, const bf16* e2, const bf16* w, const bf16* h0, bf16* out, int B, int Tn, int H) {
  const dim3 grid(H / HD, (B + NB - 1) / NB);
  elman_heads_wgmma<HD, BWD><<<grid, 2 * HD, 0, c10::cuda::getCurrentCUDAStream()>>>(e1, e2, w, h0, out, B, Tn, H);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <bool BWD>
torch::Tensor run(const torch::Tensor& e1, const c10::optional<torch::Tensor>& e2, const torch::Tensor& w,
                  const c10::optional<torch::Tensor>& h0) {
  TORCH_CHECK(e1.is_cuda() && e1.dim() == 3 && e1.is_contiguous() && e1.scalar_type() == torch::kBFloat16,
              "wgmma Elman heads scan: e1 must be a contiguous bf16 CUDA [B, T, H] tensor");
  const int64_t B = e1.size(0), Tn = e1.size(1), H = e1.size(2);
  TORCH_CHECK(w.dim() == 3 && (w.size(1) == 64 || w.size(1) == 128) && w.size(2) == w.size(1) &&
                  w.size(0) * w.size(1) == H && w.scalar_type() == e1.scalar_type() && w.is_contiguous() &&
                  w.device() == e1.device(),
              "wgmma Elman heads scan: W must be a contiguous [H / hd, hd, hd] tensor, hd 64 or 128, e1's dtype");
  TORCH_CHECK(!BWD || (e2.has_value() && e2->sizes() == e1.sizes() && e2->scalar_type() == e1.scalar_type() &&
                       e2->is_contiguous() && e2->device() == e1.device()),
              "wgmma Elman heads scan: the backward's h must be contiguous, e1's shape, dtype and device");
  TORCH_CHECK(BWD || !h0.has_value() || (h0->sizes() == torch::IntArrayRef({B, H}) && h0->is_contiguous() &&
                                         h0->scalar_type() == e1.scalar_type() && h0->device() == e1.device()),
              "wgmma Elman heads scan: h0 must be a contiguous [B, H] tensor, e1's dtype and device");
  const c10::cuda::CUDAGuard guard(e1.device());
  auto out = torch::empty_like(e1);
  if (B == 0 || Tn == 0) return out;
  const bf16* pe1 = reinterpret_cast<const bf16*>(e1.data_ptr());
  const bf16* pe2 = BWD ? reinterpret_cast<const bf16*>(e2->data_ptr()) : nullptr;
  const bf16* pw = reinterpret_cast<const bf16*>(w.data_ptr());
  const bf16* ph0 = h0.has_value() ? reinterpret_cast<const bf16*>(h0->data_ptr()) : nullptr;
  bf16* pout = reinterpret_cast<bf16*>(out.data_ptr());
  const int b = static_cast<int>(B), t = static_cast<int>(Tn), h = static_cast<int>(H);
  if (w.size(1) == 64)
    launch<64, BWD>(pe1, pe2, pw, ph0, pout, b, t, h);
  else
    launch<128, BWD>(pe1, pe2, pw, ph0, pout, b, t, h);
  return out;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, mod) {
  mod.def("forward", &run<false>, "h = forward(wx, None, W, h0 or None): all states, [B, T, H]");
  mod.def("backward", &run<true>, "dpre = backward(g, h, W, None): dL/d(wx), [B, T, H]");
}
