// ST_HOST_DEVICE marks the small functions that the C++ CPU kernel and the CUDA kernel share.
#pragma once

#if defined(__CUDACC__)
#define ST_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define ST_HOST_DEVICE inline
#endif
