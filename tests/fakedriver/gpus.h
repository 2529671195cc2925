/* The fake GPUs' device count: how many /dev/nvidia<N> nodes this process can open far enough
 * to get ENXIO (the device cgroup allows the node; no driver is bound to the fake majors). A node
 * the cgroup denies gives EPERM and is not counted, exactly as a real driver's device is not
 * usable then. The minors found are returned in ascending order. */
#ifndef FAKEDRIVER_GPUS_H
#define FAKEDRIVER_GPUS_H

#define FAKE_MAX_GPUS 64

int fake_visible_minors(unsigned int *minors, unsigned int max);

/* name and UUID of the fake inventory's GPU with that minor (from the generated table) */
const char *fake_gpu_name(unsigned int minor);
const char *fake_gpu_uuid(unsigned int minor);

#endif
