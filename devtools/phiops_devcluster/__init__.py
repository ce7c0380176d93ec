"""Development and test tooling: a real local Kubernetes control plane and a node runtime.

Nothing here ships in an image. In production the cluster and its kubelets do this work.
"""
