/*
 * test_emu_smem.cpp - the CUDA emulator's shared memory limits on static __shared__ data
 * (emu_device.cpp, launch_check): a kernel declaring up to 48 KiB statically runs; more
 * aborts at its launch (ptxas rejects it on a real build); static plus dynamic shared memory
 * above the opt-in maximum (227 KiB, sm_90) is a launch error (cudaErrorInvalidValue).
 * Reference: CUDA C++ Programming Guide, "Compute capabilities" (technical specifications)
 * and cudaFuncSetAttribute (cudaFuncAttributeMaxDynamicSharedMemorySize: "The sum of this
 * value and the function attribute sharedSizeBytes cannot exceed the device attribute
 * cudaDevAttrMaxSharedMemoryPerBlockOptin"). Plain checks; exit status 1 on a failure.
 */
#include "zi_cuda_emu.h"

#include "emu_test.h"

#include <stdio.h>

#define CHECK ZI_EMU_CHECK

namespace
{

constexpr int kStatic40k = 10 * 1024; /* floats: 40 KiB */
constexpr int kStatic52k = 13 * 1024; /* floats: 52 KiB */

/* out[t] = sum of the 40 KiB array after every thread filled its share */
__global__ void static_40k_kernel(float *out)
{
    __shared__ float s[kStatic40k];
    for (int i = (int)threadIdx.x; i < kStatic40k; i += (int)blockDim.x)
        s[i] = 1.0f;
    __syncthreads();
    float acc = 0.0f;
    for (int i = 0; i < kStatic40k; i++)
        acc += s[i];
    out[threadIdx.x] = acc;
}

__global__ void static_52k_kernel(float *out)
{
    __shared__ float s[kStatic52k];
    s[threadIdx.x] = (float)threadIdx.x;
    __syncthreads();
    out[threadIdx.x] = s[(threadIdx.x + 1) % blockDim.x];
}

void run_static_52k(void)
{
    float *out = static_cast<float *>(zi_emu_test_dev_alloc(32 * sizeof(float)));
    ZI_LAUNCH(static_52k_kernel, 1, 32, 0, 0, out);
}

} // namespace

int main(void)
{
    float *out = static_cast<float *>(zi_emu_test_dev_alloc(64 * sizeof(float)));

    /* 40 KiB of static shared data: within the 48 KiB */
    ZI_LAUNCH(static_40k_kernel, 1, 64, 0, 0, out);
    CHECK(cudaGetLastError() == cudaSuccess);
    float back[64];
    CHECK(cudaMemcpy(back, out, sizeof back, cudaMemcpyDeviceToHost) == cudaSuccess);
    for (int t = 0; t < 64; t++)
        CHECK(back[t] == (float)kStatic40k);

    /* static + dynamic above the opt-in maximum (40 KiB + 200 KiB > 227 KiB) */
    CHECK(cudaFuncSetAttribute(static_40k_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                               200 * 1024) == cudaSuccess);
    unsigned long long launches = zi_emu_launch_count();
    ZI_LAUNCH(static_40k_kernel, 1, 64, 200 * 1024, 0, out);
    CHECK(cudaGetLastError() == cudaErrorInvalidValue);
    CHECK(zi_emu_launch_count() == launches);
    ZI_LAUNCH(static_40k_kernel, 1, 64, (size_t)zi_emu_max_optin_smem() - 40 * 1024, 0, out);
    CHECK(cudaGetLastError() == cudaSuccess);
    CHECK(zi_emu_launch_count() == launches + 1);
    CHECK(cudaDeviceSynchronize() == cudaSuccess);

    /* 52 KiB of static shared data: not a kernel nvcc would build */
    zi_emu_test_expect_abort(run_static_52k, "static_52k_kernel",
                             "53248 bytes of static __shared__");
    CHECK(cudaFree(out) == cudaSuccess);
    printf("ok static shared memory limits\n");
    return 0;
}
