/* A fake libcuda.so.<driver_version> (SONAME libcuda.so.1): cuInit, cuDeviceGetCount and
 * cuDriverGetVersion with the driver API's names and codes (cuda.h: CUDA_SUCCESS 0,
 * CUDA_ERROR_INVALID_VALUE 1, CUDA_ERROR_NOT_INITIALIZED 3, CUDA_ERROR_NO_DEVICE 100).
 * Devices: gpus.h. */
#include <stddef.h>

#include "gpus.h"

typedef int CUresult;

static int initialized;
static int count;

CUresult cuInit(unsigned int flags)
{
    unsigned int minors[FAKE_MAX_GPUS];

    if (flags != 0)
        return 1;
    count = fake_visible_minors(minors, FAKE_MAX_GPUS);
    initialized = 1;
    return count > 0 ? 0 : 100;
}

CUresult cuDeviceGetCount(int *n)
{
    if (n == NULL)
        return 1;
    if (!initialized)
        return 3;
    *n = count;
    return 0;
}

CUresult cuDriverGetVersion(int *version)
{
    if (version == NULL)
        return 1;
    *version = FAKE_CUDA_VERSION;
    return 0;
}
