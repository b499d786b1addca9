"""invoke's entry point: `inv --list` shows the playbooks. Each lives in tasks/<name>.py and reads top to
bottom: its flags, the settings, its chain of steps, the runner. The steps live in the gptoss_gke package."""

from pathlib import Path

# invoke loads this file as the module `tasks`; this makes tasks/*.py its submodules (there is no
# tasks/__init__.py), so invoke and `import tasks.deploy` see the same files.
__path__ = [str(Path(__file__).with_name("tasks"))]

from gptoss_gke.cli import collection, install_excepthook  # noqa: E402
from tasks import (auth, deploy, doctor, mirror_image, plan, render, serving, setup_cluster, stage_model,  # noqa: E402
                   status, teardown)

install_excepthook()  # no traceback reaches a person, not even from invoke's own output (`inv --list | head`)
ns = collection(
    setup_cluster.setup_cluster, deploy.deploy, teardown.teardown, stage_model.stage_model,
    mirror_image.mirror_image, serving.smoke, serving.bench, serving.port_forward, serving.show_api_key,
    plan.plan, render.render, doctor.doctor, auth.auth, status.status,
)
