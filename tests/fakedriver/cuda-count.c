/* For test images, not the host: dlopen("libcuda.so.1") through the container's loader and print
 * cuDeviceGetCount's answer ("0" when cuInit reports no device). Exit 1 when the library cannot be
 * loaded (message on stderr). */
#include <dlfcn.h>
#include <stdio.h>

int main(void)
{
    void *cuda = dlopen("libcuda.so.1", RTLD_NOW);
    int n = 0;

    if (cuda == NULL) {
        fprintf(stderr, "cuda-count: %s\n", dlerror());
        return 1;
    }
    int (*init)(unsigned int) = (int (*)(unsigned int))dlsym(cuda, "cuInit");
    int (*count)(int *) = (int (*)(int *))dlsym(cuda, "cuDeviceGetCount");
    if (init == NULL || count == NULL) {
        fprintf(stderr, "cuda-count: missing cuInit/cuDeviceGetCount\n");
        return 1;
    }
    int rc = init(0);
    if (rc == 0 && count(&n) != 0)
        return 1;
    printf("%d\n", rc == 100 ? 0 : n);
    return 0;
}
