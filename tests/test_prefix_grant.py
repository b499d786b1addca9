"""PrefixGrant: a role on one prefix of the bucket, as a conditional binding in the bucket's own policy.

Driven through the real runner against fake-gcs-server behind GcsFront (bucket IAM with etags, IAM
Conditions only at policy version 3 on uniform-access buckets). What is asserted is the policy GCS ends
up holding: which member has which role under which condition, and what else was left alone.
"""

from __future__ import annotations

from gptoss_gke.config import load_settings
from gptoss_gke.core import Runner
from gptoss_gke.core.retry import RetryPolicy
from gptoss_gke.gcp.storage import Bucket, PrefixGrant, RevokePrefixGrant, prefix_condition, workload_principal
from tests.conftest import in_process
from tests.envfiles import MODELS_BUCKET, staging_env
from tests.gcs import PROJECT_NUMBER

BUCKET = MODELS_BUCKET
ROLE = "roles/storage.objectUser"
PREFIX = "models/openai/gpt-oss-120b/"
TITLE = "gptoss-gke staging dev"
SERVING = "roles/storage.objectViewer"


def _settings(tmp_path):
    return load_settings(environ={"GPTOSS_ENV_DIR": staging_env(tmp_path, "a" * 40)})


def _member(ctx) -> str:
    return workload_principal(ctx.settings, PROJECT_NUMBER, "gptoss-stager")


def _grant(settings, cls=PrefixGrant, **kw):
    return cls(settings, member=_member, role=ROLE, prefix=PREFIX, title=TITLE, **kw)


def _run(settings, steps, *, dry_run=False):
    ctx, out = in_process(settings, RetryPolicy(3, 0.01, 0.05), dry_run=dry_run)
    ctx.fact("gcp.project", lambda: {"projectNumber": PROJECT_NUMBER, "lifecycleState": "ACTIVE"})
    return Runner(ctx).run(steps), out.getvalue()


def _ours(front):
    return [b for b in front.policy(BUCKET)["bindings"] if b["role"] == ROLE]


def test_grant_is_limited_to_the_prefix_and_converges(tmp_path, gcs_front, fake_gcs):
    s = _settings(tmp_path)
    member = workload_principal(s, PROJECT_NUMBER, "gptoss-stager")
    other = "serviceAccount:reader@test-project.iam.gserviceaccount.com"

    # A dry-run on a fresh project shows the grant and writes nothing.
    results, out = _run(s, [Bucket(s), _grant(s)], dry_run=True)
    assert results[-1].status == "changed" and not gcs_front.iam_sets, out

    results, out = _run(s, [Bucket(s), _grant(s)])
    assert [r.status for r in results] == ["changed", "changed"], out
    [binding] = _ours(gcs_front)
    assert binding["members"] == [member]
    expr = binding["condition"]["expression"]
    assert expr == prefix_condition(BUCKET, PREFIX)
    assert f'resource.name.startsWith("projects/_/buckets/{BUCKET}/objects/{PREFIX}")' in expr
    assert f'api.getAttribute("storage.googleapis.com/objectListPrefix", "").startsWith("{PREFIX}")' in expr
    assert binding["condition"]["title"] == TITLE
    # Nothing unconditioned for the member: it cannot read or list the rest of the bucket.
    assert not [b for b in gcs_front.policy(BUCKET)["bindings"] if member in b["members"] and not b.get("condition")]
    assert gcs_front.policy(BUCKET)["version"] == 3

    # Second run: nothing to do, nothing written.
    writes = len(gcs_front.iam_sets)
    results, out = _run(s, [Bucket(s), _grant(s)])
    assert [r.status for r in results] == ["ok", "ok"], out
    assert "already has roles/storage.objectUser" in out and len(gcs_front.iam_sets) == writes

    # Drift: someone widened our condition to the whole bucket, and someone else holds the same role on the
    # same prefix; the next run narrows ours again and leaves theirs alone.
    client = fake_gcs.client(gcs_front.url)
    policy = client.bucket(BUCKET).get_iam_policy(requested_policy_version=3)
    for b in policy.bindings:
        if b.get("condition", {}).get("title") == TITLE:
            b["condition"] = {**b["condition"], "expression": "true"}
    policy.bindings.append({"role": ROLE, "members": {other},
                            "condition": {"title": "theirs", "expression": prefix_condition(BUCKET, PREFIX)}})
    policy.version = 3
    client.bucket(BUCKET).set_iam_policy(policy)
    results, out = _run(s, [Bucket(s), _grant(s)])
    assert results[-1].status == "changed" and "drift" in out, out
    ours = [b for b in _ours(gcs_front) if member in b["members"]]
    assert [b["condition"]["expression"] for b in ours] == [prefix_condition(BUCKET, PREFIX)]
    assert any(other in b["members"] and b["condition"]["title"] == "theirs" for b in _ours(gcs_front))


def test_revoke_removes_only_our_member_and_keeps_a_grant_another_environment_uses(tmp_path, gcs_front, fake_gcs):
    s = _settings(tmp_path)
    member = workload_principal(s, PROJECT_NUMBER, "gptoss-stager")
    _run(s, [Bucket(s), _grant(s)])
    client = fake_gcs.client(gcs_front.url)
    policy = client.bucket(BUCKET).get_iam_policy(requested_policy_version=3)
    policy.bindings.append({"role": SERVING, "members": {member}})  # an unrelated grant of the same member
    policy.version = 3
    client.bucket(BUCKET).set_iam_policy(policy)

    # Another environment stages into the same prefix as the same principal: kept, and said so.
    results, out = _run(s, [_grant(s, RevokePrefixGrant, others={"prod": s}, shared=lambda o: True)])
    assert results[0].status == "ok" and "keeps roles/storage.objectUser" in out and "prod" in out, out
    assert _ours(gcs_front)

    results, out = _run(s, [_grant(s, RevokePrefixGrant, others={"prod": s}, shared=lambda o: False)])
    assert results[0].status == "changed", out
    assert _ours(gcs_front) == []  # the binding had no other member: gone
    assert [b for b in gcs_front.policy(BUCKET)["bindings"] if b["role"] == SERVING] == [
        {"role": SERVING, "members": [member]}]

    results, out = _run(s, [_grant(s, RevokePrefixGrant)])
    assert results[0].status == "ok" and "holds no" in out, out


def test_a_prefix_that_is_not_a_folder_is_refused(tmp_path):
    import pytest

    s = _settings(tmp_path)
    with pytest.raises(ValueError, match="folder"):
        PrefixGrant(s, member="user:a@b.c", role=ROLE, prefix="models/openai/gpt-oss", title=TITLE)
