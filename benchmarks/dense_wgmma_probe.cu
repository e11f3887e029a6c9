// A probe of the "2-D split" wgmma design for dense E1's recurrent product (docs/kernels.md, dense
// E1): not the package's kernel, its step without the handshake between clusters, timed by
// `bench_kernels.py --sections dense-wgmma` beside the package's persistent kernel.
//
// H = 1792 (dense d26's 1760 padded to the tiles), B = 32. A cluster of CL = 4 CTAs owns 64
// output columns; CTA k of it holds W's rows for those columns over the K range [448k, 448k + 448)
// as wgmma's A fragments in registers (112 a thread) and that K range of the state, 32 rows, in
// shared memory (28 KB, 8 x 8 core matrices, no swizzle). Per step, one warpgroup issues 28
// `wgmma.m64n32k16` (the 64 x 32 partial product over its K range, fp32), then the partial sums
// meet over distributed shared memory: warp w's 16 rows are the 16 columns CTA w owns, so each
// warp stores its 16 x 32 partial into CTA w's receive buffer (double-buffered), and each CTA
// sums its four slots and runs the epilogue, h = tanh(wx + sum), for its 16 columns. What this
// probe leaves out is the grid's handshake (flags between clusters, before the staging), which the
// package's kernel measures (`--sections dense-floor`).
//
// Parts, a bit each (`parts`): kMma the MMAs, kReduce the cluster's reduction, kEpilogue tanh of
// the sum plus wx and h's stores, kAsync the reduction's stores as st.async into the owner's shared
// memory, counted on its mbarrier (one per receive buffer), instead of plain stores and a cluster
// barrier a step, kStage the staging of the state's slice (from global memory, L2 in practice,
// each step, as the kernel must; without it the slice loaded once stands for every step). The
// epilogue's wx is prefetched a step ahead into shared memory (cp.async). kBulk (with kStage):
// the slice staged by one bulk copy (the TMA unit) from a copy of the state already in the
// core-matrix layout, slice by slice (`St`: what producers would write), instead of 16-byte
// cp.async copies from its rows. kVec4 (with kAsync): the partial sums sent as st.async of four
// floats (pairs of lanes swap halves first) instead of two, half the remote stores. kBulkReduce
// (instead of kAsync): each warp writes its partial sums into its own shared memory and one lane
// sends them with one bulk copy (2,304 bytes, padding included) to the owner's, counted on the
// owner's mbarrier. Without kMma the partial sums are constants.
// Built for sm_90a only (wgmma, clusters, st.async) by torch's extension loader.
#include <torch/extension.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cooperative_groups.h>
#include <cuda_bf16.h>

#include "sm90.cuh"  // the package's PTX wrappers (src/rnnlab/ops/elman), shared with its wgmma kernel

namespace cg = cooperative_groups;

namespace {

using namespace rnnlab_sm90;

constexpr int CL = 4;             // CTAs a cluster: the K split
constexpr int COLS = 64;          // output columns a cluster (wgmma's M)
constexpr int KC = 448;           // K columns a CTA
constexpr int KS = KC / 16;       // wgmma's K steps a CTA
constexpr int NB = 32;            // batch rows (wgmma's N)
constexpr int HP = CL * KC;       // the width
constexpr int THREADS = 128;      // one warpgroup
constexpr int OWN = COLS / CL;    // output columns a CTA owns after the reduction
constexpr int RLD = NB + 4;       // a receive buffer's row (floats), padded against bank conflicts
constexpr int CORE = 64;          // elements of an 8 x 8 core matrix (128 bytes)

enum Part : int { kMma = 1, kReduce = 2, kEpilogue = 4, kAsync = 8, kStage = 16, kBulk = 32, kVec4 = 64,
                  kBulkReduce = 128 };

__global__ void __cluster_dims__(CL, 1, 1) __launch_bounds__(THREADS, 1)
    probe_kernel(const __nv_bfloat16* __restrict__ W, const __nv_bfloat16* __restrict__ S,
                 const __nv_bfloat16* __restrict__ St, const __nv_bfloat16* __restrict__ wx,
                 __nv_bfloat16* __restrict__ h, float* __restrict__ sink,
                 int steps, int parts, unsigned lbo, unsigned sbo) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  extern __shared__ __align__(128) __nv_bfloat16 bs[];  // NB x KC: dynamic, as the static part is near 48 KB
  __shared__ __align__(16) float recv[2][CL][OWN * RLD];
  // kAsync: a receive buffer's bytes have landed (0, 1); kBulk: the staged slice has (2)
  __shared__ __align__(8) unsigned long long bars[3];
  __shared__ __align__(16) __nv_bfloat16 wxs[2][NB * OWN];  // wx of this step and the next, the CTA's columns
  // kBulkReduce: each warp's partial sums as sent, by step parity (the copy of step s has been
  // read when the owner's step s + 1 arrives here, before this CTA's step s + 2 rewrites its slot)
  __shared__ __align__(16) float sent[2][4][OWN * RLD];
  cg::cluster_group cluster = cg::this_cluster();
  const int rank = static_cast<int>(cluster.block_rank());
  const int col0 = (blockIdx.x / CL) * COLS, k0 = rank * KC;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const unsigned bs_addr = smem_u32(bs);
  // the state's K range: element (b, k) in core matrix (b / 8, k / 8), row b % 8 of it; core
  // matrices adjacent in K are 128 bytes apart, in N KC / 8 * 128. Copy i (16 bytes) is row
  // b % 8 = i % 8 of core matrix i / 8, so a warp fills 512 contiguous bytes (no bank conflicts)
  // from 64 contiguous bytes of each of 8 rows
  auto stage = [&] {
    for (int i = threadIdx.x; i < NB * KC / 8; i += THREADS) {
      const int b = i / (8 * KC / 8) * 8 + i % 8, c = i / 8 % (KC / 8);
      cp_async16(bs_addr + i * 16, S + static_cast<size_t>(b) * HP + k0 + c * 8, 16);
    }
    cp_async_commit();
  };
  // wx's 32 rows x 16 columns of `step` into wxs[step & 1]: 16 bytes by each of 64 threads
  const int col_own = col0 + rank * OWN;
  auto prefetch_wx = [&](int step) {
    if (threadIdx.x < NB * 2) {
      const int n = threadIdx.x / 2, half = threadIdx.x % 2;
      cp_async16(smem_u32(&wxs[step & 1][n * OWN + half * 8]),
                 wx + (static_cast<size_t>(step) * NB + n) * HP + col_own + half * 8, 16);
    }
    cp_async_commit();
  };
  stage();
  if (parts & kEpilogue) prefetch_wx(0);
  cp_async_wait_all();
  // A fragments of W's rows col0 + 16 warp + [0, 16): as mma.m16n8k16's A, per K step
  unsigned a[KS][4];
  const __nv_bfloat16* wr = W + static_cast<size_t>(col0 + warp * 16 + g) * HP + k0 + 2 * t;
#pragma unroll
  for (int s = 0; s < KS; ++s) {
    a[s][0] = *reinterpret_cast<const unsigned*>(wr + 16 * s);
    a[s][1] = *reinterpret_cast<const unsigned*>(wr + 8 * HP + 16 * s);
    a[s][2] = *reinterpret_cast<const unsigned*>(wr + 16 * s + 8);
    a[s][3] = *reinterpret_cast<const unsigned*>(wr + 8 * HP + 16 * s + 8);
  }
  const unsigned bar0 = smem_u32(&bars[0]);
  if (threadIdx.x == 0) {
    for (int i = 0; i < 3; ++i) mbar_init(bar0 + 8 * i);
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
  }
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");  // bs's copies, before wgmma reads them
  cluster.sync();  // every CTA's buffers and mbarriers ready before a peer stores into them
  // the epilogue's outputs: column c of the CTA's 16, batch rows n0 .. n0 + 3
  const int c = threadIdx.x % OWN, n0 = threadIdx.x / OWN * 4, j = col_own + c;
  // where warp w's partial sums go: CTA w's slot `rank`, its row g (and g + 8), columns 2t, 2t + 1
  float acc[16], keep = 0.f;
  for (int step = 0; step < steps; ++step) {
    const int buf = step & 1;
    if ((parts & kStage) && (parts & kBulk)) {  // the last step's MMAs are done with the slice
      if (threadIdx.x == 0) {
        mbar_expect(bar0 + 16, NB * KC * 2);
        bulk_copy(bs_addr, St + static_cast<size_t>(rank) * NB * KC, NB * KC * 2, bar0 + 16);
      }
      mbar_wait(bar0 + 16, step & 1);
    } else if (parts & kStage) {  // the last step's MMAs are done with the slice (their wait): rewrite it
      stage();
      cp_async_wait_all();  // this thread's copies (and this step's wx, long landed)
      asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
      __syncthreads();
    }
    if ((parts & (kAsync | kBulkReduce)) && threadIdx.x == 0)  // this step's bytes: four slots of 16 rows
      mbar_expect(bar0 + 8 * buf, CL * OWN * (parts & kBulkReduce ? RLD : NB) * 4);
    if (parts & kMma) {
      asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#pragma unroll
      for (int s = 0; s < KS; ++s) wgmma_64x32x16(acc, a[s], smem_desc(bs_addr + s * 2 * CORE * 2, lbo, sbo), s);
      asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
      asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
    } else {
#pragma unroll
      for (int i = 0; i < 16; ++i) acc[i] = static_cast<float>(step + i);
    }
    if (!(parts & kReduce)) {
      keep += acc[0] + acc[15];
      continue;
    }
    float* slot = &recv[buf][rank][0];
    if (parts & kBulkReduce) {
      float* mine = sent[buf][warp];
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        *reinterpret_cast<float2*>(mine + g * RLD + 8 * i + 2 * t) = make_float2(acc[4 * i], acc[4 * i + 1]);
        *reinterpret_cast<float2*>(mine + (g + 8) * RLD + 8 * i + 2 * t) = make_float2(acc[4 * i + 2], acc[4 * i + 3]);
      }
      asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");  // the stores, before the copy reads them
      __syncwarp();
      if (lane == 0) {
        bulk_copy_to_peer(peer_address(smem_u32(slot), warp), smem_u32(mine), OWN * RLD * 4,
                          peer_address(smem_u32(&bars[buf]), warp));
      }
      mbar_wait(bar0 + 8 * buf, (step >> 1) & 1);
    } else if (parts & kAsync) {
      const unsigned dst = peer_address(smem_u32(slot), warp), bar = peer_address(smem_u32(&bars[buf]), warp);
      if (parts & kVec4) {  // lane pairs (t, t ^ 1) swap halves: even t sends row g, odd t row g + 8, 4 columns
        const bool odd = t & 1;
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const float r0 = __shfl_xor_sync(0xffffffffu, odd ? acc[4 * i] : acc[4 * i + 2], 1);
          const float r1 = __shfl_xor_sync(0xffffffffu, odd ? acc[4 * i + 1] : acc[4 * i + 3], 1);
          if (odd)
            st_async4(dst + 4 * ((g + 8) * RLD + 8 * i + 2 * t - 2), r0, r1, acc[4 * i + 2], acc[4 * i + 3], bar);
          else
            st_async4(dst + 4 * (g * RLD + 8 * i + 2 * t), acc[4 * i], acc[4 * i + 1], r0, r1, bar);
        }
      } else {
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          st_async2(dst + 4 * (g * RLD + 8 * i + 2 * t), acc[4 * i], acc[4 * i + 1], bar);
          st_async2(dst + 4 * ((g + 8) * RLD + 8 * i + 2 * t), acc[4 * i + 2], acc[4 * i + 3], bar);
        }
      }
      mbar_wait(bar0 + 8 * buf, (step >> 1) & 1);
    } else {
      float* dst = cluster.map_shared_rank(slot, warp);
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        *reinterpret_cast<float2*>(dst + g * RLD + 8 * i + 2 * t) = make_float2(acc[4 * i], acc[4 * i + 1]);
        *reinterpret_cast<float2*>(dst + (g + 8) * RLD + 8 * i + 2 * t) = make_float2(acc[4 * i + 2], acc[4 * i + 3]);
      }
      cluster.sync();
    }
    float4 v = *reinterpret_cast<const float4*>(&recv[buf][0][c * RLD + n0]);
#pragma unroll
    for (int r = 1; r < CL; ++r) {
      const float4 u = *reinterpret_cast<const float4*>(&recv[buf][r][c * RLD + n0]);
      v.x += u.x, v.y += u.y, v.z += u.z, v.w += u.w;
    }
    if (!(parts & kEpilogue)) {
      keep += v.x + v.w;
      continue;
    }
    cp_async_wait_all();  // this step's wx (its copies issued a step ago)
    __syncthreads();      // every thread's copies; and every thread done with the other buffer's wx
    if (step + 1 < steps) prefetch_wx(step + 1);
    const float p[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (int q = 0; q < 4; ++q)
      h[(static_cast<size_t>(step) * NB + n0 + q) * HP + j] =
          __float2bfloat16(tanhf(p[q] + __bfloat162float(wxs[buf][(n0 + q) * OWN + c])));
  }
  if (keep == -1.f) sink[blockIdx.x * THREADS + threadIdx.x] = keep;  // the results count as used
  cluster.sync();  // no CTA leaves while a peer may still store into its buffers
#else
  __trap();
#endif
}

// Runs `steps` steps with `parts` (see above) on the current stream: W [HP, HP], S [NB, HP], St
// (S's CL slices in the core-matrix layout, one after another) [CL * NB * KC], wx and h [steps,
// NB, HP], all bf16, contiguous; `lbo` and `sbo` the descriptor's offsets in bytes.
void probe(torch::Tensor W, torch::Tensor S, torch::Tensor St, torch::Tensor wx, torch::Tensor h, int64_t steps,
           int64_t parts, int64_t lbo, int64_t sbo) {
  for (const auto* x : {&W, &S, &St, &wx, &h})
    TORCH_CHECK(x->is_cuda() && x->is_contiguous() && x->scalar_type() == torch::kBFloat16,
                "dense_wgmma_probe: every tensor contiguous bf16 on the GPU");
  TORCH_CHECK(W.size(0) == HP && W.size(1) == HP && S.size(0) == NB && S.size(1) == HP,
              "dense_wgmma_probe: W [1792, 1792] and S [32, 1792]");
  TORCH_CHECK(St.numel() == NB * HP, "dense_wgmma_probe: St as many elements as S");
  TORCH_CHECK(wx.numel() >= steps * NB * HP && h.numel() >= steps * NB * HP, "dense_wgmma_probe: wx, h too small");
  TORCH_CHECK(parts >= 0 && parts < 256 && (!(parts & kEpilogue) || (parts & kReduce)) &&
                  (!(parts & kAsync) || (parts & kReduce)) && (!(parts & kBulk) || (parts & kStage)) &&
                  (!(parts & kVec4) || (parts & kAsync)) && (!(parts & kBulkReduce) || (parts & kReduce)) &&
                  !((parts & kBulkReduce) && (parts & kAsync)),
              "dense_wgmma_probe: parts a sum of 1, 2, 4, 8, 16, 32, 64, 128; 4, 8 and 128 need 2, 32 needs 16, "
              "64 needs 8, 128 excludes 8");
  const c10::cuda::CUDAGuard guard(W.device());
  auto sink = torch::empty({HP / COLS * CL * THREADS}, W.options().dtype(torch::kFloat));
  constexpr int kDynamic = NB * KC * sizeof(__nv_bfloat16);
  C10_CUDA_CHECK(cudaFuncSetAttribute(probe_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kDynamic));
  probe_kernel<<<HP / COLS * CL, THREADS, kDynamic, c10::cuda::getCurrentCUDAStream()>>>(
      reinterpret_cast<const __nv_bfloat16*>(W.data_ptr()), reinterpret_cast<const __nv_bfloat16*>(S.data_ptr()),
      reinterpret_cast<const __nv_bfloat16*>(St.data_ptr()), reinterpret_cast<const __nv_bfloat16*>(wx.data_ptr()),
      reinterpret_cast<__nv_bfloat16*>(h.data_ptr()), sink.data_ptr<float>(), static_cast<int>(steps),
      static_cast<int>(parts), static_cast<unsigned>(lbo), static_cast<unsigned>(sbo));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) { m.def("probe", &probe, "the 2-D split wgmma probe (see the source)"); }
