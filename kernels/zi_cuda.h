/*
 * zi_cuda.h - what the CUDA backend offers beyond backend.h: allocator control and
 * telemetry, the device randn, and the probes used by the kernel tests and `zimage bench`.
 *
 * These functions exist only in builds with the CUDA backend (ZI_HAVE_CUDA); callers in
 * always-compiled code guard their use with #ifdef ZI_HAVE_CUDA. Every function checks
 * that `be` is a CUDA backend (ZI_EINVAL otherwise). The header needs no CUDA headers.
 */
#ifndef ZI_CUDA_H
#define ZI_CUDA_H

#include "backend.h"
#include "zi_alloc.h"

#include <stddef.h>
#include <stdint.h>

/* Which attention implementation the backend uses. AUTO: the fused flash kernel where
 * it exists (head_dim 128 or 512, 16-byte aligned bf16 operands), else the GEMM path (cuBLAS
 * scores for a block of query rows, row softmax, cuBLAS P.V). The environment variable
 * ZI_CUDA_ATTENTION=auto|flash|gemm sets the initial choice. */
typedef enum zi_cuda_attn_path {
    ZI_CUDA_ATTN_AUTO = 0,
    ZI_CUDA_ATTN_FLASH = 1, /* flash where supported, GEMM path elsewhere (as AUTO) */
    ZI_CUDA_ATTN_GEMM = 2,  /* always the GEMM path (cross-check of the fused kernel) */
} zi_cuda_attn_path;

/* 1 when `be` is a CUDA backend. */
int zi_cuda_is(const zi_backend *be);

int zi_cuda_set_attention_path(zi_backend *be, zi_cuda_attn_path path);

/* Fault injection (tests, the worker's ZIMAGE_FAULT_DEVICE_PROMPT): queues a kernel that
 * writes to an illegal address on the backend's stream. As with a real fault, the CUDA
 * context is lost: the next op or wait that meets it records ZI_EDEVICE (backend.h), which
 * stays until the process ends. Never call it on a device other work shares. */
int zi_cuda_inject_fault(zi_backend *be);

/* K/V tiles the flash kernel keeps in flight: 2 (default: the next tile's copy overlaps
 * this tile's math, 85 KiB of shared memory per block) or 1 (52 KiB: more blocks per SM).
 * Which is faster depends on the GPU; ZI_CUDA_FLASH_STAGES sets it at creation. */
int zi_cuda_set_flash_stages(zi_backend *be, int stages);

/* Weight budget, for GPUs smaller than the model: weights uploaded while `bytes` of
 * weights are already resident stay in host memory (bf16; where: zi_cuda_host_weight_bytes
 * below), and each op that reads one gets a device copy of it: the large ones prefetched
 * into slots on a second stream (zi_cuda_set_prefetch), the others copied to scratch right
 * before it runs (an embedding table: only the rows looked up). Results are the same bit
 * for bit; the cost is the PCIe traffic. UINT64_MAX keeps every weight resident; 0 keeps
 * all on the host. Set it before the weights are loaded. At creation the backend sets it
 * from ZI_CUDA_WEIGHT_BUDGET_MB: "auto" (the default) = the device memory free then (or
 * left under ZI_CUDA_MEM_LIMIT_MB), less the activation headroom (2 GiB until a job's plan
 * sets it: zi_cuda_set_act_headroom), so a model that fits stays
 * resident and a smaller card keeps the rest on the host; "resident" = no budget; N = N
 * MiB. A weight the device refuses while under the budget also stays on the host. The
 * pipeline loads the transformer first, then the VAE, then the text encoder, so the budget
 * goes to the weights used at every step. */
int zi_cuda_set_weight_budget(zi_backend *be, uint64_t bytes);
/* The same from a spec, as ZI_CUDA_WEIGHT_BUDGET_MB and the config key
 * device.weight_budget_mb take it: NULL, "" or "auto", "resident", or a number of MiB;
 * anything else is ZI_EINVAL naming the spec. */
int zi_cuda_set_weight_budget_spec(zi_backend *be, const char *spec);
/* The budget in force (UINT64_MAX: none). */
uint64_t zi_cuda_weight_budget(zi_backend *be);
/* What the "auto" budget leaves free for a job: 2 GiB until set here from the plan of the
 * largest job that will run - `bytes` = zi_pipeline_act_estimate()'s mapped figure plus
 * zi_cuda_job_scratch_bytes(), as the worker does for generation.max_pixels - to `bytes`
 * plus 512 MiB for device memory outside the allocator (lazily loaded kernels, cuBLAS),
 * at least 1 GiB. An "auto" budget in force is evaluated again at once; call before the
 * weights load. */
int zi_cuda_set_act_headroom(zi_backend *be, uint64_t bytes);
uint64_t zi_cuda_act_headroom(zi_backend *be);
/* 1 when the budget in force came from "auto" (the headroom applies to it). */
int zi_cuda_weight_budget_auto(zi_backend *be);
/* Device memory the backend takes during a job beyond the pipeline's tensors, at most:
 * attention and convolution scratch at their budgets and the weight prefetch slots (its
 * workspace and staging buffers are allocated at creation, before any budget). */
uint64_t zi_cuda_job_scratch_bytes(zi_backend *be);
/* Bytes of weights kept in host memory under the budget, in all and by kind:
 *   pinned    page-locked, up to the pin limit (ZI_CUDA_PIN_LIMIT_MB, or half the host's
 *             memory: MemTotal, or the cgroup limit when lower), so the host stays usable;
 *   mapped    past it, or once the host has no more memory to lock: a bf16 weight of a
 *             checkpoint the loader keeps mapped (be->weight_src_stable, as
 *             zi_pipeline_load does) is read from that mapping - no copy, the page cache
 *             holds it (ZI_CUDA_MAP_WEIGHTS=0 turns this off);
 *   pageable  anything else, copied to ordinary memory; refused with a clear error when
 *             the host has not that much available (ZI_CUDA_HOST_MEM_LIMIT_MB caps it).
 * Copies from the last two are slower and overlap the compute less. */
uint64_t zi_cuda_host_weight_bytes(zi_backend *be);
uint64_t zi_cuda_host_pinned_bytes(zi_backend *be);
uint64_t zi_cuda_host_pageable_bytes(zi_backend *be);
uint64_t zi_cuda_host_mapped_bytes(zi_backend *be);
/* The pin limit in force, in bytes (UINT64_MAX: the host's memory could not be read), and
 * setting it (before the weights are loaded; 0 = the default, half the host's memory). */
uint64_t zi_cuda_pin_limit(zi_backend *be);
int zi_cuda_set_pin_limit(zi_backend *be, uint64_t bytes);
/* Prefetch of the large host-kept weights (on by default; ZI_CUDA_PREFETCH=0 turns it off
 * at creation): the ops read the weights in the same order at every step, so once an op is
 * queued the weight read after it last time is copied to the device on a second stream
 * while the op runs. A weight found there is a hit; a miss (the first step, a wrong guess,
 * prefetch off) waits for its copy. Results are the same bit for bit either way. Host
 * weights of at least `min_bytes` are prefetched (0 keeps the threshold in force: 1 MiB, or
 * ZI_CUDA_PREFETCH_MIN_KB), smaller ones are copied right before the op; tests lower it so
 * the tiny model's weights are prefetched. */
int zi_cuda_set_prefetch(zi_backend *be, int on, size_t min_bytes);
int zi_cuda_prefetch_stats(zi_backend *be, uint64_t *hits, uint64_t *misses);
int zi_cuda_prefetch_on(zi_backend *be); /* 1 when prefetch is on */

/* Bounds (bytes) of the scratch the backend tiles its work by: the GEMM attention path's
 * scores of one block of query rows, and the convolution's im2col tile (at least 256
 * pixels). 0 restores the default (96 MiB, 64 MiB). Smaller budgets mean more, smaller
 * GEMMs, the same result; the kernel tests use them to run the tiled paths at small shapes. */
int zi_cuda_set_work_budgets(zi_backend *be, size_t score_bytes, size_t col_bytes);

/* out[n] (F32 tensor) = torch CUDA-generator randn for `seed`, computed on the GPU: the
 * device twin of zi_randn_cuda() (pipeline/rng.h), same layout and launch geometry. */
int zi_cuda_randn(zi_backend *be, zi_tensor *out, size_t n, uint64_t seed);

/* Unmaps every fully free chunk of the allocator; returns the bytes released. */
uint64_t zi_cuda_trim(zi_backend *be);
/* Starts a new peak window for mem_stats (peak = allocated now). */
void zi_cuda_reset_peak(zi_backend *be);
/* The allocator's full figures (peak_reserved, map/unmap counts, blocks). */
int zi_cuda_alloc_stats(zi_backend *be, zi_alloc_stats *out);

/* The backend's stream (a cudaStream_t) for timing with events. */
void *zi_cuda_stream(zi_backend *be);
/* Evicts the L2 cache (writes a buffer twice its size) so the next kernel reads from
 * device memory, as in a real pipeline step. */
int zi_cuda_flush_l2(zi_backend *be);

/* cuBLASLt bf16 GEMM n x n x n (fp32 accumulate) through the backend's linear path:
 * best of `reps` timed runs after warm-up, in TFLOP/s. */
int zi_cuda_bench_gemm(zi_backend *be, int n, int reps, double *tflops);
/* Pinned host -> device copy of `bytes`, best of `reps`, in GB/s (1e9 bytes/s). */
int zi_cuda_bench_h2d(zi_backend *be, size_t bytes, int reps, double *gbps);

#endif
