"""Host facts under host-root (proc/devices, mig-minors, capability modes; driver files and the
ld.so.cache parser): pure parsers on text, thin readers over HostPaths."""
