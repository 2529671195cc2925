"""A pod spec's container as the kubelet hands it to the CRI, for the parts these tests take
from deploy/kubernetes: hostPath volume mounts, env and the container's securityContext, and
the RuntimeClass's handler. The mapping is field for field, as the kubelet's
determineEffectiveSecurityContext (pkg/kubelet/kuberuntime/security_context.go) and
makeMounts (kubelet_pods.go) do it:

- volumeMounts of hostPath volumes -> Mount{host_path, container_path, readonly};
- securityContext.capabilities.add/drop -> Capability{add_capabilities, drop_capabilities}
  (as written, "ALL" included); privileged -> privileged; readOnlyRootFilesystem ->
  readonly_rootfs; runAsUser -> run_as_user; allowPrivilegeEscalation: false -> no_new_privs;
  seccompProfile RuntimeDefault -> seccomp{RuntimeDefault}.

What a test cannot reproduce is passed in and says so: `host_paths` maps a hostPath this machine
lacks (the kubelet's /var/lib/kubelet/...) to a stand-in directory; the image and command are the
test's busybox probe (the device plugin's image is not available offline).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def mounts(pod_spec: Mapping[str, Any], container: Mapping[str, Any],
           host_paths: Mapping[str, str]) -> list[tuple[str, str, bool]]:
    """(host path, container path, read-only) for every hostPath volume mount."""
    volumes = {v["name"]: v for v in pod_spec.get("volumes", [])}
    out = []
    for m in container.get("volumeMounts", []):
        v = volumes[m["name"]]
        if "hostPath" not in v:
            continue  # configMap etc.: not a host path, not used by these tests
        path = v["hostPath"]["path"]
        out.append((host_paths.get(path, path), m["mountPath"], bool(m.get("readOnly", False))))
    return out


def security_context(pb: Any, sc: Mapping[str, Any]) -> Any:
    caps = sc.get("capabilities", {})
    kwargs: dict[str, Any] = {
        "capabilities": pb.Capability(add_capabilities=caps.get("add", []),
                                      drop_capabilities=caps.get("drop", [])),
        "privileged": bool(sc.get("privileged", False)),
        "readonly_rootfs": bool(sc.get("readOnlyRootFilesystem", False)),
        "no_new_privs": sc.get("allowPrivilegeEscalation") is False,
        "namespace_options": pb.NamespaceOption(network=pb.NODE),  # no CNI on the test machine
    }
    if "runAsUser" in sc:
        kwargs["run_as_user"] = pb.Int64Value(value=int(sc["runAsUser"]))
    seccomp = (sc.get("seccompProfile") or {}).get("type")
    if seccomp == "RuntimeDefault":
        kwargs["seccomp"] = pb.SecurityProfile(profile_type=pb.SecurityProfile.RuntimeDefault)
    elif seccomp is not None:
        raise ValueError(f"seccompProfile {seccomp!r} is not translated by this test helper")
    return pb.LinuxContainerSecurityContext(**kwargs)


def container_config(pb: Any, pod_spec: Mapping[str, Any], container: Mapping[str, Any], *,
                     name: str, image: str, command: list[str], log_path: str,
                     host_paths: Mapping[str, str]) -> Any:
    env = [pb.KeyValue(key=e["name"], value=e.get("value", "")) for e in container.get("env", [])]
    return pb.ContainerConfig(
        metadata=pb.ContainerMetadata(name=name),
        image=pb.ImageSpec(image=image),
        command=command,
        envs=env,
        mounts=[pb.Mount(host_path=h, container_path=c, readonly=ro)
                for h, c, ro in mounts(pod_spec, container, host_paths)],
        log_path=log_path,
        linux=pb.LinuxContainerConfig(
            security_context=security_context(pb, container.get("securityContext", {}))),
    )


def podman_args(pod_spec: Mapping[str, Any], container: Mapping[str, Any], *, host_root: str,
                config_maps: Mapping[str, str]) -> list[str]:
    """`podman run` flags for the same pod spec, for running a DaemonSet's image on a sandbox
    node: every hostPath is taken under `host_root` (the sandbox plays the host's /), a
    configMap volume is the directory `config_maps[name]`; the rest as the kubelet sets it up
    (hostPID -> --pid host; capabilities; allowPrivilegeEscalation: false ->
    no-new-privileges; readOnlyRootFilesystem -> --read-only without podman's extra tmpfs;
    runAsUser; command replaces the image's entrypoint; terminationGracePeriodSeconds -> stop
    timeout). The pod network is `none` (no CNI here; the installer uses no network). Fields
    this helper does not know fail the translation instead of being dropped."""
    known_pod = {"serviceAccountName", "automountServiceAccountToken", "priorityClassName",
                 "securityContext", "hostPID", "nodeSelector", "tolerations",
                 "terminationGracePeriodSeconds", "containers", "volumes"}
    known_ctr = {"name", "image", "imagePullPolicy", "command", "env", "securityContext",
                 "readinessProbe", "resources", "volumeMounts"}
    unknown = (set(pod_spec) - known_pod) | (set(container) - known_ctr)
    if unknown:
        raise ValueError(f"not translated to podman: {sorted(unknown)}")
    args = ["--network", "none"]
    if pod_spec.get("hostPID"):
        args += ["--pid", "host"]
    sc = container.get("securityContext", {})
    if sc.get("privileged"):
        args.append("--privileged")
    for cap in sc.get("capabilities", {}).get("drop", []):
        args += ["--cap-drop", cap]
    for cap in sc.get("capabilities", {}).get("add", []):
        args += ["--cap-add", cap]
    if sc.get("allowPrivilegeEscalation") is False:
        args += ["--security-opt", "no-new-privileges"]
    if sc.get("readOnlyRootFilesystem"):
        args += ["--read-only", "--read-only-tmpfs=false"]
    if "runAsUser" in sc:
        args += ["--user", str(sc["runAsUser"])]
    seccomp = (sc.get("seccompProfile") or (pod_spec.get("securityContext") or {}).get(
        "seccompProfile") or {}).get("type")
    if seccomp not in (None, "RuntimeDefault"):  # RuntimeDefault: podman's default profile
        raise ValueError(f"seccompProfile {seccomp!r} not translated")
    volumes = {v["name"]: v for v in pod_spec.get("volumes", [])}
    for m in container.get("volumeMounts", []):
        v = volumes[m["name"]]
        if "hostPath" in v:
            src = f"{host_root.rstrip('/')}/{v['hostPath']['path'].lstrip('/')}"
        elif "configMap" in v:
            src = config_maps[v["configMap"]["name"]]
        else:
            raise ValueError(f"volume {m['name']}: only hostPath and configMap are translated")
        args += ["-v", f"{src}:{m['mountPath']}" + (":ro" if m.get("readOnly") else "")]
    for e in container.get("env", []):
        args += ["--env", f"{e['name']}={e['value']}"]
    if "terminationGracePeriodSeconds" in pod_spec:
        args += ["--stop-timeout", str(pod_spec["terminationGracePeriodSeconds"])]
    command = list(container["command"])
    return [*args, "--entrypoint", command[0], container["image"], *command[1:]]
