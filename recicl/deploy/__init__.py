"""Deployment artefacts generated from the project's own configs (KubeRay manifests)."""
