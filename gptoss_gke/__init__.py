"""Playbooks that take openai's gpt-oss models to a verified vLLM endpoint on GKE, and back."""

__version__ = "0.1.0"
TOOL_NAME = "gptoss-gke"
