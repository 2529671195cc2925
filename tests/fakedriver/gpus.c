#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "gpus.h"
#include "inventory.h" /* generated at build time: FAKE_GPUS[] = {{minor, name, uuid}, ...} */

static int cmp(const void *a, const void *b)
{
    unsigned int x = *(const unsigned int *)a, y = *(const unsigned int *)b;
    return (x > y) - (x < y);
}

int fake_visible_minors(unsigned int *minors, unsigned int max)
{
    DIR *dir = opendir("/dev");
    struct dirent *e;
    unsigned int n = 0;

    if (dir == NULL)
        return 0;
    while ((e = readdir(dir)) != NULL && n < max) {
        const char *p;
        char path[300];
        int fd;

        if (strncmp(e->d_name, "nvidia", 6) != 0 || e->d_name[6] == '\0')
            continue;
        for (p = e->d_name + 6; *p >= '0' && *p <= '9'; p++)
            ;
        if (*p != '\0' || p - e->d_name > 9)
            continue;
        strcpy(path, "/dev/");
        strcat(path, e->d_name);
        fd = open(path, O_RDWR | O_CLOEXEC);
        if (fd >= 0) {
            close(fd); /* a real device here: not one of ours, not counted */
            continue;
        }
        if (errno == ENXIO)
            minors[n++] = (unsigned int)strtoul(e->d_name + 6, NULL, 10);
    }
    closedir(dir);
    qsort(minors, n, sizeof(*minors), cmp);
    return (int)n;
}

static const struct fake_gpu *find(unsigned int minor)
{
    for (size_t i = 0; i < sizeof(FAKE_GPUS) / sizeof(FAKE_GPUS[0]); i++)
        if (FAKE_GPUS[i].minor == minor)
            return &FAKE_GPUS[i];
    return NULL;
}

const char *fake_gpu_name(unsigned int minor)
{
    const struct fake_gpu *g = find(minor);
    return g ? g->name : "Unknown Fake GPU";
}

const char *fake_gpu_uuid(unsigned int minor)
{
    const struct fake_gpu *g = find(minor);
    return g ? g->uuid : "GPU-00000000-0000-0000-0000-000000000000";
}
