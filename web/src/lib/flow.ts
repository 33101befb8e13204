// The manifest as Svelte Flow nodes and edges. Node components read everything else from the
// studio store by id, so these objects change only when the graph's shape or layout does.
import type { Edge, Node } from '@xyflow/svelte';
import { socketColor } from './sockets';
import type { NodeTypeSpec, Project } from './types';

/** Which node component draws a node type: one with takes, or one that holds a value. */
function componentKey(spec: NodeTypeSpec | undefined): string {
  return spec?.has_takes ? 'generation' : 'value';
}

export function toFlowNodes(
  project: Project,
  types: Record<string, NodeTypeSpec>,
  previous: Node[],
  selectedId: string | null,
): Node[] {
  // Selection and measured size belong to Svelte Flow: carry them over. A node Svelte Flow has
  // not seen yet is selected when the studio selected it (a node just added).
  const before = new Map(previous.map((n) => [n.id, n]));
  return project.nodes.map((n) => {
    const old = before.get(n.id);
    return {
      id: n.id,
      type: componentKey(types[n.node_type]),
      // A node being dragged stays under the pointer whatever the manifest says meanwhile.
      position: old?.dragging ? old.position : { ...n.position },
      data: {},
      selected: old ? old.selected : n.id === selectedId,
      ...(old?.measured ? { measured: old.measured } : {}),
    };
  });
}

export function toFlowEdges(project: Project, types: Record<string, NodeTypeSpec>, previous: Edge[]): Edge[] {
  const wasSelected = new Set(previous.filter((e) => e.selected).map((e) => e.id));
  const typeOfNode = new Map(project.nodes.map((n) => [n.id, types[n.node_type]]));
  return project.edges.map((e) => {
    const output = typeOfNode.get(e.source)?.outputs.find((s) => s.name === e.source_socket);
    return {
      id: e.id,
      source: e.source,
      sourceHandle: e.source_socket,
      target: e.target,
      targetHandle: e.target_socket,
      selected: wasSelected.has(e.id),
      style: output ? `stroke: ${socketColor(output.type)}; stroke-width: 2px;` : undefined,
      domAttributes: { 'data-testid': 'edge' } as Record<string, string>,
    };
  });
}
