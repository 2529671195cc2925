/* A fake libnvidia-ml.so.<driver_version> (SONAME libnvidia-ml.so.1): the handful of NVML entry
 * points `nvidia-smi -L` needs, with NVML's names, signatures and return codes (nvml.h: SUCCESS 0,
 * UNINITIALIZED 1, INVALID_ARGUMENT 2, INSUFFICIENT_SIZE 7). Devices: gpus.h. */
#include <stdio.h>
#include <string.h>

#include "gpus.h"

typedef int nvmlReturn_t;
typedef struct fake_device *nvmlDevice_t;
struct fake_device { unsigned int minor; };

static struct fake_device devices[FAKE_MAX_GPUS];
static unsigned int count;
static int initialized;

nvmlReturn_t nvmlInit_v2(void)
{
    unsigned int minors[FAKE_MAX_GPUS];
    int n = fake_visible_minors(minors, FAKE_MAX_GPUS);

    for (int i = 0; i < n; i++)
        devices[i].minor = minors[i];
    count = (unsigned int)n;
    initialized = 1;
    return 0;
}

nvmlReturn_t nvmlInit(void) { return nvmlInit_v2(); }

nvmlReturn_t nvmlShutdown(void)
{
    initialized = 0;
    return 0;
}

nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *n)
{
    if (!initialized)
        return 1;
    if (n == NULL)
        return 2;
    *n = count;
    return 0;
}

nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int index, nvmlDevice_t *device)
{
    if (!initialized)
        return 1;
    if (index >= count || device == NULL)
        return 2;
    *device = &devices[index];
    return 0;
}

static nvmlReturn_t copy(const char *value, char *out, unsigned int length)
{
    if (out == NULL)
        return 2;
    if (strlen(value) + 1 > length)
        return 7;
    strcpy(out, value);
    return 0;
}

nvmlReturn_t nvmlDeviceGetName(nvmlDevice_t device, char *name, unsigned int length)
{
    return device ? copy(fake_gpu_name(device->minor), name, length) : 2;
}

nvmlReturn_t nvmlDeviceGetUUID(nvmlDevice_t device, char *uuid, unsigned int length)
{
    return device ? copy(fake_gpu_uuid(device->minor), uuid, length) : 2;
}

nvmlReturn_t nvmlDeviceGetMinorNumber(nvmlDevice_t device, unsigned int *minor)
{
    if (device == NULL || minor == NULL)
        return 2;
    *minor = device->minor;
    return 0;
}

nvmlReturn_t nvmlSystemGetDriverVersion(char *version, unsigned int length)
{
    return copy(FAKE_DRIVER_VERSION, version, length);
}

const char *nvmlErrorString(nvmlReturn_t result)
{
    switch (result) {
    case 0: return "Success";
    case 1: return "Uninitialized";
    case 2: return "Invalid Argument";
    case 7: return "Insufficient Size";
    default: return "Unknown Error";
    }
}
