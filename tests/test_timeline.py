"""The startup timeline: the Kubernetes API emulator plays a cold start with known event, condition and log
timings on the pod's own clock (``tests/emulators/kube/startup.py``); the rollout reports each phase as it
ends, then the timeline with the durations of the script, and remembers it on the workload."""

from __future__ import annotations

import copy
import json

import pytest

from gptoss_gke.config import load_settings, parse_set
from gptoss_gke.core import Runner
from gptoss_gke.k8s.manifests import render
from gptoss_gke.k8s.objects import KubeObject
from gptoss_gke.k8s.secret import ApiKeySecret
from gptoss_gke.k8s.timeline import chart, startup_timeline
from gptoss_gke.k8s.wait import LAST_STARTUP, Rollout
from tests.conftest import in_process
from tests.envfiles import kube_env, write_env

NS = "gptoss"
IMAGE = "127.0.0.1:5000/test-project/gptoss/vllm/vllm-openai@sha256:" + "a" * 64

# A first L4 start: the pool wakes from zero, the image is pulled in full, the init container downloads the
# weights, vLLM loads them and compiles. Offsets in seconds from the pod's creation.
L4_COLD = dict(
    milestones={"scale_up": 3, "scheduled": 95, "pulling": 96, "pulled": 158, "init_started": 159,
                "initialized": 700, "started": 702, "ready": 1191},
    logs=[(704, "INFO [model.py] Resolved architecture: GptOssForCausalLM"),
          (880, "INFO [default_loader.py] Loading weights took 73.54 seconds"),
          (911, "INFO [gpu_model_runner.py] Model loading took 13.7193 GiB memory and 104.729963 seconds"),
          (1101, "INFO [monitor.py] torch.compile takes 96.20 s in total"),
          (1180, "INFO:     Application startup complete.")],
    image_bytes=9_812_345_678)


@pytest.fixture
def world(tmp_path, kube_emulator):
    layers = {"targets": {"l4": {}, "ironwood": {"enabled": True}}}
    folder = kube_env(tmp_path, kube_emulator, layers)

    def run(target: str, **script):
        settings = load_settings("dev", environ={"GPTOSS_ENV_DIR": str(folder)}, overrides=parse_set([]))
        ctx, out = in_process(settings)
        if script:  # a new script starts the pod's start over
            kube_emulator.script_pods(f"gptoss-{target}", "startup", **script)
        steps = [KubeObject(obj) for obj in render(settings, settings.target(target), IMAGE)]
        results = Runner(ctx).run([*steps, ApiKeySecret(settings), Rollout(settings, target)])
        return results[-1], out.getvalue()

    return run


def seconds(result) -> dict:
    return {p["name"]: p["seconds"] for p in result.facts["startup_timeline"]["phases"]}


def test_a_cold_l4_start_is_measured_phase_by_phase(world, kube_emulator):
    r, out = world("l4", **L4_COLD)
    assert r.status == "changed", out
    # The wake-up is said, with what the node costs.
    assert "changed: wake node pool l4-gptoss from 0 nodes (a g2-standard-4 node per replica, billed until the pool scales " \
           "back to zero: $0.71/h per node on demand), then wait up to 20m00s" in out
    got = seconds(r)
    want = {"node": 95, "image": 62, "init": 541, "start": 2, "weights": 209, "compile": 190, "ready": 90}
    assert got.keys() == want.keys()
    for name, value in want.items():
        assert got[name] == pytest.approx(value, abs=1), name
    timeline = r.facts["startup_timeline"]
    assert timeline["total_s"] == pytest.approx(1191, abs=1) and timeline["slowest"] == "init"
    image = next(p for p in timeline["phases"] if p["name"] == "image")
    assert image["facts"] == {"cached": False, "streamed": False, "bytes": 9_812_345_678, "pull_s": 62.0}
    weights = next(p for p in timeline["phases"] if p["name"] == "weights")
    assert weights["facts"]["gib"] == 13.7193 and weights["facts"]["loading_weights_s"] == 73.54
    # Live, phase by phase, then the chart with the slowest phase and the tutorial's figures beside it.
    for line in ("done: node requested → ready in 1m35s (scale-up 0->1 (gke-gptoss-pool-grp))",
                 "done: image pulled in 1m02s (9.8 GB)",
                 "done: init containers in 9m01s", "done: weights loaded in 3m29s"):
        assert line in out, line
    assert "startup timeline of pod gptoss-l4-0: 19m51s from pod created to Ready" in out
    assert "slowest: init containers, 9m01s (45% of the start)" in out
    assert "the L4 tutorial: ~20 min first start, incl. the 13 GB download (20m00s)" in out
    assert "[the L4 tutorial: 1m44s]" in out  # beside the weights phase
    # Remembered on the workload, where the next rollout's budget reads it.
    sts = kube_emulator.get("StatefulSet", NS, "gptoss-l4")
    last = json.loads(sts["metadata"]["annotations"][LAST_STARTUP])
    assert last["pod"] == "gptoss-l4-0" and last["total_s"] == pytest.approx(1191, abs=1)


def test_a_warm_ironwood_start_with_image_streaming_and_no_compile_line(world, kube_emulator):
    # The node is there (no scale-up), image streaming serves the image, the Run:ai streamer loads the
    # weights from the GCS FUSE mount; this vLLM logs no compile line, so that phase is unknown, not zero.
    r, out = world("ironwood", milestones={"scheduled": 2, "pulling": 3, "pulled": 9, "started": 11, "ready": 641},
                   logs=[(130, "[RunAI Streamer] Overall time to stream 60.8 GiB of all files: 101.5s, 613.4 MiB/s"),
                         (131, "INFO [default_loader.py] Loading weights took 118.20 seconds"),
                         (140, "INFO [tpu_runner.py:1264] Init model | hbm=[(15.2, 95.74), (15.2, 95.74), "
                               "(15.2, 95.74), (15.2, 95.74)]GiB"),
                         (636, "(APIServer pid=1) INFO:     Application startup complete.")],
                   streamed=True, image_bytes=12_000_000_000, resource="google.com/tpu")
    assert r.status == "changed", out
    got = seconds(r)
    assert got["compile"] is None  # unknown, never 0
    assert got["node"] == pytest.approx(2, abs=1) and got["image"] == pytest.approx(6, abs=1)
    # The weights are on the chips at "Init model": the last step of the load.
    assert got["weights"] == pytest.approx(129, abs=1) and got["ready"] == pytest.approx(501, abs=1)
    weights = next(p for p in r.facts["startup_timeline"]["phases"] if p["name"] == "weights")
    assert weights["facts"]["hbm_used_gib"] == 60.8 and weights["facts"]["stream_s"] == 101.5
    assert weights["facts"]["gib"] == pytest.approx(60.8)
    image = next(p for p in r.facts["startup_timeline"]["phases"] if p["name"] == "image")
    assert image["facts"]["streamed"] is True and "image streaming" in image["detail"]
    compile_line = next(ln for ln in out.splitlines() if "compile / warm-up" in ln)
    assert "unknown" in compile_line
    assert "unknown (no event, condition or log line for it): compile / warm-up" in out
    assert "the Ironwood tutorial: publishes no startup times" in out


def test_a_compile_cache_hit_and_a_cached_image_are_named(world, kube_emulator):
    # An account that may not list nodes: the wake-up goes unsaid, the rollout goes on.
    kube_emulator.inject("GET", r"^/api/v1/nodes$", 403, times=50)
    r, out = world("l4", milestones={"scheduled": 1, "pulled": 2, "init_started": 3, "initialized": 5,
                                     "started": 6, "ready": 150},
                   logs=[(60, "INFO Model loading took 13.7193 GiB memory and 53.1 seconds"),
                         (70, "INFO [backends.py] Directly load the compiled graph(s) for compile range (1, 8128) "
                              "from the cache, took 4.212 s"),
                         (75, "INFO [monitor.py] torch.compile takes 13.67 s in total"),
                         (140, "INFO:     Application startup complete.")],
                   cached=True)
    phases = {p["name"]: p for p in r.facts["startup_timeline"]["phases"]}
    assert phases["image"]["facts"] == {"cached": True} and phases["image"]["detail"] == "already on the node"
    assert phases["compile"]["facts"]["cache_hit"] is True
    assert phases["compile"]["detail"] == "torch.compile 13.7s, from the compile cache"
    assert phases["compile"]["seconds"] == pytest.approx(15, abs=1)
    assert r.status == "changed" and "wake node pool" not in out


def test_a_second_rollout_reports_the_running_pods_timeline_and_writes_nothing(world, kube_emulator):
    world("l4", **L4_COLD)
    kube_emulator.clear_log()
    r, out = world("l4")
    assert r.status == "ok" and kube_emulator.writes() == []
    assert "ready (generation 1); started in 19m51s (slowest: init containers, 9m01s)" in r.reason
    assert seconds(r)["weights"] == pytest.approx(209, abs=1)


def test_a_missing_phase_is_unknown_in_the_chart_not_zero():
    pod = {"metadata": {"name": "p", "creationTimestamp": "2026-01-01T00:00:00Z"},
           "spec": {"containers": [{"name": "vllm", "image": "img"}]},
           "status": {"conditions": [{"type": "PodScheduled", "status": "True",
                                      "lastTransitionTime": "2026-01-01T00:00:10Z"},
                                     {"type": "Ready", "status": "True", "lastTransitionTime": "2026-01-01T00:05:00Z"}],
                      "containerStatuses": [{"name": "vllm", "state": {"running": {
                          "startedAt": "2026-01-01T00:00:30Z"}}}]}}
    t = startup_timeline(pod, [], [], node_events=[])
    by = {p.name: p.seconds for p in t.phases}
    assert by["image"] is None and by["weights"] is None and by["compile"] is None
    assert by["node"] == 10 and by["ready"] == 270  # from the last measured end (the container start)
    text = "\n".join(chart(t))
    assert "unknown (no event, condition or log line for it): image pulled, weights loaded, compile / warm-up" in text
    assert " 0.0s" not in text


def test_status_of_a_start_in_progress_names_the_phase_and_the_sleeping_pool(tmp_path, kube_emulator):
    from gptoss_gke.k8s.wait import RolloutStatus

    folder = kube_env(tmp_path, kube_emulator)
    settings = load_settings("dev", environ={"GPTOSS_ENV_DIR": str(folder)}, overrides=parse_set([]))
    ctx, out = in_process(settings)
    [r] = Runner(ctx).run([RolloutStatus(settings, "l4")])
    assert r.status == "ok" and r.reason == ("StatefulSet gptoss-l4 is not deployed "
                                             "(`inv deploy --target=l4` deploys it)")
    kube_emulator.script_pods("gptoss-l4", "unschedulable",
                              scale_up="pod triggered scale-up: [{l4-gptoss 0->1 (max: 1)}]")
    ctx, out = in_process(settings)
    steps = [KubeObject(obj) for obj in render(settings, settings.target("l4"), IMAGE)]
    results = Runner(ctx).run([*steps, RolloutStatus(settings, "l4")])
    r = results[-1]
    assert r.status == "ok", out
    assert r.reason == ("not ready: waiting for a node (scale-up triggered); node pool l4-gptoss has 0 nodes "
                        "(scaled to zero: `inv deploy --target=l4` wakes it)")
    assert r.facts["phase"] == "waiting for a node (scale-up triggered)"


def test_deploy_prints_the_timeline_reports_it_and_status_shows_it_later(deploy_world, tmp_path):
    w = deploy_world
    w.kube.script_pods("gptoss-l4", "startup", **L4_COLD)
    report = tmp_path / "deploy.json"
    proc = w.inv("deploy", "--target=l4", "--skip-smoke", f"--report={report}")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "wake node pool l4-gptoss from 0 nodes" in proc.stdout
    assert "startup timeline of pod gptoss-l4-0: 19m51s from pod created to Ready" in proc.stdout
    step = next(s for s in json.loads(report.read_text())["steps"] if s["key"] == "rollout.l4")
    assert step["facts"]["startup_timeline"]["total_s"] == pytest.approx(1191, abs=1)

    report = tmp_path / "status.json"
    proc = w.inv("status", "--target=l4", f"--report={report}")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "startup timeline of pod gptoss-l4-0: 19m51s from pod created to Ready" in proc.stdout
    assert "ok: ready; started in 19m51s (slowest: init containers, 9m01s)" in proc.stdout
    [step] = json.loads(report.read_text())["steps"]
    phases = {p["name"]: p for p in step["facts"]["startup_timeline"]["phases"]}
    assert phases["init"]["seconds"] == pytest.approx(541, abs=1) and phases["compile"]["status"] == "measured"

    # The startupProbe, sized from that start: 2 x (container started → Ready = 489 s) = 98 tries of 10 s.
    # (This world gives load_timeout_s, which sizes the probe as given: 6 tries. Without it, the measured start
    # decides.) Alone the new size would restart the serving pod, so a re-deploy keeps the live one and says so...
    def probe_failures() -> int:
        sts = w.kube.get("StatefulSet", NS, "gptoss-l4")
        [vllm] = [c for c in sts["spec"]["template"]["spec"]["containers"] if c["name"] == "vllm"]
        return vllm["startupProbe"]["failureThreshold"]

    sts = w.kube.get("StatefulSet", NS, "gptoss-l4")
    assert probe_failures() == 6
    assert json.loads(sts["metadata"]["annotations"][LAST_STARTUP])["slowest_probe_window_s"] == pytest.approx(489, abs=1)
    generation = sts["metadata"]["generation"]
    settings = copy.deepcopy(w.settings)
    del settings["targets"]["l4"]["load_timeout_s"]
    env = {"GPTOSS_ENV_DIR": write_env(tmp_path / "measured", settings)}
    proc = w.inv("deploy", "--target=l4", "--skip-smoke", env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert ("ok: StatefulSet gptoss/gptoss-l4 matches the manifest (server-side dry run); its startupProbe stays at "
            "1m00s (the measured start says 16m20s) until the pod template changes for another reason: changing "
            "it alone would restart the serving pod") in proc.stdout
    assert probe_failures() == 6 and w.kube.get("StatefulSet", NS, "gptoss-l4")["metadata"]["generation"] == generation
    # ... and sends it with the next change that restarts the pod anyway.
    proc = w.inv("deploy", "--target=l4", "--skip-smoke", "--set",
                 'targets.l4.vllm_extra_args=["--enable-prefix-caching"]', env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert probe_failures() == 98, proc.stdout


def test_the_startup_probe_is_twice_the_slowest_measured_start_within_the_catalogue_budget():
    from gptoss_gke.k8s.wait import startup_probe_failures
    from gptoss_gke.targets import IRONWOOD, L4

    assert startup_probe_failures(L4, False, None) == 120  # nothing measured: the catalogue's 20 minutes
    assert startup_probe_failures(L4, False, {"slowest_probe_window_s": 489}) == 98
    assert startup_probe_failures(L4, False, {"slowest_probe_window_s": 20}) == 6  # never under a minute
    assert startup_probe_failures(L4, False, {"slowest_probe_window_s": 1500}) == 120  # never over the catalogue
    assert startup_probe_failures(L4, True, {"slowest_probe_window_s": 489}) == 120  # load_timeout_s given: as given
    assert startup_probe_failures(IRONWOOD, False, {"total_s": 1500}) == 360  # an older annotation: the catalogue


def test_a_warm_restart_never_shrinks_the_remembered_slowest_start():
    from gptoss_gke.k8s.timeline import Phase, Timeline, last_startup_annotation

    def started_after(window: int) -> Timeline:
        return Timeline("p", "2026-01-01T00:00:00Z", f"2026-01-01T00:{10 + window // 60:02d}:{window % 60:02d}Z",
                        [Phase("start", "2026-01-01T00:09:00Z", "2026-01-01T00:10:00Z")])

    cold = json.loads(last_startup_annotation(started_after(489)))
    assert cold["probe_window_s"] == 489 and cold["slowest_probe_window_s"] == 489
    warm = json.loads(last_startup_annotation(started_after(125), cold))
    assert warm["probe_window_s"] == 125 and warm["slowest_probe_window_s"] == 489


def test_ironwood_deploy_end_to_end_prints_the_timeline_on_loopback(deploy_world, hf_hub, tmp_path):
    """`inv deploy --target=ironwood`: image mirrored, weights staged, the compile cache's prefix granted,
    objects applied, then the scripted start's timeline (image streaming, no compile line)."""
    from tests.emulators.hfhub import make_gptoss_like_repo
    from tests.envfiles import merged, write_env
    from tests.gcs import PROJECT_NUMBER
    from tests.registry import publish

    w = deploy_world
    sha = make_gptoss_like_repo(hf_hub, "openai/gpt-oss-120b", shard_size=2 * 2**20, n_shards=2, copy_size=2**20)
    w.gcp.add_project("test-project", PROJECT_NUMBER)  # the number the bucket reports as its owner
    publish(w.src, "vllm/vllm-tpu", "nightly", tmp_path)
    settings = merged(w.settings, {"targets": {"ironwood": {
        "enabled": True, "image": f"{w.src.host}/vllm/vllm-tpu:nightly", "model_revision": sha,
        "load_timeout_s": 30}}})
    env = {"GPTOSS_ENV_DIR": write_env(tmp_path / "ironwood", settings), "HF_ENDPOINT": hf_hub.url,
           "HF_TOKEN": hf_hub.token, "HF_HUB_DISABLE_TELEMETRY": "1"}
    w.kube.script_pods("gptoss-ironwood", "startup", streamed=True, resource="google.com/tpu",
                       milestones={"scale_up": 1, "scheduled": 300, "pulling": 301, "pulled": 341, "started": 343,
                                   "ready": 1500},
                       logs=[(470, "INFO Model loading took 60.8 GiB memory and 125.3 seconds"),
                             (1490, "INFO:     Application startup complete.")])
    proc = w.inv("deploy", "--target=ironwood", "--skip-smoke", env=env)
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    assert "changed: grant roles/storage.objectUser on gs://test-project-models/compile-cache/dev/ironwood/ to " \
           "principal://" in out and "only under the prefix" in out
    # Said before the phases, with the price or where to give it.
    waking = out.index("  waking node pool ironwood-gptoss from 0 nodes (a tpu7x-standard-4t node per replica, billed until "
                       "the pool scales back to zero: price unknown for tpu7x-standard-4t: add "
                       "prices.tpu7x-standard-4t.on_demand")
    assert waking < out.index("done: node requested → ready in 5m00s")
    assert "startup timeline of pod gptoss-ironwood-" in out and "25m00s from pod created to Ready" in out
    assert "9.8 GB, image streaming" in out
    assert "slowest: server up → Ready" in out  # the compile phase is unknown here, and said so
    assert "unknown (no event, condition or log line for it): compile / warm-up" in out

    def cache_grants():
        return [b for b in w.gcs.policy("test-project-models")["bindings"]
                if b["role"] == "roles/storage.objectUser"
                and "compile-cache/dev/ironwood/" in (b.get("condition") or {}).get("expression", "")]

    [grant] = cache_grants()  # on the prefix only: no unconditioned objectUser anywhere
    assert not [b for b in w.gcs.policy("test-project-models")["bindings"]
                if b["role"] == "roles/storage.objectUser" and not b.get("condition")]
    proc = w.inv("teardown", "--target=ironwood", "--yes", "--purge-model", env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert cache_grants() == [] and "revoke roles/storage.objectUser on gs://test-project-models/compile-cache" \
        in proc.stdout


def test_the_next_rollout_waits_twice_the_measured_start_when_that_beats_the_catalogue(world):
    world("l4", **L4_COLD)  # 19m51s, remembered on the StatefulSet
    r, out = world("l4", **L4_COLD)  # the pod starts over
    assert r.status == "changed", out
    assert "wait up to 39m42s for StatefulSet gptoss-l4 to become ready" in out  # 2 x 1191 s > the 20m first-start


def test_an_explicit_load_timeout_is_used_as_given():
    from gptoss_gke.k8s.wait import rollout_budget
    from gptoss_gke.targets import L4

    assert rollout_budget(L4, False, None) == L4.load_budget_s  # first time: the catalogue's figure
    assert rollout_budget(L4, False, {"total_s": 180}) == L4.load_budget_s  # a warm restart never shrinks it
    assert rollout_budget(L4, False, {"total_s": 1500}) == 3000
    assert rollout_budget(L4, True, {"total_s": 1500}) == L4.load_budget_s  # targets.l4.load_timeout_s wins
