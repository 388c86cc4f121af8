"""NIR import, pass 1: nested ``NIRGraph`` nodes flattened into one graph of named nodes and edges."""
from __future__ import annotations

import nir

from snn2hw.nir.errors import NIRError


class PassThrough:
    """A subgraph's Input or Output node after flattening: passes its input on unchanged."""


def flatten(ng: nir.NIRGraph) -> tuple[dict, list[tuple[str, str]]]:
    """(nodes, edges) of one flat graph; node ``n`` of subgraph ``s`` is named ``s.n``."""
    nodes: dict = {}
    edges: list[tuple[str, str]] = []

    def ends(graph, kind) -> list[str]:
        return [n for n, v in graph.nodes.items() if isinstance(v, kind)]

    def add(graph, prefix: str, top: bool):
        for name, node in graph.nodes.items():
            full = prefix + str(name)
            if isinstance(node, nir.NIRGraph):
                add(node, full + ".", False)
            elif not top and isinstance(node, (nir.Input, nir.Output)):
                nodes[full] = PassThrough()
            else:
                nodes[full] = node

        def resolve(ref: str, side: str) -> list[str]:
            ref = str(ref)
            if ref in graph.nodes:
                node = graph.nodes[ref]
                if isinstance(node, nir.NIRGraph):  # an edge to/from a subgraph means its Input/Output nodes
                    inner = ends(node, nir.Input if side == "dst" else nir.Output)
                    if len(inner) != 1:
                        raise NIRError(f"node {prefix + ref!r}: subgraph has {len(inner)} "
                                       f"{'Input' if side == 'dst' else 'Output'} nodes; name one in the edge")
                    return [prefix + ref + "." + inner[0]]
                return [prefix + ref]
            head, _, tail = ref.partition(".")
            if tail and isinstance(graph.nodes.get(head), nir.NIRGraph):
                return [prefix + ref]
            raise NIRError(f"edge ({ref!r}) names an unknown node")

        for a, b in graph.edges:
            for x in resolve(a, "src"):
                for y in resolve(b, "dst"):
                    edges.append((x, y))

    add(ng, "", True)
    for a, b in edges:
        for x in (a, b):
            if x not in nodes:
                raise NIRError(f"edge ({a!r}, {b!r}) names an unknown node {x!r}")
            if isinstance(nodes[x], nir.NIRGraph):
                raise NIRError(f"edge ({a!r}, {b!r}): {x!r} is a subgraph")
    return nodes, edges
