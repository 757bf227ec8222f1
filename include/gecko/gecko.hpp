// Umbrella header: everything host code may include (CPU references, arguments, I/O).
// CUDA launchers (*.cuh) are included separately from .cu translation units.
#pragma once

#include "gecko/core/buffer.hpp"
#include "gecko/core/device.hpp"
#include "gecko/core/dtype.hpp"
#include "gecko/core/status.hpp"
#include "gecko/core/tensor_view.hpp"
#include "gecko/io/safetensors.hpp"
#include "gecko/layers/block/reference.hpp"
#include "gecko/layers/config.hpp"
#include "gecko/layers/init.hpp"
#include "gecko/layers/mega/reference.hpp"
#include "gecko/layers/nffn/reference.hpp"
#include "gecko/layers/parameters.hpp"
#include "gecko/ops/cema/reference.hpp"
#include "gecko/ops/group_norm/args.hpp"
#include "gecko/ops/group_norm/reference.hpp"
#include "gecko/ops/rope/reference.hpp"
#include "gecko/ops/sliding_chunk_attention/reference.hpp"
#include "gecko/ops/timestep_norm/reference.hpp"
#include "gecko/ops/working_memory/reference.hpp"
