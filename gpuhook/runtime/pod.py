"""Which pod a container belongs to, from the annotations the CRI writes into its spec: what the
decision log records so that `gpuhook explain POD` finds a pod by name.

Keys, transcribed from the engines' code:
- containerd 1.6 (pkg/cri/annotations/annotations.go, v1.6.20; set on sandboxes in
  pkg/cri/server/sandbox_run_linux.go and on containers in container_create_linux.go):
  io.kubernetes.cri.sandbox-namespace, io.kubernetes.cri.sandbox-name,
  io.kubernetes.cri.container-name (containers only), io.kubernetes.cri.sandbox-id.
- CRI-O (internal/factory/container/container.go and server/sandbox_run_linux.go, v1.24 to
  main): the kubelet's labels are copied into the spec's annotations, so a container carries
  io.kubernetes.pod.namespace, io.kubernetes.pod.name, io.kubernetes.container.name
  (k8s.io/kubelet pkg/types/labels.go), and CRI-O's own io.kubernetes.cri-o.SandboxID. Its
  io.kubernetes.cri-o.Namespace / ...ContainerName are set on sandboxes only.

The values come from the container's spec, so each is bounded and must be a string; JSON
encoding in the log escapes the rest.
"""

MAX_VALUE = 253  # a DNS subdomain, the longest Kubernetes object name

# field -> annotation keys, first found wins (containerd's first, then CRI-O's)
FIELDS = {
    "namespace": ("io.kubernetes.cri.sandbox-namespace", "io.kubernetes.pod.namespace",
                  "io.kubernetes.cri-o.Namespace"),
    "name": ("io.kubernetes.cri.sandbox-name", "io.kubernetes.pod.name"),
    "container": ("io.kubernetes.cri.container-name", "io.kubernetes.container.name"),
    "sandbox_id": ("io.kubernetes.cri.sandbox-id", "io.kubernetes.cri-o.SandboxID"),
}


def pod_identity(annotations: object) -> "dict[str, dict[str, str]]":
    """{"pod": {...}} with the fields found, or {} when the spec carries none (not a pod)."""
    if not isinstance(annotations, dict):
        return {}
    found: dict[str, str] = {}
    for field, keys in FIELDS.items():
        for key in keys:
            value = annotations.get(key)
            if isinstance(value, str) and value:
                found[field] = value[:MAX_VALUE]
                break
    return {"pod": found} if found else {}
