"""The API key: generated once, kept in a Kubernetes Secret, never printed, never on argv."""

from __future__ import annotations

import base64
import secrets as pysecrets

from gptoss_gke.core.step import Change, Plan, noop
from gptoss_gke.errors import StepError
from gptoss_gke.k8s.client import KubeStep, kube
from gptoss_gke.ownership import kube_owner_problem

KEY = "VLLM_API_KEY"


def _decode(secret: dict, key: str) -> str | None:
    raw = (secret.get("data") or {}).get(key)
    return base64.b64decode(raw).decode() if raw else None


def read_api_key(ctx) -> str:
    """For smoke/bench: the key from the Secret, registered with the redactor before anyone sees it."""
    from kubernetes.client.exceptions import ApiException

    s = ctx.settings
    try:
        secret = kube(ctx).core.read_namespaced_secret(s.kube.api_key_secret, s.kube.namespace).to_dict()
    except ApiException as exc:
        if exc.status == 404:
            raise StepError(f"Secret {s.kube.namespace}/{s.kube.api_key_secret} not found",
                            "run `inv deploy --target=...` first (it creates the key)") from None
        raise
    key = _decode(secret, KEY)
    if not key:
        raise StepError(f"Secret {s.kube.api_key_secret} has no {KEY}", "re-run deploy with --rotate-api-key")
    ctx.redact.add(key)
    return key


def _label_drift(current: dict, want: dict[str, str], manager: str) -> list[str]:
    """Labels to set, and labels we applied before but no longer want (by our field manager's own
    record in managedFields: labels others added are theirs and stay)."""
    have = (current.get("metadata") or {}).get("labels") or {}
    ours = set()
    for entry in (current.get("metadata") or {}).get("managedFields") or []:
        if entry.get("manager") == manager:
            labels = ((entry.get("fieldsV1") or {}).get("f:metadata") or {}).get("f:labels") or {}
            ours |= {k.removeprefix("f:") for k in labels}
    drift = [f"label {k}={v}" for k, v in sorted(want.items()) if have.get(k) != v]
    drift += [f"remove label {k}" for k in sorted(ours - set(want)) if k in have]
    return drift


class ApiKeySecret(KubeStep):
    section = "kubernetes"
    key = "kube.api-key"

    def __init__(self, settings, rotate: bool = False):
        self.rotate = rotate
        self.name = f"Secret {settings.kube.namespace}/{settings.kube.api_key_secret}"

    def observe(self, ctx):
        from kubernetes.client.exceptions import ApiException

        s = ctx.settings
        try:
            secret = kube(ctx).core.read_namespaced_secret(s.kube.api_key_secret, s.kube.namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        data = kube(ctx).api_client.sanitize_for_serialization(secret)
        for key in (KEY, "HF_TOKEN"):
            ctx.redact.add(_decode(data, key))
        return data

    def plan(self, ctx, current) -> Plan:
        s = ctx.settings
        hf = s.hf_token.get_secret_value() if s.hf_token else None
        if current is None:
            return Plan([Change("generate a new API key and store it in the Secret", "create", apply=self._write)])
        why = kube_owner_problem(current, s)
        if why is not None:
            raise StepError(f"{self.name} exists and is {why}", "delete it or choose kube.api_key_secret")
        reasons = []
        if self.rotate:
            reasons.append("rotate the API key (--rotate-api-key)")
        if not _decode(current, KEY):
            reasons.append(f"the Secret has no {KEY}: generate one")
        if hf and _decode(current, "HF_TOKEN") != hf:
            reasons.append("store the current HF token for the in-cluster weight download")
        reasons += _label_drift(current, s.object_labels, s.kube.field_manager)
        if not reasons:
            return noop("API key present and kept (rotate with --rotate-api-key; see it with `inv show-api-key`)")
        return Plan([Change("; ".join(reasons), "update", apply=self._write)])

    def _write(self, ctx) -> None:
        from kubernetes.client.exceptions import ApiException

        s = ctx.settings
        existing = None
        try:
            existing = kube(ctx).core.read_namespaced_secret(s.kube.api_key_secret, s.kube.namespace)
        except ApiException as exc:
            if exc.status != 404:
                raise
        old = _decode(kube(ctx).api_client.sanitize_for_serialization(existing), KEY) if existing else None
        key = old if (old and not self.rotate) else pysecrets.token_urlsafe(32)
        ctx.redact.add(key)
        data = {KEY: key}
        if s.hf_token:
            data["HF_TOKEN"] = s.hf_token.get_secret_value()
        body = {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "Opaque",
            "metadata": {"name": s.kube.api_key_secret, "namespace": s.kube.namespace,
                         "labels": dict(s.object_labels)},
            "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()},
        }
        kube(ctx).resource("v1", "Secret").server_side_apply(
            body=body, name=s.kube.api_key_secret, namespace=s.kube.namespace,
            field_manager=s.kube.field_manager, force_conflicts=True)
        self.rotate = False  # done: the verification pass must not ask for another rotation
