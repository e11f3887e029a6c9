// Dense E1 scan on Hopper's warpgroup MMA (wgmma), the "2-D split" of docs/kernels.md (dense E1):
// ONE cooperative launch, in thread-block clusters of 4, runs all T steps of
//   forward   h_t    = tanh(wx_t + h_{t-1} @ W^T)                 (M = W)
//   backward  dpre_t = (g_t + dpre_{t+1} @ W) * (1 - h_t^2)       (M = W^T)
// for B <= 32 batch rows and H <= 1792 (H a multiple of 8), bf16 in, fp32 accumulation.
//
// The width is padded to HP = 64 KS (KS in 4, 8, 16, 28: the smallest that holds H). Cluster c
// owns the 64 output columns [64c, 64c + 64); CTA k of it (one warpgroup, 128 threads) holds M's
// rows for those columns over the K range [KC k, KC k + KC), KC = 16 KS, as wgmma's A fragments in
// registers for all T (4 KS a thread), so the grid is 4 KS CTAs (112 at E1 d26's H = 1760).
// Per step, CTA k:
//   1. waits for the KS CTAs that produce its K slice (per-CTA step flags, release / acquire),
//      then copies the slice of the previous state (32 rows x KC, 2 KS KB) with ONE bulk copy
//      (the TMA unit) into shared memory, counted on an mbarrier. The producers wrote it in
//      wgmma's core-matrix layout into an exchange buffer, a ring of 3 slots ([3][4 slices]):
//      when a CTA writes slot s + 1 (mod 3) at step s, its step-s partial sums have arrived, so
//      the four CTAs of its cluster passed their step-s flag waits, which together cover every
//      CTA: every CTA has finished step s - 1, and with it its copies of slots s - 1 and s - 2;
//   2. issues KS wgmma.m64n32k16: the 64 x 32 partial product over its K range, fp32;
//   3. sends the partial sums to their owners: warp w's 16 rows are the 16 columns CTA w of the
//      cluster owns, stored by st.async into CTA w's receive buffer (two by step parity), counted
//      on its mbarrier;
//   4. sums the four partials of its own 16 columns and runs the epilogue (wx, or g and h, were
//      prefetched a step ahead by cp.async into shared memory): h (or dpre) to the exchange
//      buffer's next slot, raises its flag, then stores the output and prefetches the next step's
//      operands (after the flag: its release would wait for them).
// Padded rows and columns compute exact zeros (their operands are zero-filled, slot 0 is zeroed),
// so the padding adds nothing to a product while the states are finite (an inf in a real row
// becomes NaN through a padded column's 0 * inf, as it would make the reference's state NaN too). The probe `benchmarks/dense_wgmma_probe.cu`
// measured each part of this step on an H200 (docs/kernels.md).
// Spinning on flags needs every CTA resident: the cooperative launch guarantees it or refuses.
// Built for sm_90a only (wgmma, clusters, st.async, bulk copies) by rnnlab/ops/elman/wgmma.py.
#include <torch/extension.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_bf16.h>

#include "sm90.cuh"

namespace {

using namespace rnnlab_sm90;
using bf16 = __nv_bfloat16;

constexpr int CL = 4;          // CTAs a cluster: the K split
constexpr int COLS = 64;       // output columns a cluster (wgmma's M)
constexpr int NB = 32;         // batch rows (wgmma's N): B <= 32
constexpr int THREADS = 128;   // one warpgroup
constexpr int OWN = COLS / CL; // output columns a CTA owns after the reduction
constexpr int RLD = NB + 4;    // a receive buffer's row (floats), padded against bank conflicts
constexpr int MAX_KS = 28;     // H <= 64 * 28 = 1792

__host__ __device__ constexpr int slice_elems(int ks) { return NB * 16 * ks; }  // 32 rows x KC

// --- the kernel --------------------------------------------------------------------------------

// flags[p] = steps CTA p has completed (zeroed before the launch). The calling warp waits until
// CTAs [p0, p0 + n) (n <= 32) have completed `steps`, a flag a lane; the loop's condition is the
// warp's vote, so the warp stays converged; __syncwarp orders the acquiring lanes' view for it.
__device__ __forceinline__ void wait_producers(const unsigned* flags, int p0, int n, unsigned steps, int lane) {
  bool done = lane >= n;
  while (!__all_sync(0xffffffffu, done)) done = done || ld_acquire(flags + p0 + lane) >= steps;
  __syncwarp();
}

// Where the exchange buffer keeps element (b, j) of a step's state: slice j / KC (the K range CTA
// j / KC of every cluster reads), then wgmma's core-matrix layout: core matrix (b / 8, k / 8) of
// 8 x 8 elements (128 bytes, row b % 8 holds k % 8 = 0..7), adjacent in K 128 bytes apart, in N
// (the next 8 rows) KC / 8 core matrices apart.
template <int KS>
__device__ __forceinline__ int exchange_offset(int b, int j) {
  constexpr int KC = 16 * KS;
  const int k = j % KC;
  return j / KC * slice_elems(KS) + b / 8 * (KC * 8) + k / 8 * 64 + b % 8 * 8 + k % 8;
}

// e1: forward wx, backward g; e2: backward h (unused forward), all [B, T, H]; w: W [H, H] (M is W
// forward, W^T backward: the backward reads it transposed); out: [B, T, H]; exch: [3][4][32 x KC],
// slot 0 the state before the first step (the host writes it); flags: [4 KS] zeros.
template <int KS, bool BWD>
__global__ void __launch_bounds__(THREADS, 1)
elman_wgmma(const bf16* __restrict__ e1, const bf16* __restrict__ e2, const bf16* __restrict__ w,
            bf16* __restrict__ out, bf16* exch, unsigned* flags, int B, int Tn, int H) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  constexpr int KC = 16 * KS, SLICE = slice_elems(KS), OPS = BWD ? 2 : 1;
  extern __shared__ __align__(128) bf16 bs[];            // [SLICE]: the staged K slice of the state
  __shared__ __align__(16) float recv[2][CL][OWN * RLD];  // by step parity: the 4 partials, [column][row]
  __shared__ __align__(16) bf16 ops[2][OPS][NB * OWN];    // by step parity: wx (g, h), [row][column]
  __shared__ __align__(8) unsigned long long bars[3];     // the receive buffers' (0, 1), the staging's (2)
  const int rank = static_cast<int>(cluster_ctarank());
  const int col0 = blockIdx.x / CL * COLS, k0 = rank * KC, col_own = col0 + rank * OWN;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t4 = lane % 4;
  const unsigned bs_addr = smem_u32(bs), bar0 = smem_u32(&bars[0]);
  const long sT = static_cast<long>(Tn) * H;

  // M's rows col0 + 16 warp + g (and g + 8), K columns k0 + 16 s + 2 t4 (+ 1, + 8, + 9): A's
  // fragments of K step s; zero outside H. M[r][k] is W[r][k] forward, W[k][r] backward (two
  // loads, once a launch, instead of a transposed copy of W a backward)
  unsigned a[KS][4];
  {
    const int r0 = col0 + warp * 16 + g, r1 = r0 + 8;
    auto pair = [&](int r, int k) -> unsigned {  // M[r][k], M[r][k + 1] (k even, H a multiple of 8)
      if (r >= H || k >= H) return 0u;
      if constexpr (BWD) {
        const auto lo = __bfloat16_as_ushort(w[static_cast<long>(k) * H + r]);
        const auto hi = __bfloat16_as_ushort(w[static_cast<long>(k + 1) * H + r]);
        return static_cast<unsigned>(lo) | static_cast<unsigned>(hi) << 16;
      } else {
        return *reinterpret_cast<const unsigned*>(w + static_cast<long>(r) * H + k);
      }
    };
#pragma unroll
    for (int s = 0; s < KS; ++s) {
      const int k = k0 + 16 * s + 2 * t4;
      a[s][0] = pair(r0, k);
      a[s][1] = pair(r1, k);
      a[s][2] = pair(r0, k + 8);
      a[s][3] = pair(r1, k + 8);
    }
  }
  // the epilogue operands of step s (time t) into ops[s & 1]: 32 rows x 16 columns a tensor, two
  // 16-byte copies a row (H is a multiple of 8, so a copy is wholly inside or outside H)
  auto prefetch = [&](int s) {
    const int t = BWD ? Tn - 1 - s : s;
    if (threadIdx.x < NB * 2 * OPS) {
      const int which = threadIdx.x / (NB * 2), n = threadIdx.x / 2 % NB, half = threadIdx.x % 2;
      const int j = col_own + half * 8;
      const bool ok = n < B && j < H;
      const bf16* src = which ? e2 : e1;
      cp_async16(smem_u32(&ops[s & 1][which][n * OWN + half * 8]),
                 ok ? src + n * sT + static_cast<long>(t) * H + j : src, ok ? 16u : 0u);
    }
    cp_async_commit();
  };
  prefetch(0);
  if (threadIdx.x == 0) {
    for (int i = 0; i < 3; ++i) mbar_init(bar0 + 8 * i);
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
  }
  cluster_sync();  // every CTA's mbarriers initialised before a peer's st.async counts on them

  // the epilogue's elements: column c of the CTA's 16, batch rows n0 .. n0 + 3
  const int c = threadIdx.x % OWN, n0 = threadIdx.x / OWN * 4, j = col_own + c;
  const unsigned recv_addr = smem_u32(&recv[0][rank][0]);
  float acc[16];
  for (int s = 0; s < Tn; ++s) {
    const int buf = s & 1, t = BWD ? Tn - 1 - s : s;
    // 1. the previous state's K slice: its producers (CTAs KS rank ..) have written slot s % 3
    if (warp == 0) {
      if (s > 0) wait_producers(flags, rank * KS, KS, static_cast<unsigned>(s), lane);
      asm volatile("fence.proxy.async.global;\n" ::: "memory");  // their stores, before the copy reads
      if (lane == 0) {
        mbar_expect(bar0 + 16, SLICE * 2);
        bulk_copy(bs_addr, exch + (static_cast<long>(s % 3) * CL + rank) * SLICE, SLICE * 2, bar0 + 16);
        mbar_expect(bar0 + 8 * buf, CL * OWN * NB * 4);  // this step's partial sums: 4 x 16 x 32 floats
      }
    }
    mbar_wait(bar0 + 16, s & 1);
    // 2. the partial product over this CTA's K range
    asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#pragma unroll
    for (int k = 0; k < KS; ++k) wgmma_64x32x16(acc, a[k], smem_desc(bs_addr + k * 256, 128, KC * 16), k);
    asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
    asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
    // 3. warp w's rows (the columns CTA w owns) into CTA w's receive buffer, slot `rank`:
    //    acc[4i .. 4i + 3] are rows g, g, g + 8, g + 8 and batch columns 8i + 2 t4, + 1
    {
      const unsigned dst = peer_address(recv_addr + buf * CL * OWN * RLD * 4, warp);
      const unsigned bar = peer_address(bar0 + 8 * buf, warp);
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        st_async2(dst + 4 * (g * RLD + 8 * i + 2 * t4), acc[4 * i], acc[4 * i + 1], bar);
        st_async2(dst + 4 * ((g + 8) * RLD + 8 * i + 2 * t4), acc[4 * i + 2], acc[4 * i + 3], bar);
      }
    }
    mbar_wait(bar0 + 8 * buf, (s >> 1) & 1);
    // 4. the sum of the four partials, the epilogue, the outputs, the flag
    float4 v = *reinterpret_cast<const float4*>(&recv[buf][0][c * RLD + n0]);
#pragma unroll
    for (int r = 1; r < CL; ++r) {
      const float4 u = *reinterpret_cast<const float4*>(&recv[buf][r][c * RLD + n0]);
      v.x += u.x, v.y += u.y, v.z += u.z, v.w += u.w;
    }
    cp_async_wait_all();  // this step's operands (issued a step ago)
    __syncthreads();      // every thread's copies; every thread done with the other buffer's operands
    const float p[4] = {v.x, v.y, v.z, v.w};
    bf16 y[4];
    bf16* next = exch + static_cast<long>((s + 1) % 3) * CL * SLICE;
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      const int n = n0 + q;
      const float x1 = __bfloat162float(ops[buf][0][n * OWN + c]);
      if constexpr (BWD) {
        const float hv = __bfloat162float(ops[buf][OPS - 1][n * OWN + c]);
        y[q] = __float2bfloat16((p[q] + x1) * (1.f - hv * hv));
      } else {
        y[q] = __float2bfloat16(tanh_approx(p[q] + x1));
      }
      next[exchange_offset<KS>(n, j)] = y[q];
    }
    __syncthreads();  // every thread's stores into the exchange buffer, before thread 0's release
    if (threadIdx.x == 0) st_release(flags + blockIdx.x, static_cast<unsigned>(s + 1));
    // after the release, which waits for the thread's earlier stores and loads: the outputs (read
    // only after the kernel) and the next step's operands (loads from memory) would hold it back
#pragma unroll
    for (int q = 0; q < 4; ++q)
      if (n0 + q < B && j < H) out[(n0 + q) * sT + static_cast<long>(t) * H + j] = y[q];
    if (s + 1 < Tn) prefetch(s + 1);
  }
  cluster_sync();  // no CTA leaves while a peer may still store into its shared memory
#else
  __trap();
#endif
}

// the kernel for width H: the smallest KS of 4, 8, 16, 28 with 64 KS >= H (0: H too wide)
int pick_ks(int64_t H) {
  for (int ks : {4, 8, 16, MAX_KS})
    if (64 * ks >= H) return ks;
  return 0;
}

template <int KS>
size_t dynamic_smem() { return static_cast<size_t>(slice_elems(KS)) * sizeof(bf16); }

cudaLaunchConfig_t launch_config(int ks, size_t smem, cudaLaunchAttribute* attrs) {
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(CL * ks);
  cfg.blockDim = dim3(THREADS);
  cfg.dynamicSmemBytes = smem;
  attrs[0].id = cudaLaunchAttributeCooperative;
  attrs[0].val.cooperative = 1;
  attrs[1].id = cudaLaunchAttributeClusterDimension;
  attrs[1].val.clusterDim.x = CL;
  attrs[1].val.clusterDim.y = 1;
  attrs[1].val.clusterDim.z = 1;
  cfg.attrs = attrs;
  cfg.numAttrs = 2;
  return cfg;
}

// Whether the kernel for KS can run on the current device: every cluster of 4 resident at once
// (the cooperative launch needs it), forward and backward.
template <int KS>
bool fits_ks() {
  for (auto kernel : {elman_wgmma<KS, false>, elman_wgmma<KS, true>}) {
    const size_t smem = dynamic_smem<KS>();
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
    cudaLaunchAttribute attrs[2];
    cudaLaunchConfig_t cfg = launch_config(KS, smem, attrs);
    cfg.attrs = attrs + 1;  // the occupancy query takes the cluster shape only
    cfg.numAttrs = 1;
    int clusters = 0;
    if (cudaOccupancyMaxActiveClusters(&clusters, kernel, &cfg) != cudaSuccess) {
      (void)cudaGetLastError();
      return false;
    }
    if (clusters < KS) return false;
  }
  return true;
}

bool fits(int64_t H) {
  if (H <= 0 || H % 8 != 0) return false;
  switch (pick_ks(H)) {
    case 4: return fits_ks<4>();
    case 8: return fits_ks<8>();
    case 16: return fits_ks<16>();
    case MAX_KS: return fits_ks<MAX_KS>();
    default: return false;
  }
}

template <int KS, bool BWD>
void launch(const bf16* e1, const bf16* e2, const bf16* w, bf16* out, bf16* exch, unsigned* flags, int B, int Tn,
            int H) {
  auto kernel = elman_wgmma<KS, BWD>;
  const size_t smem = dynamic_smem<KS>();
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
  cudaLaunchAttribute attrs[2];
  cudaLaunchConfig_t cfg = launch_config(KS, smem, attrs);
  cfg.stream = c10::cuda::getCurrentCUDAStream();
  void* args[] = {&e1, &e2, &w, &out, &exch, &flags, &B, &Tn, &H};
  C10_CUDA_CHECK(cudaLaunchKernelExC(&cfg, reinterpret_cast<const void*>(kernel), args));
}

// the state before the first step ([B, H], or zeros when absent: one fill) in the exchange
// buffer's slot 0
void write_slot0(torch::Tensor& exch, const c10::optional<torch::Tensor>& x0, int B, int H, int ks) {
  const int64_t kc = 16 * ks, hp = CL * kc;
  if (!x0.has_value()) {
    exch.narrow(0, 0, NB * hp).zero_();
    return;
  }
  auto s0 = torch::zeros({NB, hp}, exch.options());
  s0.narrow(0, 0, B).narrow(1, 0, H).copy_(*x0);
  // [b / 8, b % 8, slice, k / 8, k % 8] -> [slice, b / 8, k / 8, b % 8, k % 8]
  auto tiled = s0.view({NB / 8, 8, CL, kc / 8, 8}).permute({2, 0, 3, 1, 4}).reshape({-1});
  exch.narrow(0, 0, NB * hp).copy_(tiled);
}

template <bool BWD>
torch::Tensor run(const torch::Tensor& e1, const c10::optional<torch::Tensor>& e2, const torch::Tensor& w,
                  const c10::optional<torch::Tensor>& x0) {
  TORCH_CHECK(e1.is_cuda() && e1.dim() == 3 && e1.is_contiguous() && e1.scalar_type() == torch::kBFloat16,
              "wgmma Elman scan: e1 must be a contiguous bf16 CUDA [B, T, H] tensor");
  const int64_t B = e1.size(0), Tn = e1.size(1), H = e1.size(2);
  TORCH_CHECK(B <= NB, "wgmma Elman scan: B must be at most ", NB, ", got ", B);
  TORCH_CHECK(H % 8 == 0 && pick_ks(H) > 0, "wgmma Elman scan: H must be a multiple of 8, at most ", 64 * MAX_KS);
  TORCH_CHECK(w.sizes() == torch::IntArrayRef({H, H}) && w.scalar_type() == e1.scalar_type() && w.is_contiguous() &&
                  w.device() == e1.device(),
              "wgmma Elman scan: W must be a contiguous [H, H] tensor, e1's dtype and device");
  TORCH_CHECK(!BWD || (e2.has_value() && e2->sizes() == e1.sizes() && e2->scalar_type() == e1.scalar_type() &&
                       e2->is_contiguous() && e2->device() == e1.device()),
              "wgmma Elman scan: the backward's h must be contiguous, e1's shape, dtype and device");
  TORCH_CHECK(!x0.has_value() || (x0->sizes() == torch::IntArrayRef({B, H}) &&
                                  x0->scalar_type() == e1.scalar_type() && x0->device() == e1.device()),
              "wgmma Elman scan: h0 must be [B, H], e1's dtype and device");
  for (const auto* x : {&e1, &w})  // 16-byte copies and 4-byte fragment loads
    TORCH_CHECK(reinterpret_cast<uintptr_t>(x->data_ptr()) % 16 == 0, "wgmma Elman scan: operands 16-byte aligned");
  TORCH_CHECK(!BWD || reinterpret_cast<uintptr_t>(e2->data_ptr()) % 16 == 0,
              "wgmma Elman scan: operands 16-byte aligned");
  const c10::cuda::CUDAGuard guard(e1.device());
  auto out = torch::empty_like(e1);
  if (B == 0 || Tn == 0) return out;
  const int ks = pick_ks(H);
  auto exch = torch::empty({3 * CL * slice_elems(ks)}, e1.options());
  write_slot0(exch, x0, static_cast<int>(B), static_cast<int>(H), ks);
  auto flags = torch::zeros({CL * ks}, e1.options().dtype(torch::kInt32));
  const bf16* pe1 = reinterpret_cast<const bf16*>(e1.data_ptr());
  const bf16* pe2 = BWD ? reinterpret_cast<const bf16*>(e2->data_ptr()) : nullptr;
  const bf16* pw = reinterpret_cast<const bf16*>(w.data_ptr());
  bf16* pout = reinterpret_cast<bf16*>(out.data_ptr());
  bf16* pex = reinterpret_cast<bf16*>(exch.data_ptr());
  unsigned* pf = reinterpret_cast<unsigned*>(flags.data_ptr());
  const int b = static_cast<int>(B), t = static_cast<int>(Tn), h = static_cast<int>(H);
  switch (ks) {
    case 4: launch<4, BWD>(pe1, pe2, pw, pout, pex, pf, b, t, h); break;
    case 8: launch<8, BWD>(pe1, pe2, pw, pout, pex, pf, b, t, h); break;
    case 16: launch<16, BWD>(pe1, pe2, pw, pout, pex, pf, b, t, h); break;
    default: launch<MAX_KS, BWD>(pe1, pe2, pw, pout, pex, pf, b, t, h);
  }
  return out;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, mod) {
  mod.def("forward", &run<false>, "h = forward(wx, None, W, h0 or None): all states, [B, T, H]");
  mod.def("backward", &run<true>, "dpre = backward(g, h, W, None): dL/d(wx), [B, T, H]");
  mod.def("fits", &fits, "whether the kernel for width H can run on the current device (all clusters resident)");
}
