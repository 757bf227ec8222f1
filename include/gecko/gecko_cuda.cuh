// Umbrella header for CUDA translation units: the host API plus every CUDA launcher and the GPU
// block (training and streaming).
#pragma once

#include "gecko/gecko.hpp"
#include "gecko/layers/cuda/block.cuh"
#include "gecko/layers/cuda/feedforward.cuh"
#include "gecko/layers/cuda/stream.cuh"
#include "gecko/ops/cema/launch.cuh"
#include "gecko/ops/gated_combine/launch.cuh"
#include "gecko/ops/group_norm/launch.cuh"
#include "gecko/ops/linear/launch.cuh"
#include "gecko/ops/qk_views/launch.cuh"
#include "gecko/ops/sliding_chunk_attention/launch.cuh"
#include "gecko/ops/sliding_chunk_attention/launch_gemm.cuh"
#include "gecko/ops/swiglu/launch.cuh"
#include "gecko/ops/timestep_norm/launch.cuh"
#include "gecko/ops/working_memory/launch_cublas.cuh"
