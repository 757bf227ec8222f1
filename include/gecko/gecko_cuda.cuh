// Umbrella header for CUDA translation units: the host API plus every CUDA launcher.
#pragma once

#include "gecko/gecko.hpp"
#include "gecko/ops/gated_combine/launch.cuh"
#include "gecko/ops/group_norm/launch.cuh"
#include "gecko/ops/linear/launch.cuh"
#include "gecko/ops/qk_views/launch.cuh"
#include "gecko/ops/swiglu/launch.cuh"
