"""`inv render`: offline, exactly the YAML `inv deploy` applies (never the Secret), for review or GitOps."""

from gptoss_gke.cli import playbook_task
from gptoss_gke.flags import OutputDir


@playbook_task(common=("env", "set_"), target="list",
               out=OutputDir("write one file per object into this directory instead of printing"))
def render(c, f):
    """Offline: the YAML deploy would apply (image by tag unless pinned), for review, kubectl diff or GitOps."""
    import sys
    from pathlib import Path

    from invoke.exceptions import Exit

    from gptoss_gke.errors import ToolError
    from gptoss_gke.k8s.manifests import deploy_objects_offline, object_filename, yaml_stream
    from gptoss_gke.playbook import offline_settings

    settings, targets = offline_settings(f)
    try:
        objects, notes = deploy_objects_offline(settings, targets)
    except ToolError as exc:
        raise Exit(f"error: {exc}", code=2) from None
    header = [f"inv render --target={','.join(targets)} (env {settings.env_name}): what `inv deploy` applies, "
              f"in its order", *notes]
    if f.out is None:
        sys.stdout.write(yaml_stream(objects, header))
        return
    folder = Path(f.out)
    folder.mkdir(parents=True, exist_ok=True)
    for i, obj in enumerate(objects, 1):
        path = folder / object_filename(i, obj)
        path.write_text(yaml_stream([obj], header[:1]))
        print(path)
    print(f"# {len(objects)} objects; " + "; ".join(notes))
