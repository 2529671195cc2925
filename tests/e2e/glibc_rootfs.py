"""A glibc-capable test image: busybox plus the host's loader and libc, so that dynamically
linked programs (the fake nvidia-smi, a `dlopen("libcuda.so.1")` program) run in the container
and its loader resolves libraries through its own `/etc/ld.so.cache`, like a CUDA base image.

    base = build_glibc_rootfs(tmp / "glibc-rootfs", programs={"cuda-count": path})

Layout (Debian's, which is what the image's loader and gpuhook's library-dir choice read):
- lib64/ld-linux-x86-64.so.2 (PT_INTERP of every x86-64 program), usr/lib/x86_64-linux-gnu/
  libc.so.6 and libdl.so.2 (glibc >= 2.34 keeps a libdl.so.2 stub for old programs), with
  lib -> usr/lib as Debian 12's merged /usr has it;
- etc/debian_version, etc/ld.so.conf (`include /etc/ld.so.conf.d/*.conf`), etc/ld.so.conf.d/
  and etc/ld.so.cache written by the real `ldconfig -r` (the image's own cache);
- sbin/ldconfig: a copy of the host's static ldconfig, so `ldconfig -p` works in the container
  (tests read the cache with it; gpuhook never runs an image's ldconfig, and an attack test
  replaces this one with a trap);
- usr/local/bin/<name> for each test program.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path

from tests.e2e.runc_harness import MINIMAL_ENV, build_rootfs

LOADER = Path("/lib64/ld-linux-x86-64.so.2")
HOST_LIBDIR = Path("/lib/x86_64-linux-gnu")
LIBS = ("libc.so.6", "libdl.so.2")
HOST_LDCONFIG = Path("/sbin/ldconfig")
IMAGE_LIBDIR = "usr/lib/x86_64-linux-gnu"
EXTRA_APPLETS = ("grep", "wc", "sha256sum", "readlink", "mount", "head", "rm")


def skip_reason() -> str | None:
    for p in (LOADER, HOST_LIBDIR / "libc.so.6", HOST_LDCONFIG):
        if not p.exists():
            return f"{p} is missing: the glibc test image copies the host's loader and libc"
    return None


def build_glibc_rootfs(dest: Path, programs: Mapping[str, Path] = {}) -> Path:
    build_rootfs(dest)
    for name in EXTRA_APPLETS:
        link = dest / "bin" / name
        if not link.is_symlink():
            link.symlink_to("busybox")
    (dest / IMAGE_LIBDIR).mkdir(parents=True, exist_ok=True)
    (dest / "lib64").mkdir(exist_ok=True)
    if not (dest / "lib").exists():
        (dest / "lib").symlink_to("usr/lib")
    shutil.copy2(LOADER.resolve(), dest / "lib64" / LOADER.name)
    for lib in LIBS:
        src = HOST_LIBDIR / lib
        if src.exists():
            shutil.copy2(src.resolve(), dest / IMAGE_LIBDIR / lib)
    (dest / "sbin").mkdir(exist_ok=True)
    shutil.copy2(HOST_LDCONFIG, dest / "sbin" / "ldconfig")
    (dest / "usr" / "local" / "bin").mkdir(parents=True, exist_ok=True)
    for name, path in programs.items():
        shutil.copy2(path, dest / "usr" / "local" / "bin" / name)
    etc = dest / "etc"
    (etc / "debian_version").write_text("12.0\n")
    (etc / "ld.so.conf").write_text("include /etc/ld.so.conf.d/*.conf\n")
    (etc / "ld.so.conf.d").mkdir(exist_ok=True)
    subprocess.run([str(HOST_LDCONFIG), "-r", str(dest)], check=True, env=MINIMAL_ENV,
                   capture_output=True)
    os.chmod(dest, 0o755)
    return dest


def write_image_archive(dest: Path, name: str, rootfs: Path) -> Path:
    """`rootfs` as a one-layer OCI image-layout tarball named `name` (for `ctr image import`),
    in the same format tests/e2e/oci_image.py writes for busybox."""
    import io
    import json
    import tarfile

    from tests.e2e import oci_image as oi

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for dirpath, dirnames, filenames in os.walk(rootfs):
            dirnames.sort()
            for entry in sorted(dirnames + filenames):
                path = Path(dirpath) / entry
                info = tf.gettarinfo(str(path), arcname=str(path.relative_to(rootfs)))
                info.mtime, info.uid, info.gid, info.uname, info.gname = oi.EPOCH, 0, 0, "", ""
                if info.isreg():
                    with path.open("rb") as f:
                        tf.addfile(info, f)
                else:
                    tf.addfile(info)
    layer = buf.getvalue()
    layer_digest = oi._digest(layer)
    config = {"architecture": oi.oci_arch(), "os": "linux", "created": "2023-11-14T22:13:20Z",
              "config": {"Env": [oi.DEFAULT_PATH], "Cmd": ["sh"], "WorkingDir": "/"},
              "rootfs": {"type": "layers", "diff_ids": [layer_digest]}}
    config_raw = oi._canonical(config)
    manifest = {"schemaVersion": 2, "mediaType": oi.MEDIA_MANIFEST,
                "config": {"mediaType": oi.MEDIA_CONFIG, "digest": oi._digest(config_raw),
                           "size": len(config_raw)},
                "layers": [{"mediaType": oi.MEDIA_LAYER, "digest": layer_digest,
                            "size": len(layer)}]}
    manifest_raw = oi._canonical(manifest)
    tag = name.rsplit(":", 1)[1]
    index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
             "manifests": [{"mediaType": oi.MEDIA_MANIFEST, "digest": oi._digest(manifest_raw),
                            "size": len(manifest_raw),
                            "platform": {"architecture": oi.oci_arch(), "os": "linux"},
                            "annotations": {"io.containerd.image.name": name,
                                            "org.opencontainers.image.ref.name": tag}}]}
    with tarfile.open(dest, mode="w", format=tarfile.PAX_FORMAT) as tf:
        oi._add_bytes(tf, "oci-layout", json.dumps({"imageLayoutVersion": "1.0.0"}).encode())
        oi._add_bytes(tf, "index.json", oi._canonical(index))
        oi._tar_dir(tf, "blobs")
        oi._tar_dir(tf, "blobs/sha256")
        for blob in (layer, config_raw, manifest_raw):
            oi._add_bytes(tf, "blobs/sha256/" + oi._digest(blob).split(":", 1)[1], blob)
    return dest
