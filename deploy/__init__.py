"""Deployment: the KubeRay manifests and serve/config.yaml, rendered from deploy/templates + deploy/values.yaml."""
