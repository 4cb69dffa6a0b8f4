/*
 * pipeline_bench.h - what `zimage bench` (worker/cmd_bench.c) needs from a loaded
 * pipeline to time its components one at a time (text encode, one DiT forward, VAE
 * decode) without loading the weights twice.
 *
 * Owner of the declarations: the CUDA/bench engineer (F). The definitions belong in
 * pipeline/pipeline.c (pipeline engineer, D), next to zi_pipeline_dit(); until they exist
 * cmd_bench.c references them weakly and reports the component timings as null.
 */
#ifndef ZI_PIPELINE_BENCH_H
#define ZI_PIPELINE_BENCH_H

#include "pipeline.h"
#include "qwen3.h"
#include "vae.h"

/* The pipeline's text encoder and VAE decoder (valid while p lives). */
zi_qwen3 *zi_pipeline_text_encoder(zi_pipeline *p);
zi_vae *zi_pipeline_vae(zi_pipeline *p);

#endif
