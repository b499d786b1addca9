"""The playbook engine: steps observe, diff and act; the runner reports."""

from gptoss_gke.core.redact import Redactor
from gptoss_gke.core.step import Change, Plan, Step, noop, skip
from gptoss_gke.core.result import StepResult
from gptoss_gke.core.runner import Context, Runner

__all__ = ["Change", "Context", "Plan", "Redactor", "Runner", "Step", "StepResult", "noop", "skip"]
