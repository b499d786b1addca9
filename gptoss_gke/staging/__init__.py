"""Model staging: Hugging Face → Cloud Storage, only what vLLM loads, verified, resumable, fast.

How the pieces fit (each module says more):

* ``steps.py`` — the steps: :class:`~gptoss_gke.staging.steps.StageModel` (observe the hub and the
  folder, plan the difference, transfer it) and its delete, ``PurgeStagedModel``. The bucket and its
  IAM grant are Cloud Storage resources: ``gcp/storage.py``.
* ``hub.py`` — one repository at one revision: files, sizes, hashes, errors in words.
* ``transfer.py`` — the engine: chunks of every file downloaded with Range GETs and uploaded as the
  parts of one XML API multipart upload per file, hashed in order, verified before the final name
  is written; ``chunks.py`` bounds the temp space they hold.
* ``state.py`` — what one listing of the folder shows: staged objects, resume records, open uploads.
* ``claim.py`` — one run per folder: the in-progress marker and its heartbeat.

Why multipart uploads: parts upload in parallel within a file (gpt-oss-120b is fifteen 4.3 GB shards),
and they are not objects, so completing or aborting an upload leaves nothing behind. Chunk objects
composed server-side and then deleted would leave every byte twice in the bucket's bill for a week
(GCS keeps deleted objects soft-deleted, 7 days by default). Parts of an unfinished upload are billed
as stored until completed or aborted: a run aborts any upload of ours it will not resume, and
``teardown --purge-model`` aborts what is left.

The tutorial way (``hf download --local-dir`` then ``gcloud storage rsync``) runs the two phases one
after the other and needs the whole model on disk; this one overlaps them and holds a bounded amount.
Cloud SDKs are imported inside functions: ``inv --list`` must not load them.
"""
