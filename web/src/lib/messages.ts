// What a server message changes in the open project (node states, takes, the active take),
// applied in place. Each change sets a value, so a message applied twice — once as it arrives,
// once more on a project fetched meanwhile — leaves the same project.
import type { ServerMessage } from './protocol';
import type { Project, StudioNode, Take, TakeStatus } from './types';

/** What the store must fetch because a message says more changed than the message carries:
 * `node` — a take the store has never seen (a new reservation: the message names it, but its
 * number and file are in project.json only); `project` — a node the store does not have (added
 * elsewhere), or nodes downstream of a node whose output changed (the server sends only that
 * node's state). */
export type Refetch = { scope: 'node'; nodeId: string } | { scope: 'project' } | null;

const ENDED: readonly TakeStatus[] = ['completed', 'failed', 'cancelled'];

function setStatus(take: Take, status: TakeStatus): void {
  // A take that ended stays ended: a late message about it changes nothing.
  if (!ENDED.includes(take.status)) take.status = status;
}

function feedsOthers(project: Project, nodeId: string): boolean {
  return project.edges.some((e) => e.source === nodeId);
}

export function applyMessage(project: Project, message: ServerMessage): Refetch {
  if (message.type === 'server:tier_states' || message.type === 'server:quality_fallback') return null;
  if (message.type === 'server:error') return null;
  const node = project.nodes.find((n) => n.id === message.payload.node_id);
  if (!node) return { scope: 'project' };
  const needNode: Refetch = { scope: 'node', nodeId: node.id };
  const takeOf = (id: string | null | undefined): Take | undefined => node.takes.find((t) => t.id === id);

  switch (message.type) {
    case 'server:node_state_updated': {
      const { state, take_id, queue } = message.payload;
      node.state = state;
      if (!take_id) return null;
      const take = takeOf(take_id);
      if (!take) return needNode;
      if (queue || state === 'queued') setStatus(take, 'queued');
      else if (state === 'generating' && take.status === 'queued') setStatus(take, 'generating');
      return null;
    }
    case 'server:task_progress': {
      node.state = 'generating';
      const take = takeOf(message.payload.take_id);
      if (!take) return needNode;
      setStatus(take, 'generating');
      return null;
    }
    case 'server:task_success': {
      const { take_id, take_number, output_path } = message.payload.result;
      const take = upsertTake(node, take_id, take_number);
      take.path = output_path;
      take.status = 'completed';
      take.error = null;
      node.active_take = take_id; // a finished take becomes the node's output (studio.takes)
      return feedsOthers(project, node.id) ? { scope: 'project' } : null;
    }
    case 'server:task_failed': {
      const { take_id, error } = message.payload;
      if (!take_id) return null; // no take was reserved: nothing in the project changed
      const take = takeOf(take_id);
      if (!take) return needNode;
      take.status = 'failed';
      take.error = error;
      return null;
    }
    case 'server:task_cancelled': {
      const take = takeOf(message.payload.take_id);
      if (!take) return needNode;
      take.status = 'cancelled';
      return null;
    }
  }
}

function upsertTake(node: StudioNode, id: string, number: number): Take {
  let take = node.takes.find((t) => t.id === id);
  if (!take) {
    take = { id, number, path: '', status: 'completed', error: null };
    node.takes.push(take);
    node.takes.sort((a, b) => a.number - b.number);
    take = node.takes.find((t) => t.id === id)!;
  }
  return take;
}
