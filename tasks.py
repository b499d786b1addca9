"""invoke entry point: `inv --list` shows the playbooks. The code lives in the gptoss_gke package."""

from gptoss_gke.playbooks import build_collection

ns = build_collection()
