"""Settings: one validated object per run, built in one pass that reports every problem at once.

Layers, later wins: built-in defaults ← env/<name>.yaml ← GPTOSS_* environment variables ← task
flags (--set key.path=value and the tasks' own flags). Bad input stops here with exit status 2, each
problem naming its origin (file and line, variable or flag), the key, what is allowed and the fix,
before anything reaches the cloud.

* ``rules.py`` — one function per kind of name or value (GCP, Kubernetes, paths, images), each with the
  sentence that says what is allowed; the fields use them through ``Annotated`` types.
* ``schema.py`` — the settings models. Nothing there touches the disk, so the remote staging host can
  validate the same object again.
* ``checks.py`` — rules that read several keys (zone in region, node counts against the catalogue,
  model context), and what only some tasks need (project, bucket, no example values outside dry-run).
* ``loader.py`` — untrusted YAML read safely, environment variables, --set, and the validation pass;
  ``origins.py`` says where each value came from.
"""

from gptoss_gke.config.checks import placeholders, require, resolve_targets, task_problems
from gptoss_gke.config.loader import load_settings, other_environments, parse_set, read_settings
from gptoss_gke.config.rules import (bucket_name, dns_label, gcp_label_key, gcp_label_value, gcp_resource_name,
                                     gke_name, kube_label_key, kube_label_value, object_prefix, project_id, reservation,
                                     reservation_key, revision, vllm_extra_args)
from gptoss_gke.config.schema import (ClusterSettings, KubeSettings, ModelStoreSettings, NodePoolSettings,
                                      RegistrySettings, RemoteSettings, RetrySettings, Settings, TargetSettings)

__all__ = [
    # the schema
    "ClusterSettings", "KubeSettings", "ModelStoreSettings", "NodePoolSettings", "RegistrySettings", "RemoteSettings",
    "RetrySettings", "Settings", "TargetSettings",
    # loading and the task checks
    "load_settings", "other_environments", "parse_set", "placeholders", "read_settings", "require", "resolve_targets",
    "task_problems",
    # the rules a name or value is held to
    "bucket_name", "dns_label", "gcp_label_key", "gcp_label_value", "gcp_resource_name", "gke_name", "kube_label_key",
    "kube_label_value", "object_prefix", "project_id", "reservation", "reservation_key", "revision", "vllm_extra_args",
]
