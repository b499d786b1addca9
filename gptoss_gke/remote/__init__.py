"""Remote execution over SSH (fabric): bastions and in-region staging hosts.

Two situations where running every step on the laptop is wrong:

1. *A bastion*: ``inv doctor --on HOST`` checks another host's tools and credentials by running the shell
   steps there (:class:`RemoteExecutor`: a fabric ``Connection`` behind invoke's ``run`` signature, so the
   Shell and the steps do not know where they run). A control plane without a public IP needs no bastion
   for the Kubernetes API: ``cluster.control_plane: dns`` reaches it through GKE's DNS-based endpoint.
2. *In-region staging*: ``inv stage-model --on HOST`` ships this checkout to a VM next to the bucket and
   runs the staging steps there (:func:`run_task_remotely`), relaying its output live and turning its
   report into local step results. The run there lasts exactly as long as its SSH channel's stdin stays
   open: an interrupt here (Ctrl-C, SIGTERM), this process dying or the connection dropping all end it
   with EOF, and the remote run stops as an interrupted local run does (``entry.py``).

Connections (:class:`RemoteSession`)
    Built from ``remote.*`` (``--on [user@]host[:port]`` overrides host, user and port). No ssh_config or
    agent surprises: the settings are the whole truth (with ``key_file`` set only that key is offered;
    without it, the agent and ~/.ssh/id_* are). Host keys are checked against ``remote.known_hosts`` with
    a refusing policy: an unknown host is refused with its fingerprint and the exact ``ssh-keyscan`` line
    to add it, a changed key is refused OpenSSH-style ("REMOTE HOST IDENTIFICATION HAS CHANGED").
    ``strict_host_keys: false`` trusts an unknown host on first use and records it (OpenSSH's
    ``accept-new``); a changed key is refused either way. Unreachable hosts and refused keys fail with what
    to check.

Secrets
    Never on a remote command line. fabric 3's ``inline_ssh_env`` would send ``export K=V && cmd`` (the
    values land in the remote shell's argv) and without ``AcceptEnv`` in sshd_config the ``env`` channel
    request is dropped. So :class:`RemoteExecutor` writes the step's environment (and stdin, if any) to a
    0600 file in a 0700 directory over SFTP, the command sources it (``set -a; . FILE``) and deletes it
    before running, and the file is deleted again afterwards whatever happened. The staging run gets its
    secrets on its SSH channel's stdin (one JSON line): nothing is ever written on the host.

Where each part lives: ``session.py`` (the connection, host keys, the executor), ``shipping.py`` (this
checkout as a tarball), ``entry.py`` (what runs on the host), ``steps.py`` (the remote host as a step, and
running a task's steps there). Only the standard library is imported here: the remote side starts as
``python -m gptoss_gke.remote.entry``, which loads this file first.
"""
