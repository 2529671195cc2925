"""Tiny OCI image tarballs written with the standard library only, for `ctr image import` and for
podman's `--rootfs`: one uncompressed layer holding the static busybox and its applet symlinks.

No registry is reachable in CI, so the e2e tests build their own images: a busybox "probe" image
whose command the test chooses, and a "pause" image used as containerd's CRI `sandbox_image`
(a shell loop that sleeps until SIGTERM)."""

from __future__ import annotations

import hashlib
import io
import json
import platform
import shutil
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

BUSYBOX_CANDIDATES = ("/bin/busybox", "/usr/bin/busybox")

# Applets the probes and the pause loop use; everything else stays reachable as `busybox <applet>`.
APPLETS = (
    "sh", "cat", "echo", "ls", "mknod", "sleep", "head", "stat", "grep", "env", "true", "false",
    "mkdir", "rm", "printf", "test", "[", "id", "tr", "wc", "dd",
)  # fmt: skip

# Sleeps in the background and waits, so the TERM trap runs at once (a foreground `sleep` would
# delay the trap until it returned). Exits 0 on TERM/INT, like the real pause container.
PAUSE_SCRIPT = "trap 'exit 0' TERM INT; while :; do sleep 3600 & wait $!; done"

DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER = "application/vnd.oci.image.layer.v1.tar"

# Fixed mtime: the same busybox gives the same layer digest on every run.
EPOCH = 1_700_000_000


def find_busybox() -> Path | None:
    """The static busybox (Debian's busybox-static installs /bin/busybox)."""
    for cand in BUSYBOX_CANDIDATES:
        p = Path(cand)
        if p.is_file():
            return p
    which = shutil.which("busybox")
    return Path(which) if which else None


def oci_arch() -> str:
    machine = platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "ppc64le": "ppc64le"}.get(
        machine, machine
    )


@dataclass(frozen=True)
class ImageSpec:
    """What goes into an image config (OCI image-spec `config` section)."""

    name: str  # full reference, e.g. "docker.io/library/gpuhook-busybox:e2e"
    entrypoint: list[str] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)
    env: list[str] = field(default_factory=lambda: [DEFAULT_PATH])


def _tar_dir(tf: tarfile.TarFile, name: str) -> None:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = 0o755
    info.mtime = EPOCH
    tf.addfile(info)


def busybox_layer(busybox: Path) -> bytes:
    """An uncompressed layer tar: /bin/busybox, applet symlinks, and the empty directories a
    runtime expects to mount over (/dev, /proc, /sys, /tmp, /etc, /var/run)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for d in ("bin", "dev", "proc", "sys", "tmp", "etc", "var", "var/run", "run", "root"):
            _tar_dir(tf, d)
        data = busybox.read_bytes()
        info = tarfile.TarInfo("bin/busybox")
        info.size = len(data)
        info.mode = 0o755
        info.mtime = EPOCH
        tf.addfile(info, io.BytesIO(data))
        for applet in APPLETS:
            link = tarfile.TarInfo(f"bin/{applet}")
            link.type = tarfile.SYMTYPE
            link.linkname = "busybox"
            link.mode = 0o777
            link.mtime = EPOCH
            tf.addfile(link)
        for fname, text in (
            ("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n"),
            ("etc/group", "root:x:0:\n"),
        ):
            raw = text.encode()
            info = tarfile.TarInfo(fname)
            info.size = len(raw)
            info.mode = 0o644
            info.mtime = EPOCH
            tf.addfile(info, io.BytesIO(raw))
    return buf.getvalue()


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _canonical(obj: object) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def _add_bytes(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    info.mtime = EPOCH
    tf.addfile(info, io.BytesIO(data))


def pause_image(name: str) -> ImageSpec:
    """A pod sandbox image: busybox sh that waits until it is stopped."""
    return ImageSpec(name, entrypoint=["/bin/sh", "-c", PAUSE_SCRIPT])


def write_pod_images(dest: Path, image: ImageSpec, pause: str) -> Path:
    """An OCI archive of a test's container image and its pod's pause image `pause`, both on
    the static busybox (the e2e files' skips check find_busybox first)."""
    busybox = find_busybox()
    assert busybox is not None
    return write_oci_archive(dest, [image, pause_image(pause)], busybox)


def write_oci_archive(dest: Path, images: list[ImageSpec], busybox: Path) -> Path:
    """Write an OCI image-layout tarball holding `images` (all sharing one busybox layer).
    Each manifest is annotated with its full name (`io.containerd.image.name`, which
    `ctr image import` uses as the image name) and its tag (`org.opencontainers.image.ref.name`)."""
    layer = busybox_layer(busybox)
    layer_desc = {"mediaType": MEDIA_LAYER, "digest": _digest(layer), "size": len(layer)}
    blobs: dict[str, bytes] = {layer_desc["digest"]: layer}  # type: ignore[dict-item]
    manifests: list[dict[str, object]] = []
    for img in images:
        config = {
            "architecture": oci_arch(),
            "os": "linux",
            "created": "2023-11-14T22:13:20Z",
            "config": {"Env": img.env, "Entrypoint": img.entrypoint or None, "Cmd": img.cmd or None,
                       "WorkingDir": "/"},
            "rootfs": {"type": "layers", "diff_ids": [layer_desc["digest"]]},
            "history": [{"created": "2023-11-14T22:13:20Z", "created_by": "gpuhook tests"}],
        }  # fmt: skip
        config_raw = _canonical(config)
        manifest = {
            "schemaVersion": 2,
            "mediaType": MEDIA_MANIFEST,
            "config": {"mediaType": MEDIA_CONFIG, "digest": _digest(config_raw),
                       "size": len(config_raw)},
            "layers": [layer_desc],
        }  # fmt: skip
        manifest_raw = _canonical(manifest)
        blobs[_digest(config_raw)] = config_raw
        blobs[_digest(manifest_raw)] = manifest_raw
        tag = img.name.rsplit(":", 1)[1] if ":" in img.name.rsplit("/", 1)[-1] else "latest"
        manifests.append(
            {
                "mediaType": MEDIA_MANIFEST,
                "digest": _digest(manifest_raw),
                "size": len(manifest_raw),
                "platform": {"architecture": oci_arch(), "os": "linux"},
                "annotations": {
                    "io.containerd.image.name": img.name,
                    "org.opencontainers.image.ref.name": tag,
                },
            }
        )
    index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
             "manifests": manifests}  # fmt: skip
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(dest, mode="w", format=tarfile.PAX_FORMAT) as tf:
        _add_bytes(tf, "oci-layout", _canonical({"imageLayoutVersion": "1.0.0"}))
        _add_bytes(tf, "index.json", _canonical(index))
        _tar_dir(tf, "blobs")
        _tar_dir(tf, "blobs/sha256")
        for digest, data in sorted(blobs.items()):
            _add_bytes(tf, "blobs/sha256/" + digest.split(":", 1)[1], data)
    return dest


def write_rootfs(dest: Path, busybox: Path) -> Path:
    """Unpack the same busybox layer into a directory: a rootfs for `podman run --rootfs` or a
    runc bundle."""
    dest.mkdir(parents=True, exist_ok=True)
    # Python 3.11.2 has no extraction filters; the layer is ours and holds only plain members.
    with tarfile.open(fileobj=io.BytesIO(busybox_layer(busybox)), mode="r") as tf:
        for member in tf.getmembers():
            target = dest / member.name
            if member.isdir():
                target.mkdir(mode=0o755, exist_ok=True)
            elif member.issym():
                if not target.is_symlink():
                    target.symlink_to(member.linkname)
            elif member.isfile():
                src = tf.extractfile(member)
                assert src is not None
                target.write_bytes(src.read())
                target.chmod(member.mode)
    return dest
