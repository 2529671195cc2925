"""A small, typed CRI client over the compiled runtime.v1 slice: enough to run one pod sandbox in
the host network namespace and one container in it, the way the kubelet would."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc

from tests.e2e.cri.protos import compile_proto

CONTAINER_EXITED = 2


@dataclass(frozen=True)
class ExecResult:
    exit_code: int
    stdout: str
    stderr: str


@dataclass(frozen=True)
class ContainerState:
    state: int
    exit_code: int
    reason: str
    message: str
    log_path: str


@dataclass
class CriClient:
    socket: Path
    gen_dir: Path
    timeout: float = 60.0
    pb: ModuleType = field(init=False)
    _channel: Any = field(init=False)
    _stub: Any = field(init=False)

    def __post_init__(self) -> None:
        self.pb, grpc_mod = compile_proto(self.gen_dir)
        self._channel = grpc.insecure_channel(f"unix://{self.socket}")
        self._stub = grpc_mod.RuntimeServiceStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def version(self) -> tuple[str, str]:
        resp = self._stub.Version(self.pb.VersionRequest(version="v1"), timeout=self.timeout)
        return str(resp.runtime_name), str(resp.runtime_version)

    def sandbox_config(
        self, name: str, uid: str, log_dir: Path, cgroup_parent: str = "", privileged: bool = False
    ) -> Any:
        """A pod in the host network namespace: no CNI is needed (or installed). A privileged pod
        may hold privileged and unprivileged containers alike."""
        pb = self.pb
        return pb.PodSandboxConfig(
            metadata=pb.PodSandboxMetadata(name=name, uid=uid, namespace="gpuhook-e2e"),
            # no hostname: a host-network pod shares the host's UTS namespace, so runc could
            # not set one ("unable to set hostname without a private UTS namespace").
            log_directory=str(log_dir),
            linux=pb.LinuxPodSandboxConfig(
                cgroup_parent=cgroup_parent,
                security_context=pb.LinuxSandboxSecurityContext(
                    namespace_options=pb.NamespaceOption(network=pb.NODE), privileged=privileged
                ),
            ),
        )

    def run_pod_sandbox(self, config: Any, runtime_handler: str) -> str:
        req = self.pb.RunPodSandboxRequest(config=config, runtime_handler=runtime_handler)
        return str(self._stub.RunPodSandbox(req, timeout=self.timeout).pod_sandbox_id)

    def stop_pod_sandbox(self, pod_id: str) -> None:
        req = self.pb.StopPodSandboxRequest(pod_sandbox_id=pod_id)
        self._stub.StopPodSandbox(req, timeout=self.timeout)

    def remove_pod_sandbox(self, pod_id: str) -> None:
        req = self.pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id)
        self._stub.RemovePodSandbox(req, timeout=self.timeout)

    def create_container(
        self,
        pod_id: str,
        sandbox_config: Any,
        *,
        name: str,
        image: str,
        command: list[str],
        env: Mapping[str, str] | Sequence[tuple[str, str]],
        mounts: Sequence[tuple[str, str] | tuple[str, str, bool]],
        log_path: str,
        privileged: bool = False,
        annotations: Mapping[str, str] | None = None,
    ) -> str:
        """`mounts` are (host_path, container_path[, readonly]) (read-only unless said); `env` a
        mapping or, as the kubelet may send it, pairs with a key given twice."""
        pb = self.pb
        pairs = env.items() if isinstance(env, Mapping) else env
        config = pb.ContainerConfig(
            metadata=pb.ContainerMetadata(name=name),
            image=pb.ImageSpec(image=image),
            command=command,
            envs=[pb.KeyValue(key=k, value=v) for k, v in pairs],
            mounts=[
                pb.Mount(host_path=m[0], container_path=m[1], readonly=m[2] if len(m) > 2 else True)
                for m in mounts
            ],
            annotations=dict(annotations or {}),
            log_path=log_path,
            linux=pb.LinuxContainerConfig(
                security_context=pb.LinuxContainerSecurityContext(
                    privileged=privileged,
                    namespace_options=pb.NamespaceOption(network=pb.NODE),
                )
            ),
        )
        req = pb.CreateContainerRequest(
            pod_sandbox_id=pod_id, config=config, sandbox_config=sandbox_config
        )
        return str(self._stub.CreateContainer(req, timeout=self.timeout).container_id)

    def create_container_from(self, pod_id: str, sandbox_config: Any, config: Any) -> str:
        """CreateContainer with a ContainerConfig built by the caller (tests/e2e/kubelet.py)."""
        req = self.pb.CreateContainerRequest(
            pod_sandbox_id=pod_id, config=config, sandbox_config=sandbox_config
        )
        return str(self._stub.CreateContainer(req, timeout=self.timeout).container_id)

    def start_container(self, container_id: str) -> None:
        req = self.pb.StartContainerRequest(container_id=container_id)
        self._stub.StartContainer(req, timeout=self.timeout)

    def stop_container(self, container_id: str, timeout_s: int = 5) -> None:
        req = self.pb.StopContainerRequest(container_id=container_id, timeout=timeout_s)
        self._stub.StopContainer(req, timeout=self.timeout)

    def remove_container(self, container_id: str) -> None:
        req = self.pb.RemoveContainerRequest(container_id=container_id)
        self._stub.RemoveContainer(req, timeout=self.timeout)

    def container_status(self, container_id: str) -> ContainerState:
        req = self.pb.ContainerStatusRequest(container_id=container_id)
        st = self._stub.ContainerStatus(req, timeout=self.timeout).status
        return ContainerState(
            state=int(st.state),
            exit_code=int(st.exit_code),
            reason=str(st.reason),
            message=str(st.message),
            log_path=str(st.log_path),
        )

    def wait_exited(self, container_id: str, timeout: float = 30.0) -> ContainerState:
        deadline = time.monotonic() + timeout
        while True:
            st = self.container_status(container_id)
            if st.state == CONTAINER_EXITED or time.monotonic() > deadline:
                return st
            time.sleep(0.05)

    def exec_sync(self, container_id: str, cmd: list[str], timeout_s: int = 20) -> ExecResult:
        req = self.pb.ExecSyncRequest(container_id=container_id, cmd=cmd, timeout=timeout_s)
        resp = self._stub.ExecSync(req, timeout=self.timeout)
        return ExecResult(
            exit_code=int(resp.exit_code),
            stdout=resp.stdout.decode(errors="replace"),
            stderr=resp.stderr.decode(errors="replace"),
        )


@contextlib.contextmanager
def running_pod(cri: CriClient, config: Any, runtime_handler: str) -> Iterator[str]:
    """A pod sandbox for the block (its id), stopped and removed after it as the kubelet does;
    then the client is closed, also when that fails or the sandbox did not start."""
    try:
        pod_id = cri.run_pod_sandbox(config, runtime_handler=runtime_handler)
        try:
            yield pod_id
        finally:
            cri.stop_pod_sandbox(pod_id)
            cri.remove_pod_sandbox(pod_id)
    finally:
        cri.close()


def read_cri_log(path: Path) -> str:
    """The message text of a CRI container log (lines `<time> <stream> <P|F> <message>`), with
    partial lines joined."""
    out: list[str] = []
    for line in path.read_text(errors="replace").splitlines():
        parts = line.split(" ", 3)
        if len(parts) < 3:
            continue
        msg = parts[3] if len(parts) == 4 else ""
        out.append(msg if parts[2] == "P" else msg + "\n")
    return "".join(out)
