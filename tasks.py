"""invoke entry point: `inv --list` shows the playbooks. The code lives in the gptoss_gke package."""

from gptoss_gke.playbooks import build_collection, install_excepthook

install_excepthook()  # no traceback reaches a person, not even from invoke's own output (`inv --list | head`)
ns = build_collection()
