/* A fake nvidia-smi: only `-L`. Like the real one it loads NVML at run time by its SONAME, so it
 * works only when the container's loader finds libnvidia-ml.so.1. Output lines and exit codes as
 * nvidia-smi(1) documents them: "GPU <i>: <name> (UUID: <uuid>)", "No devices were found" (6),
 * NVML library not found (12). */
#include <dlfcn.h>
#include <stdio.h>
#include <string.h>

typedef int (*init_fn)(void);
typedef int (*count_fn)(unsigned int *);
typedef int (*handle_fn)(unsigned int, void **);
typedef int (*str_fn)(void *, char *, unsigned int);

int main(int argc, char **argv)
{
    void *nvml;
    unsigned int n = 0;

    if (argc != 2 || strcmp(argv[1], "-L") != 0) {
        fprintf(stderr, "fake nvidia-smi: only -L is implemented\n");
        return 2;
    }
    nvml = dlopen("libnvidia-ml.so.1", RTLD_NOW);
    if (nvml == NULL) {
        printf("NVIDIA-SMI couldn't find libnvidia-ml.so library in your system. "
               "Please make sure that the NVIDIA Display Driver is properly installed "
               "and present in your system.\n");
        return 12;
    }
    init_fn init = (init_fn)dlsym(nvml, "nvmlInit_v2");
    count_fn count = (count_fn)dlsym(nvml, "nvmlDeviceGetCount_v2");
    handle_fn handle = (handle_fn)dlsym(nvml, "nvmlDeviceGetHandleByIndex_v2");
    str_fn name = (str_fn)dlsym(nvml, "nvmlDeviceGetName");
    str_fn uuid = (str_fn)dlsym(nvml, "nvmlDeviceGetUUID");
    if (!init || !count || !handle || !name || !uuid || init() != 0 || count(&n) != 0) {
        printf("Failed to initialize NVML: Unknown Error\n");
        return 255;
    }
    if (n == 0) {
        printf("No devices were found\n");
        return 6;
    }
    for (unsigned int i = 0; i < n; i++) {
        void *dev;
        char nb[96], ub[96];
        if (handle(i, &dev) != 0 || name(dev, nb, sizeof nb) != 0 || uuid(dev, ub, sizeof ub) != 0)
            return 255;
        printf("GPU %u: %s (UUID: %s)\n", i, nb, ub);
    }
    return 0;
}
