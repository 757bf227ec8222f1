// Compiler portability macros shared by every gecko header.
#pragma once

#if defined(__CUDACC__)
#define GECKO_HOST_DEVICE __host__ __device__
#define GECKO_DEVICE __device__
#else
#define GECKO_HOST_DEVICE
#define GECKO_DEVICE
#endif

#define GECKO_VERSION_MAJOR 0
#define GECKO_VERSION_MINOR 1
#define GECKO_VERSION_PATCH 0
