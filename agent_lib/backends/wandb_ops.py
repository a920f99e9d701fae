"""The GraphQL documents the W&B backend sends, as W&B's own launch client sends them.

Each document is PART B of `reference/wandb-launch-schema-excerpt.graphql` with its
comments dropped (tests/wandb/test_wandb_ops.py proves each is the same document, parsed,
and validates it against the schema). Two are not spelled out in PART B:

- PROJECT_RUN_QUEUES: PART B names it only in a comment; this is the document W&B's client
  (`LaunchApi.get_project_run_queues`) sends, with the project as a variable.
- SWEEP_ID_AND_STATE: ours. `upsertSweep` needs the sweep's node id, which W&B's client
  reads with a large sweep-with-runs query; this asks only for the two fields used.
"""

from __future__ import annotations

PROJECT_RUN_QUEUES = """
query ProjectRunQueues($entity: String!, $projectName: String!) {
  project(entityName: $entity, name: $projectName) {
    runQueues { id name createdBy access }
  }
}
"""

CREATE_LAUNCH_AGENT = """
mutation createLaunchAgent($entity: String!, $project: String!, $queues: [ID!]!,
    $hostname: String!, $agentConfig: JSONString, $version: String) {
  createLaunchAgent(input: { entityName: $entity, projectName: $project,
      runQueues: $queues, hostname: $hostname,
      agentConfig: $agentConfig,
      version: $version }) {
    launchAgentId
  }
}
"""

LAUNCH_AGENT = """
query LaunchAgent($agentId: ID!) {
  launchAgent(id: $agentId) { id name runQueues hostname agentStatus stopPolling heartbeatAt }
}
"""

UPDATE_LAUNCH_AGENT = """
mutation updateLaunchAgent($agentId: ID!, $agentStatus: String) {
  updateLaunchAgent(input: { launchAgentId: $agentId, agentStatus: $agentStatus }) { success }
}
"""

ENTITY_IS_TEAM = """
query EntityIsTeam($entity: String!) { entity(name: $entity) { id isTeam } }
"""

POP_FROM_RUN_QUEUE = """
mutation popFromRunQueue($entity: String!, $project: String!, $queueName: String!,
    $launchAgentId: ID) {
  popFromRunQueue(input: { entityName: $entity, projectName: $project,
      queueName: $queueName, launchAgentId: $launchAgentId }) {
    runQueueItemId
    runSpec
  }
}
"""

ACK_RUN_QUEUE_ITEM = """
mutation ackRunQueueItem($itemId: ID!, $runId: String!) {
  ackRunQueueItem(input: { runQueueItemId: $itemId, runName: $runId }) { success }
}
"""

FAIL_RUN_QUEUE_ITEM = """
mutation failRunQueueItem($runQueueItemId: ID!, $message: String!, $stage: String!,
    $filePaths: [String!]) {
  failRunQueueItem(input: { runQueueItemId: $runQueueItemId, message: $message,
      stage: $stage,
      filePaths: $filePaths
  }) { success }
}
"""

UPDATE_RUN_QUEUE_ITEM_WARNING = """
mutation updateRunQueueItemWarning($runQueueItemId: ID!, $message: String!, $stage: String!,
    $filePaths: [String!]) {
  updateRunQueueItemWarning(input: { runQueueItemId: $runQueueItemId, message: $message,
      stage: $stage, filePaths: $filePaths }) { success }
}
"""

# W&B's client appends $priority only when a priority is set (older servers lack it).
PUSH_TO_RUN_QUEUE_BY_NAME = """
mutation pushToRunQueueByName($entityName: String!, $projectName: String!, $queueName: String!,
    $runSpec: JSONString!) {
  pushToRunQueueByName(input: { entityName: $entityName, projectName: $projectName,
      queueName: $queueName, runSpec: $runSpec
  }) { runQueueItemId runSpec }
}
"""

PUSH_TO_RUN_QUEUE_BY_NAME_WITH_PRIORITY = """
mutation pushToRunQueueByName($entityName: String!, $projectName: String!, $queueName: String!,
    $runSpec: JSONString!, $priority: Int) {
  pushToRunQueueByName(input: { entityName: $entityName, projectName: $projectName,
      queueName: $queueName, runSpec: $runSpec,
      priority: $priority
  }) { runQueueItemId runSpec }
}
"""

RUN_STOPPED_STATUS = """
query RunStoppedStatus($projectName: String, $entityName: String, $runId: String!) {
  project(name: $projectName, entityName: $entityName) { run(name: $runId) { stopped } }
}
"""

RUN_STATE = """
query RunState($project: String!, $entity: String!, $name: String!) {
  project(name: $project, entityName: $entity) { run(name: $name) { state } }
}
"""

GET_SWEEP_STATE = """
query GetSweepState($entity: String, $project: String, $sweep: String!) {
  project(name: $project, entityName: $entity) { sweep(sweepName: $sweep) { state } }
}
"""

SWEEP_ID_AND_STATE = """
query SweepIdAndState($entity: String, $project: String, $sweep: String!) {
  project(name: $project, entityName: $entity) { sweep(sweepName: $sweep) { id state } }
}
"""

UPSERT_SWEEP = """
mutation UpsertSweep($id: ID, $state: String, $entityName: String, $projectName: String) {
  upsertSweep(input: { id: $id, state: $state, entityName: $entityName,
      projectName: $projectName }) {
    sweep { name }
  }
}
"""

# Every document this backend may send, by operation name (tests validate each one).
ALL: dict[str, str] = {
    "ProjectRunQueues": PROJECT_RUN_QUEUES,
    "createLaunchAgent": CREATE_LAUNCH_AGENT,
    "LaunchAgent": LAUNCH_AGENT,
    "updateLaunchAgent": UPDATE_LAUNCH_AGENT,
    "EntityIsTeam": ENTITY_IS_TEAM,
    "popFromRunQueue": POP_FROM_RUN_QUEUE,
    "ackRunQueueItem": ACK_RUN_QUEUE_ITEM,
    "failRunQueueItem": FAIL_RUN_QUEUE_ITEM,
    "updateRunQueueItemWarning": UPDATE_RUN_QUEUE_ITEM_WARNING,
    "pushToRunQueueByName": PUSH_TO_RUN_QUEUE_BY_NAME,
    "pushToRunQueueByName+priority": PUSH_TO_RUN_QUEUE_BY_NAME_WITH_PRIORITY,
    "RunStoppedStatus": RUN_STOPPED_STATUS,
    "RunState": RUN_STATE,
    "GetSweepState": GET_SWEEP_STATE,
    "SweepIdAndState": SWEEP_ID_AND_STATE,
    "UpsertSweep": UPSERT_SWEEP,
}
