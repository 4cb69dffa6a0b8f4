/*
 * scheduler.c - flow-matching Euler sigmas and step, bit-exact with torch fp32.
 *
 * Every operation below is one fp32 operation in torch or numpy. Each product that is
 * followed by a sum is its own statement, so no compiler contracts the pair into an FMA
 * (GCC's ISO mode never does, clang only within one expression); the only fused
 * multiply-adds are the explicit fmaf() of torch's linspace kernel.
 */
#include "scheduler.h"
#include "zi_err.h"

#include <math.h>

void zi_sched_linspace_f32(float start, float end, int n, float *out)
{
    if (n <= 0)
        return;
    if (n == 1) {
        out[0] = start;
        return;
    }
    /* torch's CPU linspace fills the first half forwards from start and the second half
     * backwards from end, so both end points are exact. */
    float step = (end - start) / (float)(n - 1);
    int halfway = n / 2;
    for (int i = 0; i < n; i++) {
        if (i < halfway)
            out[i] = fmaf(step, (float)i, start);
        else
            out[i] = fmaf(-step, (float)(n - 1 - i), end);
    }
}

double zi_sched_mu(const zi_sched_config *cfg, int64_t image_seq_len)
{
    /* pipeline_z_image.calculate_shift, in Python floats */
    double m = (cfg->max_shift - cfg->base_shift) / (cfg->max_seq_len - cfg->base_seq_len);
    double b = cfg->base_shift - m * cfg->base_seq_len;
    double ms = (double)image_seq_len * m;
    return ms + b;
}

int zi_sched_sigmas(const zi_sched_config *cfg, int n, int64_t image_seq_len, float *sigmas,
                    float *timesteps)
{
    if (n < 1 || n > ZI_SCHED_MAX_STEPS)
        return zi_errorf(ZI_EINVAL, "scheduler: steps must be in [1, %d], got %d",
                         ZI_SCHED_MAX_STEPS, n);
    if (!(cfg->shift > 0.0) || cfg->num_train_timesteps <= 0)
        return zi_errorf(ZI_EINVAL, "scheduler: bad shift %g or num_train_timesteps %d",
                         (double)cfg->shift, cfg->num_train_timesteps);
    if (cfg->use_dynamic_shifting && image_seq_len <= 0)
        return zi_errorf(ZI_EINVAL, "scheduler: dynamic shifting needs the image sequence length");
    /* The pipeline passes sigmas = linspace(1.0, 1/N, N); the end point is the double
     * 1/N rounded to fp32 by torch. */
    zi_sched_linspace_f32(1.0f, (float)(1.0 / (double)n), n, sigmas);
    const float ntt = (float)cfg->num_train_timesteps;
    if (cfg->use_dynamic_shifting) {
        /* time_shift(mu, 1.0, s) on the fp32 numpy array, the Python float scalar rounded to
         * fp32: exponential e^mu / (e^mu + (1/s - 1)^1), linear mu / (mu + (1/s - 1)^1) */
        double mu = zi_sched_mu(cfg, image_seq_len);
        const float a = (float)(cfg->time_shift_linear ? mu : exp(mu));
        for (int i = 0; i < n; i++) {
            float inv = 1.0f / sigmas[i];
            float x = inv - 1.0f;
            float den = a + x;
            sigmas[i] = a / den;
            timesteps[i] = sigmas[i] * ntt;
        }
    } else {
        /* numpy: self.shift * s / (1 + (self.shift - 1) * s) on the fp32 array, with the
         * Python floats shift and shift - 1 (computed in double) each rounded to fp32 */
        const float shift = (float)cfg->shift;
        const float shift_m1 = (float)(cfg->shift - 1.0);
        for (int i = 0; i < n; i++) {
            float s = sigmas[i];
            float num = shift * s;
            float ms = shift_m1 * s;
            float den = 1.0f + ms;
            sigmas[i] = num / den;
            timesteps[i] = sigmas[i] * ntt;
        }
    }
    sigmas[n] = 0.0f;
    return ZI_OK;
}

float zi_sched_model_time(float timestep)
{
    float d = 1000.0f - timestep;
    return d / 1000.0f;
}

void zi_sched_euler_step(float *x, const float *out, float sigma, float sigma_next, size_t n)
{
    float dt = sigma_next - sigma;
    for (size_t i = 0; i < n; i++) {
        float v = -out[i];
        float dx = dt * v;
        x[i] = x[i] + dx;
    }
}
