"""Offline checks of the Kubernetes manifests (deploy/kubernetes)."""
