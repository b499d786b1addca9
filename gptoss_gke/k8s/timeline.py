"""Where a cold start's time went: node → image → weights → compile → ready, for one pod.

:func:`startup_timeline` is a pure function of what the API shows (the pod, its events, the node's
image-streaming events and the vLLM container's log with the kubelet's timestamps), so every phase is
testable. Each phase has a start and an end taken from one of those sources; a phase whose source is
missing is "unknown" (``seconds`` is None), never zero. :func:`chart` draws it for a terminal.
"""

from __future__ import annotations

import datetime as _dt
import re
from dataclasses import asdict, dataclass, field

from gptoss_gke.core.report import format_duration, format_size

# The vLLM lines that mark the end of a phase (vLLM 0.12 GPU, vllm-tpu / tpu-inference on TPU).
# Weights: "Loading weights took 73.54 seconds" (default loader), "Model loading took 13.7193 GiB memory
# and 104.729963 seconds" (model runner), "[RunAI Streamer] Overall time to stream 60.8 GiB of all files:
# 41.2s, 1.5 GiB/s" (runai_streamer).
_WEIGHTS_DONE = re.compile(r"Model loading took (?P<gib>[\d.]+) GiB(?: memory)? and (?P<s>[\d.]+) s")
_LOADING_WEIGHTS = re.compile(r"Loading weights took (?P<s>[\d.]+) s")
# TPU (tpu-inference): "Init model | hbm=[(13.06, 95.74), ...]GiB" once the weights are on the chips.
_TPU_INIT_MODEL = re.compile(r"Init model \| hbm=\[(?P<hbm>.*?)\]\s*GiB")
_STREAMED = re.compile(r"Overall time to stream (?P<size>[\d.]+) (?P<unit>[KMGT]i?B)\b.*?: (?P<s>[\d.]+)s")
# Compile / warm-up: torch.compile (GPU) and the XLA precompile (TPU), then the engine's own total.
_TORCH_COMPILE = re.compile(r"torch\.compile (?:takes|took|and initial profiling run took) (?P<s>[\d.]+) s")
_COMPILE_CACHE_HIT = re.compile(r"Directly load the compiled graph|Directly load AOT compilation")
_XLA_COMPILE = re.compile(r"Compilation of .* finished in (?P<s>[\d.]+) \[secs\]")
_ENGINE_INIT = re.compile(r"init engine \(profile, create kv cache, warmup model\) took (?P<s>[\d.]+) s")
_SERVER_UP = re.compile(r"Application startup complete")

_UNITS = {"B": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40, "KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12}
_IMAGE_SIZE = re.compile(r"Image size: (?P<n>\d+) bytes")
_PULL_TIME = re.compile(r"Successfully pulled image \S+ in (?P<s>[\d.]+)(?P<unit>ms|s)")

PHASES = ("node", "image", "init", "start", "weights", "compile", "ready")
TITLES = {
    "node": "node requested → ready",
    "image": "image pulled",
    "init": "init containers",
    "start": "container started",
    "weights": "weights loaded",
    "compile": "compile / warm-up",
    "ready": "server up → Ready",
}


@dataclass
class Phase:
    name: str
    start: str | None = None  # RFC 3339, UTC
    end: str | None = None
    detail: str = ""  # what was measured inside it (bytes, rate, cache hit, ...)
    source: str = ""  # where the end came from: a condition, an event, a log line
    facts: dict = field(default_factory=dict)

    @property
    def seconds(self) -> float | None:
        if self.start is None or self.end is None:
            return None
        return max(0.0, (parse_time(self.end) - parse_time(self.start)).total_seconds())


@dataclass
class Timeline:
    pod: str
    created: str | None
    ready: str | None
    phases: list[Phase]

    @property
    def total_s(self) -> float | None:
        if self.created is None or self.ready is None:
            return None
        return (parse_time(self.ready) - parse_time(self.created)).total_seconds()

    def phase(self, name: str) -> Phase | None:
        return next((p for p in self.phases if p.name == name), None)

    @property
    def probe_window_s(self) -> float | None:
        """Container started → Ready: the part of a start the startupProbe has to wait out."""
        started = self.phase("start")
        if started is None or started.end is None or self.ready is None:
            return None
        return max(0.0, (parse_time(self.ready) - parse_time(started.end)).total_seconds())

    def slowest(self) -> Phase | None:
        known = [p for p in self.phases if p.seconds is not None]
        return max(known, key=lambda p: p.seconds) if known else None

    def to_json(self) -> dict:
        return {"pod": self.pod, "created": self.created, "ready": self.ready, "total_s": self.total_s,
                "slowest": (self.slowest() or Phase("")).name or None,
                "phases": [{**asdict(p), "seconds": p.seconds,
                            "status": "measured" if p.seconds is not None else "unknown"} for p in self.phases]}


def parse_time(text: str) -> _dt.datetime:
    """RFC 3339 as the API and the kubelet write it (seconds, or nanoseconds in log timestamps)."""
    m = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)?$", text.strip())
    if not m:
        raise ValueError(f"not an RFC 3339 time: {text!r}")
    base, frac, zone = m.groups()
    micro = (frac or "0")[:6].ljust(6, "0")
    stamp = _dt.datetime.fromisoformat(f"{base}.{micro}{'+00:00' if zone in (None, 'Z') else zone}")
    return stamp.astimezone(_dt.timezone.utc)


def split_log_line(line: str) -> tuple[str | None, str]:
    """``timestamps=true`` log lines start with the kubelet's RFC 3339 stamp: (stamp, text)."""
    head, _, rest = line.partition(" ")
    if re.match(r"\d{4}-\d\d-\d\dT", head):
        return head, rest
    return None, line


def _condition_time(pod: dict, kind: str) -> str | None:
    for c in (pod.get("status") or {}).get("conditions") or []:
        if c.get("type") == kind and c.get("status") == "True":
            return c.get("lastTransitionTime")
    return None


def _event_time(event: dict) -> str | None:
    return event.get("firstTimestamp") or event.get("eventTime") or (event.get("metadata") or {}).get("creationTimestamp")


def _first(events: list[dict], reason: str, container: str | None = None) -> dict | None:
    found = [e for e in events if e.get("reason") == reason and _event_time(e)
             and (container is None or (e.get("involvedObject") or {}).get("fieldPath", "").endswith(f"{{{container}}}"))]
    return min(found, key=lambda e: parse_time(_event_time(e))) if found else None


def _scale_up_words(event: dict) -> str:
    """"pod triggered scale-up: [{.../instanceGroups/gke-c-pool-grp 0->1 (max: 1)}]" → "scale-up 0->1 (gke-c-pool-grp)"."""
    m = re.search(r"([\w.-]+) (\d+->\d+)", event.get("message", ""))
    return f"scale-up {m.group(2)} ({m.group(1)})" if m else "scale-up triggered"


def _image_detail(pulled: dict | None, streaming: bool | None) -> tuple[str, dict]:
    if pulled is None:
        return "", {}
    message = pulled.get("message", "")
    if "already present on machine" in message:
        return "already on the node", {"cached": True}
    facts: dict = {"cached": False, "streamed": streaming}
    parts = []
    size = _IMAGE_SIZE.search(message)
    if size:
        facts["bytes"] = int(size.group("n"))
        parts.append(format_size(facts["bytes"]))
    took = _PULL_TIME.search(message)
    if took:
        facts["pull_s"] = float(took.group("s")) / (1000 if took.group("unit") == "ms" else 1)
    if streaming is not None:  # None: the node's events were not read (yet)
        parts.append("image streaming" if streaming else "full pull (no image streaming)")
    return ", ".join(parts), facts


def _streamed(image: str, node: str | None, node_events: list[dict]) -> bool:
    """GKE reports an image served by image streaming as an ``ImageStreaming`` event on the node:
    "Image <ref> is backed by image streaming." (GKE docs, "Use Image streaming to pull container images")."""
    bare = image.split("@")[0]
    for e in node_events:
        if e.get("reason") != "ImageStreaming" or "backed by image streaming" not in e.get("message", ""):
            continue
        if node and (e.get("involvedObject") or {}).get("name") not in (node, None):
            continue
        if bare.rsplit(":", 1)[0] in e.get("message", "") or image in e.get("message", ""):
            return True
    return False


def _scan_log(lines: list[str]) -> dict:
    """Where each marker appears, with what the line says: the last time (with data parallelism every engine
    loads and compiles; the phase ends when the last one has), except the server coming up (the first)."""
    found: dict = {}
    for line in lines:
        stamp, text = split_log_line(line)
        if stamp is None:
            continue
        for key, pattern in (("weights", _WEIGHTS_DONE), ("loading", _LOADING_WEIGHTS), ("streamed", _STREAMED),
                             ("tpu_init", _TPU_INIT_MODEL),
                             ("torch_compile", _TORCH_COMPILE), ("xla_compile", _XLA_COMPILE),
                             ("engine_init", _ENGINE_INIT), ("up", _SERVER_UP)):
            m = pattern.search(text)
            if m and (key not in found or key != "up"):
                found[key] = (stamp, m)
        if _COMPILE_CACHE_HIT.search(text):
            found.setdefault("cache_hit", (stamp, None))
    return found


def startup_timeline(pod: dict, events: list[dict], log_lines: list[str], *, container: str = "vllm",
                     node_events: list[dict] | None = None) -> Timeline:
    """The phases of one pod's start. ``events`` are the pod's own, ``log_lines`` the container's log read
    with ``timestamps=true``, ``node_events`` what GKE recorded about the node (image streaming)."""
    meta, status, spec = pod.get("metadata") or {}, pod.get("status") or {}, pod.get("spec") or {}
    created = meta.get("creationTimestamp")
    scheduled = _condition_time(pod, "PodScheduled")
    ready = _condition_time(pod, "Ready")
    phases: dict[str, Phase] = {}

    # Node: from the pod's creation until it was bound to a node (the autoscaler's scale-up inside).
    scale_up = _first(events, "TriggeredScaleUp")
    phases["node"] = Phase("node", created, scheduled, source="PodScheduled condition",
                           detail=_scale_up_words(scale_up) if scale_up else ("a node was ready" if scheduled else ""),
                           facts={"scale_up": bool(scale_up)})

    # Image: the first pull the pod waited for (the init container's, when it has one of the same image).
    image = next((c.get("image", "") for c in spec.get("containers") or [] if c.get("name") == container), "")
    pulling, pulled = _first(events, "Pulling"), _first(events, "Pulled")
    streaming = None if node_events is None else _streamed(image, spec.get("nodeName"), node_events)
    detail, facts = _image_detail(pulled, streaming)
    start = _event_time(pulling) if pulling else (_event_time(pulled) if pulled and facts.get("cached") else None)
    phases["image"] = Phase("image", start, _event_time(pulled) if pulled else None, detail,
                            "Pulling/Pulled events", facts)

    # Init containers (l4: the weights download into the model cache).
    if spec.get("initContainers"):
        init_states = [(s.get("state") or {}).get("terminated") or {} for s in status.get("initContainerStatuses") or []]
        init_start = min((t["startedAt"] for t in init_states if t.get("startedAt")), default=None,
                         key=lambda t: parse_time(t))
        phases["init"] = Phase("init", init_start, _condition_time(pod, "Initialized"),
                               ", ".join(s.get("name", "") for s in spec["initContainers"]),
                               "init containers' startedAt → Initialized condition")

    # Container started: the runtime has the vLLM process going.
    cstatus = next((s for s in status.get("containerStatuses") or [] if s.get("name") == container), {})
    started_at = ((cstatus.get("state") or {}).get("running") or {}).get("startedAt")
    previous_end = (phases["init"].end if "init" in phases else None) or phases["image"].end or scheduled
    phases["start"] = Phase("start", previous_end, started_at, source=f"{container} state.running.startedAt")

    # Weights, compile, ready: vLLM's own lines.
    log = _scan_log(log_lines)
    wfacts, wdetail = {}, ""
    if "weights" in log:
        m = log["weights"][1]
        wfacts = {"gib": float(m.group("gib")), "model_loading_s": float(m.group("s"))}
    if "streamed" in log:
        m = log["streamed"][1]
        wfacts.setdefault("gib", float(m.group("size")) * _UNITS[m.group("unit")] / 2**30)
        wfacts["stream_s"] = float(m.group("s"))
    if "loading" in log:
        wfacts["loading_weights_s"] = float(log["loading"][1].group("s"))
    if "tpu_init" in log:
        used = [float(x) for x in re.findall(r"\(([\d.]+),", log["tpu_init"][1].group("hbm"))]
        if used:  # HBM in use once the weights are there (before the KV cache): the weights, near enough
            wfacts["hbm_used_gib"] = round(sum(used), 2)
            wfacts.setdefault("gib", wfacts["hbm_used_gib"])
    # Every marker is a step of the load; the last one is when the weights are on the accelerator.
    ends = [log[k][0] for k in ("weights", "streamed", "loading", "tpu_init") if k in log]
    weights_end = max(ends, key=parse_time) if ends else None
    if wfacts:
        wfacts["bytes"] = int(wfacts["gib"] * 2**30) if "gib" in wfacts else None
        took = wfacts.get("loading_weights_s") or wfacts.get("stream_s") or wfacts.get("model_loading_s")
        if wfacts.get("gib") and took:
            wfacts["gib_per_s"] = round(wfacts["gib"] / took, 3)
            wdetail = f"{wfacts['gib']:.1f} GiB in {took:.1f}s ({wfacts['gib_per_s']:.2f} GiB/s)"
    phases["weights"] = Phase("weights", started_at, weights_end, wdetail, "vLLM log", wfacts)

    compile_end, cfacts, cdetail = None, {}, ""
    for key in ("torch_compile", "xla_compile"):
        if key in log:
            stamp, m = log[key]
            compile_end = stamp
            cfacts[f"{key}_s"] = float(m.group("s"))
    if "engine_init" in log:
        compile_end, m = log["engine_init"][0], log["engine_init"][1]
        cfacts["engine_init_s"] = float(m.group("s"))
    if cfacts:
        cfacts["cache_hit"] = "cache_hit" in log
        what = "torch.compile" if "torch_compile_s" in cfacts else "XLA compile" if "xla_compile_s" in cfacts else ""
        if what:
            cdetail = f"{what} {cfacts.get('torch_compile_s', cfacts.get('xla_compile_s')):.1f}s"
        cdetail += (", " if cdetail else "") + ("from the compile cache" if cfacts["cache_hit"] else
                                                 "no compile cache hit" if what == "torch.compile" else "")
    phases["compile"] = Phase("compile", weights_end if compile_end else None, compile_end, cdetail.strip(", "),
                              "vLLM log", cfacts)

    # The last measured end before Ready: an unknown phase above stays unknown instead of being absorbed.
    last_known = next((p.end for p in (phases["compile"], phases["weights"], phases["start"]) if p.end), None)
    up = log.get("up", (None,))[0]
    phases["ready"] = Phase("ready", last_known, ready, ("API server up at +" + format_duration(
        (parse_time(up) - parse_time(last_known)).total_seconds()) if up and last_known else ""),
        "Ready condition")
    return Timeline(meta.get("name", ""), created, ready, [phases[n] for n in PHASES if n in phases])


# ---------------------------------------------------------------------------------------------
# The terminal chart


def chart(timeline: Timeline, figures: tuple = (), source: str = "", width: int = 28) -> list[str]:
    """A Gantt-like bar per phase on the pod's own clock, the slowest named, and beside it the published
    figures (``figures``: (phase or "total", seconds, what the source says), from ``source``)."""
    total = timeline.total_s
    lines = [f"startup timeline of pod {timeline.pod}: "
             + (f"{format_duration(total)} from pod created to Ready" if total is not None else "not Ready yet")]
    origin = parse_time(timeline.created) if timeline.created else None
    span = max(total or 0.0, max((((parse_time(p.end) - origin).total_seconds()) for p in timeline.phases
                                  if p.end and origin), default=0.0), 1e-9)
    label = max(len(TITLES[p.name]) for p in timeline.phases)
    for p in timeline.phases:
        secs = p.seconds
        if secs is None or origin is None:
            bar, took = "·" * width, "unknown"
        else:
            begin = (parse_time(p.start) - origin).total_seconds()
            left = min(width - 1, int(round(begin / span * width)))
            size = max(1, int(round(secs / span * width)))
            bar = (" " * left + "█" * size)[:width].ljust(width)
            took = format_duration(secs)
        beside = "; ".join(f"{source}: {format_duration(s)}" for name, s, _ in figures if name == p.name)
        extra = "  ".join(x for x in (p.detail, f"[{beside}]" if beside else "") if x)
        lines.append(f"  {TITLES[p.name]:<{label}} |{bar}| {took:>8}  {extra}".rstrip())
    slow = timeline.slowest()
    if slow is not None:
        share = f" ({slow.seconds / total:.0%} of the start)" if total else ""
        lines.append(f"  slowest: {TITLES[slow.name]}, {format_duration(slow.seconds)}{share}")
    unknown = [TITLES[p.name] for p in timeline.phases if p.seconds is None]
    if unknown:
        lines.append(f"  unknown (no event, condition or log line for it): {', '.join(unknown)}")
    totals = [f"{words} ({format_duration(s)})" for name, s, words in figures if name == "total"]
    if source:
        lines.append(f"  {source}: " + ("; ".join(totals) if totals else "publishes no startup times"))
    return lines


def summary(timeline: Timeline) -> str:
    """One line: total and slowest phase."""
    slow = timeline.slowest()
    total = timeline.total_s
    return ("started in " + (format_duration(total) if total is not None else "an unknown time")
            + (f" (slowest: {TITLES[slow.name]}, {format_duration(slow.seconds)})" if slow else ""))


# ---------------------------------------------------------------------------------------------
# Reading it from the cluster

# The whole startup log is read once, when the pod is ready: its first lines carry every marker.
_LOG_LIMIT_BYTES = 8 * 2**20


def read_pod_timeline(k, namespace: str, pod: dict, *, container: str = "vllm", log_lines: list[str] | None = None
                      ) -> Timeline:
    """Read a pod's events, the node's image-streaming events and (unless given) its log, then build the
    timeline. ``pod`` is the API's JSON (camelCase). Node events live in the ``default`` namespace; a
    cluster that does not let us read them leaves "image streaming" unsaid rather than failing the run."""
    from kubernetes.client.exceptions import ApiException

    name = pod["metadata"]["name"]
    events = [k.api_client.sanitize_for_serialization(e) for e in k.core.list_namespaced_event(namespace).items]
    events = [e for e in events if (e.get("involvedObject") or {}).get("name") == name]
    try:
        node_events = [k.api_client.sanitize_for_serialization(e) for e in k.core.list_namespaced_event("default").items]
        node_events = [e for e in node_events if e.get("reason") == "ImageStreaming"]
    except ApiException:
        node_events = None
    if log_lines is None:
        log_lines = pod_log(k, namespace, name, container=container)
    timeline = startup_timeline(pod, events, log_lines, container=container, node_events=node_events)
    image = timeline.phase("image")
    if node_events is None and image is not None and image.end and not image.facts.get("cached"):
        image.detail = ", ".join(x for x in (image.detail, "image streaming not observed (cannot read the "
                                                           "node's events in namespace default)") if x)
    return timeline


def pod_log(k, namespace: str, name: str, *, container: str = "vllm", tail_lines: int | None = None,
            timestamps: bool = True) -> list[str]:
    """The container's log (with the kubelet's timestamps unless told otherwise); [] while it has not started."""
    from kubernetes.client.exceptions import ApiException

    query = {"tail_lines": tail_lines} if tail_lines else {"limit_bytes": _LOG_LIMIT_BYTES}
    try:
        text = k.core.read_namespaced_pod_log(name, namespace, container=container, timestamps=timestamps, **query)
    except ApiException:
        return []
    return (text or "").splitlines()


def last_startup_annotation(timeline: Timeline, previous: dict | None = None) -> str:
    """What the workload remembers of its last start (``gptoss-gke/last-startup``): compact JSON.

    ``slowest_probe_window_s`` keeps the slowest container-started → Ready seen on this workload (usually
    the first start, with cold compile caches), so one warm restart cannot shrink the startupProbe."""
    import json

    windows = [w for w in (timeline.probe_window_s, (previous or {}).get("slowest_probe_window_s"))
               if isinstance(w, (int, float))]
    return json.dumps({"pod": timeline.pod, "ready": timeline.ready, "total_s": timeline.total_s,
                       "probe_window_s": timeline.probe_window_s,
                       "slowest_probe_window_s": max(windows) if windows else None,
                       "phases": {p.name: p.seconds for p in timeline.phases}}, separators=(",", ":"))
