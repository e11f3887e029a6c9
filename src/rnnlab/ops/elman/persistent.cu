// Persistent dense Elman scan (E1): ONE cooperative launch runs all T steps of
//   forward   h_t    = tanh(wx_t + h_{t-1} @ W^T)                 (M = W)
//   backward  dpre_t = (g_t + dpre_{t+1} @ W) * (1 - h_t^2)       (M = W^T)
// or, with E1's decay a (kDecay; selective="decay"),
//   forward   h_t    = tanh(wx_t + a_t * (h_{t-1} @ W^T))
//   backward  dpre_t = (g_t + q_{t+1} @ W) * (1 - h_t^2),  q_t = a_t * dpre_t
// where the backward's state (what the blocks exchange) is q, and dpre goes to a second output;
// or, with E1's low-rank term of rank r <= 16 (LOWRANK; selective="lowrank"),
//   forward   h_t    = tanh(wx_t + h_{t-1} @ W^T + ((h_{t-1} @ V) * s_t) @ U^T)
//   backward  dpre_t = (g_t + dpre_{t+1} @ W + ((dpre_{t+1} @ U) * s_{t+1}) @ V^T) * (1 - h_t^2)
// where each warp also multiplies its staged K columns of the state by the same rows of the
// state-side matrix (V forward, U backward; zero-padded to [Hp, 16], one more MMA per K tile, its
// operand read through L1/L2), the block sums the warps' [RB x 16] partials times s, and the
// epilogue adds their product with the thread's row of the other matrix (in registers for all T).
// This variant is built on its own (RNNLAB_LOWRANK), so plain E1 does not pay for its build.
// Block (x, y) owns NC output columns and the RB-row batch group y (tiles 32 x 16 or 16 x 32):
// its NC rows of M stay in shared memory for all T steps. Batch groups are independent
// recurrences, so a block reads only its group's rows of the state.
// Per step every warp of every block waits for the producers of its K range (per-block step
// flags, release/acquire: a dataflow grid barrier without a central counter), stages those
// columns of the previous state from L2 (cp.async.cg, so never a stale L1 line) and runs its
// part of the [RB x H] x [H x NC] product on tensor cores (wmma, bf16/fp16 in, fp32 accumulate;
// at 8 warps and the 32-column tile, W's fragments of the warp's K range stay in registers);
// the block sums the warps' partials, applies the epilogue (its operands were prefetched during
// the previous step), stores its columns and raises its flag.
// Spinning on flags needs every block resident: a cooperative launch guarantees that for the grid
// (one block per SM) or refuses the launch.
// Cluster path (sm_90a builds, one pass over the batch; kernel argument cl > 1): the column blocks
// of a batch group run in clusters of cl CTAs; CTA k waits for the producers of the k-th slice of
// the state's K tiles and copies it (one bulk copy a row, multicast) into every CTA's hs, counted
// on each CTA's mbarrier; all warps wait for the whole state, then multiply as above. A cluster
// barrier a step keeps a CTA from overwriting a peer's hs before the peer's MMAs are done with it.
// One L2 read of the state feeds cl SMs; the arithmetic (and so every output bit) is unchanged.
// Loaded by rnnlab/ops/elman/persistent.py via torch's extension loader.
#include <torch/extension.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>

#include <algorithm>
#include <atomic>
#include <map>
#include <mutex>
#include <tuple>

namespace {
using namespace nvcuda;

constexpr int PAD = 8;  // shared-memory row padding (elements): spreads rows over the banks

// 16 bytes global -> shared (a shared-space byte address), through L2 only (never a stale L1 line)
__device__ __forceinline__ void cp_async16(unsigned smem, const void* gmem) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(smem), "l"(gmem));
}

__device__ __forceinline__ void cp_async_wait_all() { asm volatile("cp.async.wait_all;\n" ::: "memory"); }

__device__ __forceinline__ unsigned ld_acquire(const unsigned* p) {
  unsigned v;
  asm volatile("ld.acquire.gpu.global.u32 %0, [%1];\n" : "=r"(v) : "l"(p) : "memory");
  return v;
}

__device__ __forceinline__ void st_release(unsigned* p, unsigned v) {
  asm volatile("st.release.gpu.global.u32 [%0], %1;\n" ::"l"(p), "r"(v) : "memory");
}

// Thread-block clusters (sm_90a builds only: the multicast bulk copy is an arch-specific
// instruction). RNNLAB_MULTICAST is 1 in the device pass of such a build; kMulticastBuilt tells the
// host which code was loaded. SM90A(...) is its statements there and a trap elsewhere (never
// reached: the host keeps cl = 1 for other builds).
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define RNNLAB_MULTICAST 1
#define SM90A(...) __VA_ARGS__
#else
#define RNNLAB_MULTICAST 0
#define SM90A(...) __trap()
#endif
__device__ int kMulticastBuilt = RNNLAB_MULTICAST;

__device__ __forceinline__ unsigned cluster_ctarank() {
  unsigned r = 0;
  SM90A(asm volatile("mov.u32 %0, %%cluster_ctarank;\n" : "=r"(r)));
  return r;
}

// barrier.cluster: every thread of every CTA of the cluster, warps converged (.aligned)
__device__ __forceinline__ void cluster_arrive_release() {
  SM90A(asm volatile("barrier.cluster.arrive.release.aligned;\n" ::: "memory"));
}

__device__ __forceinline__ void cluster_arrive_relaxed() {
  SM90A(asm volatile("barrier.cluster.arrive.relaxed.aligned;\n" ::: "memory"));
}

__device__ __forceinline__ void cluster_wait() {  // acquire (the default)
  SM90A(asm volatile("barrier.cluster.wait.aligned;\n" ::: "memory"));
}

// the CTA's mbarrier (a shared-space byte address): arrival count 1, visible to the cluster's
// async proxy once the cluster barrier after it completes
__device__ __forceinline__ void mbar_init(unsigned bar) {
  SM90A(asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;\n" ::"r"(bar) : "memory");
        asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory"));
}

// the one arrival of a phase, expecting `bytes` of bulk copies (which may land before it)
__device__ __forceinline__ void mbar_arrive_expect_tx(unsigned bar, unsigned bytes) {
  SM90A(asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes) : "memory"));
}

// until the phase of parity `parity` has completed (acquire: the copies' bytes are visible)
__device__ __forceinline__ void mbar_wait(unsigned bar, unsigned parity) {
  SM90A(unsigned done; do {
    asm volatile("{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\nselp.u32 %0, 1, 0, p;\n}\n"
                 : "=r"(done)
                 : "r"(bar), "r"(parity)
                 : "memory");
  } while (!done));
}

// Orders this thread's view of generic-proxy writes before async-proxy (bulk copy) accesses: in
// global memory, the producers' stores of the state (seen through the flags' acquire) before this
// thread's copies read them; in this CTA's shared memory, its zeroing of hs before the peers'
// copies write into it (a cluster barrier follows).
__device__ __forceinline__ void fence_proxy_async_global() {
  SM90A(asm volatile("fence.proxy.async.global;\n" ::: "memory"));
}

__device__ __forceinline__ void fence_proxy_async_shared() {
  SM90A(asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"));
}

// `bytes` (a multiple of 16; both addresses 16-byte aligned) from global `src` to the shared
// offset `dst` in every CTA of the cluster in `mask`, completing them on the mbarrier at offset
// `bar` of each
__device__ __forceinline__ void multicast_copy(unsigned dst, const void* src, unsigned bytes, unsigned bar,
                                               unsigned short mask) {
  SM90A(asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes.multicast::cluster "
                     "[%0], [%1], %2, [%3], %4;\n" ::"r"(dst), "l"(src), "r"(bytes), "r"(bar), "h"(mask)
                     : "memory"));
}

// flags[p] = number of steps block p has completed (zeroed by the host before each launch).
// The calling warp waits until blocks [p0, p1] have completed `steps` steps, a flag a lane, 32 at a
// time; the loop's condition is the warp's vote, so the warp stays converged (a loop a lane left it
// diverged, and the __syncwarp after it took its slow path every step: 4% of the kernel's samples,
// results/e1-profile-h200); __syncwarp then orders the acquiring lanes' view for the whole warp.
__device__ __forceinline__ void wait_producers(const unsigned* flags, int p0, int p1, unsigned steps, int lane) {
  for (int base = p0; base <= p1; base += 32) {
    const int p = base + lane;
    bool done = p > p1;
    while (!__all_sync(0xffffffffu, done)) done = done || ld_acquire(flags + p) >= steps;
  }
  __syncwarp();
}

__device__ __forceinline__ float tanh_approx(float x) {
  float y;
  asm("tanh.approx.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
template <typename T> __device__ __forceinline__ T from_float(float x);
template <> __device__ __forceinline__ __nv_bfloat16 from_float(float x) { return __float2bfloat16(x); }
template <> __device__ __forceinline__ __half from_float(float x) { return __float2half(x); }

__host__ __device__ __forceinline__ int padded(int H) { return (H + 15) / 16 * 16; }

// What the epilogue adds to the recurrent product: nothing, E1's decay, or its low-rank term.
enum Epilogue { kPlain, kDecay, kLowRank };
constexpr int LR = 16;  // the low-rank term's padded rank: one MMA tile wide

// Shared memory: ws, hs, part (and kLowRank's lpart, lsum), then the cluster path's mbarrier
// (8 bytes, 8-byte aligned; unused with cl = 1), at this offset.
template <typename T, int WARPS, int NC, int RB, int EPI>
__host__ __device__ size_t mbar_offset(int H) {
  const int ld = padded(H) + PAD;
  const size_t lowrank = EPI == kLowRank ? static_cast<size_t>(WARPS + 1) * RB * LR * sizeof(float) : 0;
  const size_t end = static_cast<size_t>(NC + RB) * ld * sizeof(T) +
                     static_cast<size_t>(WARPS) * RB * NC * sizeof(float) + lowrank;
  return (end + 7) / 8 * 8;
}

template <typename T, int WARPS, int NC, int RB, int EPI>
size_t smem_bytes(int H) {
  return mbar_offset<T, WARPS, NC, RB, EPI>(H) + sizeof(unsigned long long);
}

// Block (x, y) computes columns [NC*x, NC*x + NC) for batch rows y*RB + k*gridDim.y*RB + [0, RB).
// e1: forward wx, backward g;  e2: backward h (unused forward);  e3: the decay a (kDecay only);
// m: [H, H] row-major (W or W^T); x0: the state before the first step ([B, H], forward h0) or
// nullptr for zeros; out: [B, T, H], the states (forward h; backward dpre, or q with kDecay);
// out2: backward with kDecay, dpre (else unused); flags: [gridDim.y][gridDim.x] step counters.
// cl: the cluster size along x (1: no cluster, each warp stages its own K columns; > 1: launched
// in clusters of cl CTAs, sm_90a builds only, one pass over the batch: B <= gridDim.y * RB), where
// CTA k of a cluster stages the k-th slice of the state's K tiles into every CTA of the cluster
// with multicast bulk copies.
// kLowRank only: lr_in [Hp, LR] the state-side matrix (forward V, backward U), lr_out [H, LR] the
// other (forward U, backward V), both zero-padded; lr_s [B, T, R] fp32, s (the backward reads s_{t+1}).
template <typename T, int WARPS, int NC, int RB, bool BWD, int EPI>
__global__ void __launch_bounds__(WARPS * 32, 1)
elman_persistent(const T* __restrict__ e1, const T* __restrict__ e2, const T* __restrict__ e3,
                 const T* __restrict__ m, const T* __restrict__ x0, T* out, T* out2, unsigned* flags,
                 const T* __restrict__ lr_in, const T* __restrict__ lr_out, const float* __restrict__ lr_s, int R,
                 int B, int Tn, int H, int cl) {
  constexpr bool DECAY = EPI == kDecay, LOWRANK = EPI == kLowRank;
  constexpr int THREADS = WARPS * 32, MT = RB / 16, NT = NC / 16;
  constexpr int EPT = (RB * NC + THREADS - 1) / THREADS;  // epilogue elements per thread and pass
  constexpr int SPT = (RB * LR + THREADS - 1) / THREADS;  // low-rank s values per thread and pass
  extern __shared__ __align__(128) unsigned char smem_raw[];
  const int Hp = padded(H);
  const int ld = Hp + PAD;
  T* ws = reinterpret_cast<T*>(smem_raw);               // [NC][ld]: rows c0.. of M
  T* hs = ws + NC * ld;                                  // [RB][ld]: staged previous state
  float* part = reinterpret_cast<float*>(hs + RB * ld);  // [WARPS][RB][NC]: per-warp partial sums
  float* lpart = part + WARPS * RB * NC;                 // kLowRank: [WARPS][RB][LR] partial state @ lr_in
  float* lsum = lpart + WARPS * RB * LR;                 // kLowRank: [RB][LR] (state @ lr_in) * s

  const int c0 = blockIdx.x * NC;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int KT = Hp / 16;
  const int kt0 = warp * KT / WARPS, kt1 = (warp + 1) * KT / WARPS;  // this warp's K tiles
  // Staging this warp's K columns of the state: nch 16-byte chunks a row, nvalid of them inside H
  // (the last K tile may pass it). A lane copies chunk j0 of row r0, then every 32nd chunk: dr rows
  // and dj chunks on. Its addresses advance by adds, worked out here once, instead of a division
  // by the run-time nch and the addresses' products every chunk of every step (those were 38% of
  // the kernel's instructions a step: the profile in results/e1-profile-h200).
  const int nch = (kt1 - kt0) * 2;
  const int nvalid = min(nch, (H - kt0 * 16 + 7) / 8);
  const int r0 = nch > 0 ? lane / nch : 0, j0 = nch > 0 ? lane % nch : 0;
  const int dr = nch > 0 ? 32 / nch : 0, dj = nch > 0 ? 32 % nch : 0;
  const unsigned hs_first =
      static_cast<unsigned>(__cvta_generic_to_shared(hs + r0 * ld + kt0 * 16 + j0 * 8));  // shared bytes
  const unsigned hs_next = (dr * ld + dj * 8) * sizeof(T), hs_wrap = (ld - nch * 8) * sizeof(T);
  const long sT = static_cast<long>(Tn) * H;
  const int bstep = gridDim.y * RB;
  unsigned* myflags = flags + blockIdx.y * gridDim.x;

  const T zero = from_float<T>(0.f);
  for (int i = threadIdx.x; i < NC * ld; i += THREADS) {
    const int n = i / ld, k = i % ld;
    ws[i] = (c0 + n < H && k < H) ? m[static_cast<long>(c0 + n) * H + k] : zero;
  }
  for (int i = threadIdx.x; i < RB * ld; i += THREADS) hs[i] = zero;  // K padding stays zero
  __syncthreads();
  // W's fragments of this warp's K tiles, loaded once and kept in registers for all T (each step's
  // MMAs then read only the state from shared memory), where they fit: 8 warps, the 32-column tile
  // (14 K tiles, 112 registers a thread: E1's widths up to H = 1792), not the low-rank build (its
  // epilogue holds its own rows in registers); the 16 x 32 tile measured slower with them
  constexpr int KTR = WARPS <= 8 && NT == 2 && !LOWRANK ? 14 : 0;
  const bool wreg = KTR > 0 && kt1 - kt0 <= KTR;
  wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> wf[KTR > 0 ? KTR : 1][NT];
  if (wreg) {
#pragma unroll
    for (int i = 0; i < KTR; ++i) {
      if (kt0 + i < kt1) {
#pragma unroll
        for (int j = 0; j < NT; ++j) wmma::load_matrix_sync(wf[i][j], ws + j * 16 * ld + (kt0 + i) * 16, ld);
      }
    }
  }

  // The cluster path (cl > 1): this CTA stages the state's columns [sk0, sk1) (K tiles
  // [ka, kb): the cluster's CTAs split the K tiles; the last slice ends at H, so every row's copy
  // is a multiple of 16 bytes) of its producers sp0..sp1 into every CTA of the cluster; each
  // CTA's mbarrier counts the whole state's bytes a step. A cluster barrier a step keeps a CTA from
  // overwriting a peer's hs that the peer's MMAs still read.
  const bool clustered = RNNLAB_MULTICAST && cl > 1;
  if (cl > 1 && (!RNNLAB_MULTICAST || B > bstep)) __trap();  // no such build, or two passes
  const unsigned bar =
      static_cast<unsigned>(__cvta_generic_to_shared(smem_raw + mbar_offset<T, WARPS, NC, RB, EPI>(H)));
  const unsigned hs_base = static_cast<unsigned>(__cvta_generic_to_shared(hs));
  unsigned phase = 0;  // parity of the mbarrier's current phase
  int sk0 = 0, sk1 = 0, sp0 = 0, sp1 = -1;
  if (clustered) {
    const int rank = static_cast<int>(cluster_ctarank());
    const int ka = rank * KT / cl, kb = (rank + 1) * KT / cl;
    sk0 = ka * 16;
    sk1 = min(H, kb * 16);
    sp0 = ka / NT;
    sp1 = (kb - 1) / NT;
    if (threadIdx.x == 0) mbar_init(bar);
    fence_proxy_async_shared();  // the zeros of hs before the peers' bulk copies into it
    cluster_arrive_release();    // every peer's mbarrier initialised before any copy
    cluster_wait();
  }

  // kLowRank: the thread's epilogue columns' rows of lr_out, in registers for all T (a thread's
  // columns are the same in every pass)
  float lu[LOWRANK ? EPT : 1][LOWRANK ? LR : 1];
  if constexpr (LOWRANK) {
#pragma unroll
    for (int e = 0; e < EPT; ++e) {
      const int i = threadIdx.x + e * THREADS, c = c0 + i % NC;
#pragma unroll
      for (int j = 0; j < LR; ++j) lu[e][j] = (i < RB * NC && c < H) ? to_float(lr_out[c * LR + j]) : 0.f;
    }
  }

  // epilogue operands of one pass (step t, batch rows b0..), loaded a pass ahead into registers
  float q1[EPT], q2[EPT], q3[EPT], qs[SPT];
  auto prefetch = [&](int t, int b0) {
    const int nb = min(RB, B - b0);
#pragma unroll
    for (int e = 0; e < EPT; ++e) {
      const int i = threadIdx.x + e * THREADS, r = i / NC, c = c0 + i % NC;
      const long o = static_cast<long>(b0 + r) * sT + static_cast<long>(t) * H + c;
      const bool ok = i < nb * NC && c < H;
      q1[e] = ok ? to_float(e1[o]) : 0.f;
      if constexpr (BWD) q2[e] = ok ? to_float(e2[o]) : 0.f;
      if constexpr (DECAY) q3[e] = ok ? to_float(e3[o]) : 0.f;
    }
    if constexpr (LOWRANK) {
      const int ts = BWD ? t + 1 : t;  // the backward's term at t uses s_{t+1} (none at T-1)
#pragma unroll
      for (int e = 0; e < SPT; ++e) {
        const int i = threadIdx.x + e * THREADS, r = i / LR, j = i % LR;
        const bool ok = i < RB * LR && r < nb && j < R && ts < Tn;
        qs[e] = ok ? lr_s[(static_cast<long>(b0 + r) * Tn + ts) * R + j] : 0.f;
      }
    }
  };
  const int first_b0 = blockIdx.y * RB;
  if (first_b0 < B) prefetch(BWD ? Tn - 1 : 0, first_b0);

  for (int s = 0; s < Tn; ++s) {
    const int t = BWD ? Tn - 1 - s : s;
    const T* src = x0;
    long stride = H;
    if (s > 0) {
      src = out + static_cast<long>(BWD ? t + 1 : t - 1) * H;
      stride = sT;
    }
    for (int b0 = first_b0; b0 < B; b0 += bstep) {
      const int nb = min(RB, B - b0);
      wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[MT][NT];
      wmma::fragment<wmma::accumulator, 16, 16, 16, float> lacc[LOWRANK ? MT : 1];  // state @ lr_in
#pragma unroll
      for (int i = 0; i < MT; ++i) {
#pragma unroll
        for (int j = 0; j < NT; ++j) wmma::fill_fragment(acc[i][j], 0.f);
        if constexpr (LOWRANK) wmma::fill_fragment(lacc[i], 0.f);
      }
      if (clustered) {
        if (s > 0) cluster_wait();  // the peers' MMAs of the previous step are done with their hs
        if (src != nullptr) {
          if (threadIdx.x == 0) mbar_arrive_expect_tx(bar, static_cast<unsigned>(nb * H * sizeof(T)));
          if (warp == 0) {
            if (s > 0) wait_producers(myflags, sp0, sp1, s, lane);
            fence_proxy_async_global();  // the producers' generic stores before the async-proxy reads
            const unsigned bytes = static_cast<unsigned>((sk1 - sk0) * sizeof(T));
            const unsigned short mask = static_cast<unsigned short>((1u << cl) - 1);
            for (int r = lane; r < nb; r += 32)
              multicast_copy(hs_base + static_cast<unsigned>((r * ld + sk0) * sizeof(T)),
                             src + static_cast<long>(b0 + r) * stride + sk0, bytes, bar, mask);
          }
          mbar_wait(bar, phase);  // every CTA's slice has landed in this CTA's hs
          phase ^= 1;
        }
      } else if (src != nullptr && kt1 > kt0) {
        // K tile kt is produced by column block kt / NT: wait for exactly the ones this warp reads
        if (s > 0 && b0 == first_b0) wait_producers(myflags, kt0 / NT, (kt1 - 1) / NT, s, lane);
        // each warp stages (and later reads) only its own K columns: no block-wide sync needed
        const long g_next = dr * stride + dj * 8, g_wrap = stride - nch * 8;  // elements
        const T* g = src + static_cast<long>(b0 + r0) * stride + kt0 * 16 + j0 * 8;
        unsigned d = hs_first;
        for (int r = r0, j = j0; r < nb;) {
          if (j < nvalid) cp_async16(d, g);
          r += dr;
          j += dj;
          d += hs_next;
          g += g_next;
          if (j >= nch) {
            j -= nch;
            ++r;
            d += hs_wrap;
            g += g_wrap;
          }
        }
        cp_async_wait_all();
        __syncwarp();
      }
      // one K tile: the state's fragments times W's (bf), and the low-rank term's
      auto tile = [&](int kt, const auto& bf) {
        wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major> lf;
        if constexpr (LOWRANK) wmma::load_matrix_sync(lf, lr_in + kt * 16 * LR, LR);
#pragma unroll
        for (int i = 0; i < MT; ++i) {
          if (i * 16 < nb) {
            wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> af;
            wmma::load_matrix_sync(af, hs + i * 16 * ld + kt * 16, ld);
#pragma unroll
            for (int j = 0; j < NT; ++j) wmma::mma_sync(acc[i][j], af, bf[j], acc[i][j]);
            if constexpr (LOWRANK) wmma::mma_sync(lacc[i], af, lf, lacc[i]);
          }
        }
      };
      if (src != nullptr && kt1 > kt0) {
        if (wreg) {
#pragma unroll
          for (int i = 0; i < KTR; ++i)
            if (kt0 + i < kt1) tile(kt0 + i, wf[i]);
        } else {
#pragma unroll 2
          for (int kt = kt0; kt < kt1; ++kt) {
            wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> bf[NT];
#pragma unroll
            for (int j = 0; j < NT; ++j) wmma::load_matrix_sync(bf[j], ws + j * 16 * ld + kt * 16, ld);
            tile(kt, bf);
          }
        }
      }
#pragma unroll
      for (int i = 0; i < MT; ++i) {
#pragma unroll
        for (int j = 0; j < NT; ++j)
          wmma::store_matrix_sync(part + (warp * RB + i * 16) * NC + j * 16, acc[i][j], NC, wmma::mem_row_major);
        if constexpr (LOWRANK)
          wmma::store_matrix_sync(lpart + (warp * RB + i * 16) * LR, lacc[i], LR, wmma::mem_row_major);
      }
      __syncthreads();
      // the MMAs have consumed hs: their values reached the partial sums' stores before the barrier
      // above. The relaxed arrive does not order those reads before a peer's next copies into hs in
      // the PTX memory model; it relies on their values having been consumed (the .release form costs
      // 5-9% a layer, results/e1-cluster-h200)
      if (clustered) cluster_arrive_relaxed();
      if constexpr (LOWRANK) {  // the block's (state @ lr_in) * s, [RB x LR]
#pragma unroll
        for (int e = 0; e < SPT; ++e) {
          const int i = threadIdx.x + e * THREADS;
          if (i >= RB * LR) continue;
          float p = 0.f;
#pragma unroll
          for (int w = 0; w < WARPS; ++w) p += lpart[w * RB * LR + i];
          lsum[i] = p * qs[e];
        }
        __syncthreads();
      }
#pragma unroll
      for (int e = 0; e < EPT; ++e) {
        const int i = threadIdx.x + e * THREADS, r = i / NC, n = i % NC, c = c0 + n;
        if (i >= nb * NC || c >= H) continue;
        float a = 0.f;
#pragma unroll
        for (int w = 0; w < WARPS; ++w) a += part[(w * RB + r) * NC + n];
        if constexpr (LOWRANK) {
#pragma unroll
          for (int j = 0; j < LR; ++j) a += lsum[r * LR + j] * lu[e][j];
        }
        const long o = static_cast<long>(b0 + r) * sT + static_cast<long>(t) * H + c;
        float v;
        if constexpr (BWD) {
          v = (a + q1[e]) * (1.f - q2[e] * q2[e]);  // dpre
          if constexpr (DECAY) {
            out2[o] = from_float<T>(v);
            v *= q3[e];  // q, the state of the next step
          }
        } else {
          v = tanh_approx((DECAY ? q3[e] * a : a) + q1[e]);
        }
        out[o] = from_float<T>(v);
      }
      __syncthreads();  // all stores of the pass done; `part` is reused
      const bool last = b0 + bstep >= B;
      // the release orders this block's stores (made visible to thread 0 by the barrier above);
      // it also waits for thread 0's earlier loads, so the next prefetch is issued after it
      if (last && threadIdx.x == 0) st_release(myflags + blockIdx.x, static_cast<unsigned>(s + 1));
      if (!last) prefetch(t, b0 + bstep);
      else if (s + 1 < Tn) prefetch(BWD ? t - 1 : t + 1, first_b0);
    }
  }
  // the last step's arrival: no CTA exits while its copies into a peer (or a peer's into it) may be
  // in flight (a peer arrives only after its mbarrier counted every byte)
  if (clustered && first_b0 < B) cluster_wait();
}

// The operands of one launch beyond the state's: what the kernel's e2, e3, out2 and lr_* take.
struct Extras {
  const torch::Tensor* e2 = nullptr;      // backward: h
  const torch::Tensor* e3 = nullptr;      // kDecay: a
  torch::Tensor* out2 = nullptr;          // kDecay backward: dpre
  const torch::Tensor* lr_in = nullptr;   // kLowRank: [Hp, LR] state-side matrix
  const torch::Tensor* lr_out = nullptr;  // kLowRank: [H, LR] epilogue-side matrix
  const torch::Tensor* lr_s = nullptr;    // kLowRank: [B, T, R] fp32 s
};

template <typename T>
const T* ptr(const torch::Tensor* t) { return t ? reinterpret_cast<const T*>(t->data_ptr()) : nullptr; }

// Whether the stream of this launch is capturing a CUDA graph (no synchronous copy then, and a
// failed launch is the capture's error, not a reason to drop the clusters).
bool capturing() {
  cudaStreamCaptureStatus status;
  C10_CUDA_CHECK(cudaStreamIsCapturing(c10::cuda::getCurrentCUDAStream(), &status));
  return status != cudaStreamCaptureStatusNone;
}

// Whether the code loaded on device `dev` (the current one) was built with the multicast path
// (sm_90a): read once per device from kMulticastBuilt (a synchronous copy, made by `capacity`
// before the first launch), then cached; false, uncached, while the stream captures a graph.
bool multicast_built(int dev) {
  static std::mutex mu;
  static std::map<int, bool> built;
  std::lock_guard<std::mutex> lock(mu);
  auto it = built.find(dev);
  if (it != built.end()) return it->second;
  if (capturing()) return false;
  int v = 0;
  C10_CUDA_CHECK(cudaMemcpyFromSymbol(&v, kMulticastBuilt, sizeof(int)));
  return built[dev] = v != 0;
}

bool multicast_available() {
  int dev;
  C10_CUDA_CHECK(cudaGetDevice(&dev));
  return multicast_built(dev);
}

// the cluster size of the last launch in this process, any thread or device (0: none yet): what a
// test or benchmark reads right after its own launch
std::atomic<int> last_cluster{0};

int64_t last_cluster_size() { return last_cluster.load(); }

// The cluster size of a launch: the largest cl of max_cluster..2 (at most 8, the portable limit)
// dividing grid.x whose clusters can all be resident at once (the cooperative launch needs every
// block resident); 1 when none. Cached per (device, kernel, grid, shared memory, max_cluster); a
// cluster launch that failed once (launch_failed) is never tried again for that key.
struct ClusterKey {
  int dev;
  const void* kernel;
  unsigned gx, gy;
  size_t smem;
  int max_cluster;
  bool operator<(const ClusterKey& o) const {
    return std::tie(dev, kernel, gx, gy, smem, max_cluster) < std::tie(o.dev, o.kernel, o.gx, o.gy, o.smem, o.max_cluster);
  }
};
std::mutex cluster_mu;
std::map<ClusterKey, int> cluster_sizes;

// the launch attribute for clusters of c CTAs along x
cudaLaunchAttribute cluster_dim(int c) {
  cudaLaunchAttribute a;
  a.id = cudaLaunchAttributeClusterDimension;
  a.val.clusterDim.x = c;
  a.val.clusterDim.y = 1;
  a.val.clusterDim.z = 1;
  return a;
}

template <typename K>
int cluster_size(const ClusterKey& key, K kernel, dim3 grid, dim3 block, size_t smem) {
  std::lock_guard<std::mutex> lock(cluster_mu);
  auto it = cluster_sizes.find(key);
  if (it != cluster_sizes.end()) return it->second;
  int cl = 1;
  for (int c = std::min(8, key.max_cluster); c >= 2 && cl == 1; --c) {
    if (grid.x % c != 0) continue;
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = grid;
    cfg.blockDim = block;
    cfg.dynamicSmemBytes = smem;
    cudaLaunchAttribute attr[1] = {cluster_dim(c)};
    cfg.attrs = attr;
    cfg.numAttrs = 1;
    int clusters = 0;
    if (cudaOccupancyMaxActiveClusters(&clusters, kernel, &cfg) != cudaSuccess) {
      (void)cudaGetLastError();  // not launchable in clusters of c: try the next size
      continue;
    }
    if (static_cast<long>(clusters) * c >= static_cast<long>(grid.x) * grid.y) cl = c;
  }
  return cluster_sizes[key] = cl;
}

void cluster_launch_failed(const ClusterKey& key) {
  std::lock_guard<std::mutex> lock(cluster_mu);
  cluster_sizes[key] = 1;
}

template <typename T, int WARPS, int NC, int RB, bool BWD, int EPI>
void launch(const torch::Tensor& e1, const torch::Tensor& m, const torch::Tensor* x0, torch::Tensor& out,
            const Extras& x, int groups, int max_cluster) {
  const int B = e1.size(0), Tn = e1.size(1), H = e1.size(2);
  const int R = x.lr_s ? x.lr_s->size(2) : 0;
  auto kernel = elman_persistent<T, WARPS, NC, RB, BWD, EPI>;
  const size_t smem = smem_bytes<T, WARPS, NC, RB, EPI>(H);
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
  const dim3 grid((H + NC - 1) / NC, groups), block(WARPS * 32);
  int dev;
  C10_CUDA_CHECK(cudaGetDevice(&dev));
  // clusters only where one pass covers the batch and the loaded code has the multicast path
  const ClusterKey key{dev, reinterpret_cast<const void*>(kernel), grid.x, grid.y, smem, max_cluster};
  int cl = max_cluster > 1 && B <= groups * RB && multicast_built(dev) ? cluster_size(key, kernel, grid, block, smem)
                                                                       : 1;
  auto flags = torch::zeros({static_cast<long>(grid.x * grid.y)}, e1.options().dtype(torch::kInt32));
  const T* pe1 = ptr<T>(&e1);
  const T* pe2 = ptr<T>(x.e2);
  const T* pe3 = ptr<T>(x.e3);
  const T* pm = ptr<T>(&m);
  const T* px0 = ptr<T>(x0);
  T* pout = reinterpret_cast<T*>(out.data_ptr());
  T* pout2 = x.out2 ? reinterpret_cast<T*>(x.out2->data_ptr()) : nullptr;
  unsigned* pf = reinterpret_cast<unsigned*>(flags.data_ptr());
  const T* plin = ptr<T>(x.lr_in);
  const T* plout = ptr<T>(x.lr_out);
  const float* ps = x.lr_s ? x.lr_s->data_ptr<float>() : nullptr;
  void* args[] = {&pe1, &pe2, &pe3, &pm, &px0, &pout, &pout2, &pf, &plin, &plout, &ps, (void*)&R,
                  (void*)&B, (void*)&Tn, (void*)&H, &cl};
  // cooperative (every block resident: the flag spinning needs it), in clusters of cl when cl > 1
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = c10::cuda::getCurrentCUDAStream();
  cudaLaunchAttribute attrs[2] = {{}, cluster_dim(cl)};
  attrs[0].id = cudaLaunchAttributeCooperative;
  attrs[0].val.cooperative = 1;
  cfg.attrs = attrs;
  cfg.numAttrs = cl > 1 ? 2 : 1;
  cudaError_t err = cudaLaunchKernelExC(&cfg, reinterpret_cast<const void*>(kernel), args);
  if (err != cudaSuccess && cl > 1 && !capturing()) {  // the driver refused the cluster launch: the plain one, from now on
    (void)cudaGetLastError();
    TORCH_WARN_ONCE("persistent Elman kernel: the cluster launch (", cl, " CTAs) failed (",
                    cudaGetErrorString(err), "); launching without clusters");
    cluster_launch_failed(key);
    cl = 1;
    cfg.numAttrs = 1;
    err = cudaLaunchKernelExC(&cfg, reinterpret_cast<const void*>(kernel), args);
  }
  C10_CUDA_CHECK(err);
  last_cluster.store(cl);
}

// The tile shapes built: (columns per block, batch rows per block) = (16, 32) or (32, 16).
#define RNNLAB_TILES(X, T, W, BWD) \
  if (nc == 16 && rb == 32) X(T, W, 16, 32, BWD) else if (nc == 32 && rb == 16) X(T, W, 32, 16, BWD) \
  else TORCH_CHECK(false, "tile (nc, rb) must be (16, 32) or (32, 16)");
#define RNNLAB_WARPS(X, T, BWD)                    \
  if (warps == 8) { RNNLAB_TILES(X, T, 8, BWD) }   \
  else if (warps == 16) { RNNLAB_TILES(X, T, 16, BWD) } \
  else TORCH_CHECK(false, "warps must be 8 or 16");
#define RNNLAB_DTYPE(X, BWD)                                                                          \
  if (dtype == torch::kBFloat16) { RNNLAB_WARPS(X, __nv_bfloat16, BWD) }                             \
  else if (dtype == torch::kHalf) { RNNLAB_WARPS(X, __half, BWD) }                                   \
  else TORCH_CHECK(false, "persistent Elman scan supports bf16 and fp16");

// This build's epilogues: plain and decay, or (built with RNNLAB_LOWRANK) the low-rank term only.
#ifdef RNNLAB_LOWRANK
constexpr bool kLowRankBuild = true;
#else
constexpr bool kLowRankBuild = false;
#endif

// Returns out; with the decay e3 the backward also fills out2 (dpre) and returns q.
template <bool BWD>
torch::Tensor run(const torch::Tensor& e1, const c10::optional<torch::Tensor>& e2, const torch::Tensor& m,
                  const c10::optional<torch::Tensor>& x0, const c10::optional<torch::Tensor>& e3,
                  c10::optional<torch::Tensor> out2, const c10::optional<torch::Tensor>& lr_in,
                  const c10::optional<torch::Tensor>& lr_out, const c10::optional<torch::Tensor>& lr_s,
                  int64_t warps, int64_t nc, int64_t rb, int64_t groups, int64_t max_cluster) {
  TORCH_CHECK(e1.is_cuda() && e1.dim() == 3 && e1.is_contiguous(), "e1 must be a contiguous CUDA [B, T, H] tensor");
  TORCH_CHECK(m.scalar_type() == e1.scalar_type() && m.is_contiguous(), "m must be contiguous, dtype of e1");
  TORCH_CHECK(e1.size(2) % 8 == 0, "H must be a multiple of 8 (16-byte rows)");
  TORCH_CHECK(groups >= 1, "groups must be >= 1");
  TORCH_CHECK(max_cluster >= 1, "max_cluster must be >= 1 (1: no clusters)");
  auto like_e1 = [&](const c10::optional<torch::Tensor>& t) {
    return !t.has_value() || (t->sizes() == e1.sizes() && t->scalar_type() == e1.scalar_type() && t->is_contiguous());
  };
  TORCH_CHECK(like_e1(e3) && like_e1(out2), "the decay a and dpre must be contiguous, with e1's shape and dtype");
  TORCH_CHECK(!BWD || e3.has_value() == out2.has_value(), "the decay backward needs both a and the dpre output");
  const bool lowrank = lr_s.has_value();
  TORCH_CHECK(lowrank == kLowRankBuild, lowrank ? "this build has no low-rank term (RNNLAB_LOWRANK)"
                                                : "the low-rank build needs lr_in, lr_out and lr_s");
  if (lowrank) {
    const int64_t H = e1.size(2), Hp = padded(static_cast<int>(H));
    TORCH_CHECK(lr_in.has_value() && lr_out.has_value() && !e3.has_value(), "low-rank: lr_in, lr_out, no decay");
    TORCH_CHECK(lr_in->sizes() == torch::IntArrayRef({Hp, LR}) && lr_out->sizes() == torch::IntArrayRef({H, LR}) &&
                    lr_in->scalar_type() == e1.scalar_type() && lr_out->scalar_type() == e1.scalar_type() &&
                    lr_in->is_contiguous() && lr_out->is_contiguous(),
                "low-rank: lr_in [Hp, 16] and lr_out [H, 16], contiguous, dtype of e1");
    TORCH_CHECK(lr_s->dim() == 3 && lr_s->size(0) == e1.size(0) && lr_s->size(1) == e1.size(1) &&
                    lr_s->size(2) >= 1 && lr_s->size(2) <= LR && lr_s->scalar_type() == torch::kFloat &&
                    lr_s->is_contiguous(),
                "low-rank: s must be contiguous fp32 [B, T, R] with 1 <= R <= 16");
  }
  const c10::cuda::CUDAGuard guard(e1.device());
  auto out = torch::empty_like(e1);
  if (e1.numel() == 0) return out;
  Extras x;
  x.e2 = e2.has_value() ? &e2.value() : nullptr;
  x.e3 = e3.has_value() ? &e3.value() : nullptr;
  x.out2 = out2.has_value() ? &out2.value() : nullptr;
  x.lr_in = lr_in.has_value() ? &lr_in.value() : nullptr;
  x.lr_out = lr_out.has_value() ? &lr_out.value() : nullptr;
  x.lr_s = lr_s.has_value() ? &lr_s.value() : nullptr;
  const torch::Tensor* px0 = x0.has_value() ? &x0.value() : nullptr;
  const auto dtype = e1.scalar_type();
#ifdef RNNLAB_LOWRANK
#define RNNLAB_LAUNCH_LOWRANK(T, W, NC_, RB_, BWD_) launch<T, W, NC_, RB_, BWD_, kLowRank>(e1, m, px0, out, x, groups, max_cluster);
  RNNLAB_DTYPE(RNNLAB_LAUNCH_LOWRANK, BWD)
#undef RNNLAB_LAUNCH_LOWRANK
#else
#define RNNLAB_LAUNCH(T, W, NC_, RB_, BWD_) launch<T, W, NC_, RB_, BWD_, kPlain>(e1, m, px0, out, x, groups, max_cluster);
#define RNNLAB_LAUNCH_DECAY(T, W, NC_, RB_, BWD_) launch<T, W, NC_, RB_, BWD_, kDecay>(e1, m, px0, out, x, groups, max_cluster);
  if (x.e3 != nullptr) {
    RNNLAB_DTYPE(RNNLAB_LAUNCH_DECAY, BWD)
  } else {
    RNNLAB_DTYPE(RNNLAB_LAUNCH, BWD)
  }
#undef RNNLAB_LAUNCH_DECAY
#undef RNNLAB_LAUNCH
#endif
  return out;
}

// Blocks of this tile that can be co-resident on the current device (0: does not fit), for this
// build's epilogue (the low-rank one needs more shared memory).
template <typename T, int WARPS, int NC, int RB, bool BWD>
int64_t capacity_for(int64_t H) {
  constexpr int EPI = kLowRankBuild ? kLowRank : kPlain;
  auto kernel = elman_persistent<T, WARPS, NC, RB, BWD, EPI>;
  const size_t smem = smem_bytes<T, WARPS, NC, RB, EPI>(static_cast<int>(H));
  int dev;
  C10_CUDA_CHECK(cudaGetDevice(&dev));
  (void)multicast_built(dev);  // its one synchronous read, here, before any launch on the device
  int max_smem;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&max_smem, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
  if (smem > static_cast<size_t>(max_smem)) return 0;
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
  int per_sm = 0, sms = 0;
  C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, WARPS * 32, smem));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
  return static_cast<int64_t>(per_sm) * sms;
}

int64_t capacity(int64_t H, int64_t warps, int64_t nc, int64_t rb) {
  const auto dtype = torch::kBFloat16;
#define RNNLAB_CAP(T, W, NC_, RB_, BWD_) return capacity_for<T, W, NC_, RB_, BWD_>(H);
  RNNLAB_DTYPE(RNNLAB_CAP, false)
#undef RNNLAB_CAP
  return 0;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, mod) {
  mod.def("forward", &run<false>,
          "h = forward(wx, None, W, h0 or None, a or None, None, lr_in, lr_out, s (low-rank build; else None), "
          "warps, nc, rb, groups, max_cluster)");
  mod.def("backward", &run<true>,
          "dpre = backward(g, h, W^T, None, None, None, None, None, None, ...); with the decay a: "
          "q = backward(g, h, W^T, None, a, dpre_out, None, None, None, ...); low-rank build: "
          "dpre = backward(g, h, W^T, None, None, None, U padded, V padded, s, ...)");
  mod.def("capacity", &capacity, "co-resident blocks of a tile (H, warps, nc, rb); 0 = does not fit");
  mod.def("multicast_available", &multicast_available,
          "whether the code loaded on the current device has the cluster (multicast) path (sm_90a build)");
  mod.def("last_cluster_size", &last_cluster_size, "the cluster size of the last launch (1: none; 0: no launch yet)");
}
