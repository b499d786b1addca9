"""The Kubernetes API, reached through the kubeconfig setup-cluster wrote (same identity as gcloud)."""

from __future__ import annotations

import os

from gptoss_gke.errors import CannotObserve

# What steps that talk to the Kubernetes API import (see Step.sdk_modules).
SDK = ("kubernetes.client", "kubernetes.config", "kubernetes.dynamic", "kubernetes.stream")


class Kube:
    def __init__(self, api_client):
        from kubernetes import client, dynamic

        self.api_client = api_client
        self.dynamic = dynamic.DynamicClient(api_client)
        self.core = client.CoreV1Api(api_client)

    def resource(self, api_version: str, kind: str):
        return self.dynamic.resources.get(api_version=api_version, kind=kind)


def kube(ctx) -> Kube:
    """One client per run; CannotObserve when there is no kubeconfig/context or no API server."""

    def connect() -> Kube:
        from kubernetes import config
        from kubernetes.config.config_exception import ConfigException

        s = ctx.settings
        path = s.kubeconfig_path
        fix = "run `inv setup-cluster` (it writes the kubeconfig context), or set kube.kubeconfig/kube.context"
        if not os.path.exists(path):
            raise CannotObserve(f"no kubeconfig at {s.kubeconfig_shown}", fix)
        try:
            api_client = config.new_client_from_config(config_file=path, context=s.kube_context)
        except ConfigException as exc:
            raise CannotObserve(f"kubeconfig {s.kubeconfig_shown} has no usable context {s.kube_context}: {exc}",
                                fix) from None
        try:
            k = Kube(api_client)
        except Exception as exc:  # discovery failed: no API server at that address
            raise CannotObserve(f"cannot reach the Kubernetes API of context {s.kube_context}: "
                                f"{type(exc).__name__}: {str(exc)[:200]}",
                                "check the cluster is running and `inv setup-cluster` succeeded") from None
        return k

    return ctx.fact("kube.client", connect)
