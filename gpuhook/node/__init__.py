"""gpuhook on a Kubernetes node, installed from a DaemonSet's container: a self-contained bundle
(payload.py), the engine's registration done in the host's root (hostroot.py), the engine's
restart (restart.py) and the install / undo sequence (install.py)."""
