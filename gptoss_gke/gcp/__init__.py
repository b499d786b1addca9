"""gcloud-backed resources: credentials, project, APIs, cluster, node pools, Artifact Registry."""
