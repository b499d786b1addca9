"""`inv teardown`: the reverse of setup-cluster and deploy, scoped to what this environment created.

The chain: credentials → can we see inside the cluster → its Kubernetes objects, kind by kind, dependents
first → (--purge-model) staged weights and the bucket grant → (--purge-images) mirrored images and the
repository → the node pools, or (--delete-cluster) the cluster. It runs twice: a read-only preview that
lists everything (and stops the whole teardown, deleting nothing, if anything could not be seen), a
confirmation, then the real pass, which deletes only what the list showed and prints only what it deletes.
"Ours" is this tool *and* this environment (and target): see ``gptoss_gke/ownership.py``.
"""

from gptoss_gke.cli import playbook_task
from gptoss_gke.flags import Switch


@playbook_task(
    target="many", all_targets="catalogue",
    yes=Switch("do not ask before deleting (needed without a terminal)"),
    purge_model=Switch("also delete the staged weights under our bucket folder, our IAM binding, and the "
                       "in-cluster model cache"),
    purge_images=Switch("also delete the mirrored images (and the repository, if we created it); the tools image "
                        "of the in-cluster Jobs only with --target=all (the default)"),
    delete_cluster=Switch("delete the cluster itself (only if this environment created it); its load balancers "
                          "and disks are deleted first"),
    scale_to_zero=Switch("keep the node pools but scale them to zero, for a quick return"),
    force=Switch("delete the node pools/cluster even when the Kubernetes objects in the cluster cannot be seen "
                 "(their load balancers and disks may be left behind, and are named)"),
    conflicts=(("delete_cluster", "scale_to_zero",
                "deleting the cluster deletes its node pools; there is nothing left to scale to zero"),),
)
def teardown(c, f):
    """Delete what this environment created (ownership labels only), after listing it and asking."""
    from gptoss_gke.config import other_environments
    from gptoss_gke.errors import ToolError
    from gptoss_gke.playbook import PROJECT_ROOT, playbook

    with playbook(c, "teardown", f) as pb:
        # What environments share (a bucket grant, a mirrored tag, staged weights) is kept while another uses it.
        others = other_environments(pb.settings, root=PROJECT_ROOT) if f.purge_model or f.purge_images else {}

        def steps():
            return teardown_chain(pb.settings, pb.ctx.targets, f, others)

        pb.extra["deleted"] = []
        if f.dry_run:
            pb.run(steps())
            return
        preview = pb.preview(steps())
        doomed = [r for r in preview if r.changed]
        if any(r.status == "failed" for r in preview):
            # Something could not be seen (or checked): deleting the rest could orphan what it holds.
            pb.results.extend(not_deleted(preview))
            raise ToolError("nothing deleted: teardown stops when anything it would delete, or anything that "
                            "depends on it, could not be seen or checked (failed above)",
                            "fix what the failures above say, then re-run"
                            + ("" if f.force else "; --force deletes the node pools/cluster even when the Kubernetes "
                               "objects in them cannot be seen"))
        if not doomed:
            pb.results.extend(preview)  # nothing to delete: the preview is the answer
            return
        pb.ctx.printer.line("")
        pb.ctx.printer.line(f"About to change {len(doomed)} item(s) listed above as 'changed (dry-run)'.", "bold")
        if not pb.ctx.confirm("Delete them?"):
            raise ToolError("nothing deleted: teardown needs confirmation",
                            "answer y at the prompt, or pass --yes (required without a terminal)")
        pb.ctx.printer.line("")
        pb.ctx.printer.line("Deleting (only what is listed above):", "bold")
        try:
            pb.run(steps(), quiet=True, approved={r.key: r.planned for r in doomed})
        finally:  # an interrupted run still reports what it did delete
            pb.extra["deleted"] = [p for r in pb.results if r.changed for p in r.planned]


def teardown_chain(settings, targets: list[str], f, others: dict) -> list:
    """The steps, in order. ``others``: every other environment (name → Settings, or the error loading it);
    what they share with this one (a bucket grant, a mirrored tag, staged weights, a repository) is kept."""
    from gptoss_gke.flags import ALL
    from gptoss_gke.gcp.cluster import DeleteCluster, DeleteNodePool
    from gptoss_gke.gcp.project import Credentials
    from gptoss_gke.images import TOOLS, purge_image_steps
    from gptoss_gke.k8s.client import KubernetesApi
    from gptoss_gke.k8s.computeclass import DeleteComputeClasses
    from gptoss_gke.k8s.objects import DELETE_ORDER, DeleteKubeObjects
    from gptoss_gke.profiles import every_pool_name
    from gptoss_gke.serving import compile_cache
    from gptoss_gke.staging.steps import purge_model_steps

    steps = [Credentials(), KubernetesApi(settings, force=f.force)]
    # "all" means every catalogue target, enabled or not: one may have been enabled earlier.
    kube = [DeleteKubeObjects(settings, api_version, kind, namespaced, targets, all_targets=f.target == ALL,
                              purge_model=f.purge_model, delete_cluster=f.delete_cluster)
            for api_version, kind, namespaced in DELETE_ORDER]
    steps += kube
    if f.purge_model:
        steps += purge_model_steps(settings, targets, others) + compile_cache.revoke_steps(settings, targets, others)
    if f.purge_images:  # the tools image (in-cluster Jobs) is every target's: it goes with all of them
        steps += purge_image_steps(settings, [*targets, *([TOOLS] if f.target == ALL else [])], others)
    # Never while the objects on them could not be seen (unless --force says so).
    after_kube = tuple(step.key for step in kube)
    if not f.delete_cluster:  # the cluster takes its ComputeClasses with it
        steps.append(DeleteComputeClasses(settings, targets, kube_steps=after_kube))
    if f.delete_cluster:
        steps.append(DeleteCluster(settings, kube_steps=after_kube, force=f.force))
    else:
        steps += [DeleteNodePool(settings, t, scale_to_zero=f.scale_to_zero, kube_steps=after_kube, force=f.force)
                  for t in targets]
        # The spot profiles' pools, whichever profile is set now: one changed since setup-cluster must not
        # leave pools billing.
        steps += [DeleteNodePool(settings, t, scale_to_zero=f.scale_to_zero, kube_steps=after_kube, force=f.force,
                                 pool_name=name)
                  for t in targets for name in every_pool_name(settings, t)[1:]]
    return steps


def not_deleted(preview: list) -> list:
    """The preview's results as the recap of a teardown that stopped before deleting: what it would
    have deleted is reported as not done, never as changed."""
    out = []
    for r in preview:
        if r.status == "changed":
            r.action, r.changed = "skip", False
            r.reason = "not deleted (teardown stopped before deleting anything): " + r.reason.removeprefix("would ")
        out.append(r)
    return out
