"""The `kubernetes` resource: jobs run as Kubernetes Jobs (W&B's kubernetes runner).

`manifest` (the Job an item becomes, and what an item may not put in it) imports no
client, so the agent's secure-mode checks use it freely; `KubernetesRunner` is imported on
use (`agent_lib.runners.kubernetes.runner`), like the container runner's docker SDK.
"""

from agent_lib.runners.kubernetes.manifest import KUBERNETES

__all__ = ["KUBERNETES"]
