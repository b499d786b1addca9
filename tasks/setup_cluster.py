"""`inv setup-cluster`: credentials and project → APIs → cluster → a node pool per target → kubeconfig."""

from gptoss_gke.cli import playbook_task
from gptoss_gke.flags import Switch


@playbook_task(target="many", yes=Switch("create warm capacity (node_pool.min_nodes or initial_nodes above 0) "
                                         "without asking; it bills from creation"))
def setup_cluster(c, f):
    """Auth, APIs, cluster settings, node pool(s) and kubectl credentials, idempotently."""
    from gptoss_gke.gcp.cluster import Cluster, KubeCredentials, NodePool
    from gptoss_gke.gcp.project import Apis, Project
    from gptoss_gke.k8s.computeclass import compute_class_steps
    from gptoss_gke.playbook import playbook
    from gptoss_gke.profiles import pools

    with playbook(c, "setup-cluster", f) as pb:
        s, targets = pb.settings, pb.ctx.targets
        pb.run([
            Project(),  # credentials and project: a gate, nothing else is read before it
            Apis(),
            Cluster(s),
            *[NodePool(s, t, p) for t in targets for p in pools(s, t)],  # the capacity profile's pools
            KubeCredentials(),
            *compute_class_steps(s, targets),  # spot profiles: the ComputeClass that ranks their pools
        ])
