// Umbrella header for CUDA translation units: the host API plus every CUDA launcher.
#pragma once

#include "gecko/gecko.hpp"
#include "gecko/ops/group_norm/launch.cuh"
