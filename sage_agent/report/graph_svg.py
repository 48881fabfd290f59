"""The graph drawn as SVG, offline: grandalf's Sugiyama layout (what LangChain's own
``draw_ascii`` uses), written out as SVG here, with the path a thread took highlighted.
Mermaid or Graphviz would need a browser script from a CDN or a system binary."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from html import escape

from grandalf.graphs import Edge, Graph, Vertex
from grandalf.layouts import SugiyamaLayout
from grandalf.routing import route_with_lines
from langchain_core.runnables.graph import Graph as DrawableGraph

_CHAR_WIDTH, _NODE_HEIGHT, _PAD = 8.2, 30, 20


class _Box:
    """grandalf's view of a vertex: its size in, its position out."""

    def __init__(self, label: str) -> None:
        self.w, self.h, self.xy = len(label) * _CHAR_WIDTH + 28, _NODE_HEIGHT, (0.0, 0.0)


class _Line:
    """grandalf's view of an edge: the routed points."""

    points: list[tuple[float, float]]

    def setpath(self, points: list[tuple[float, float]]) -> None:
        self.points = points


def graph_svg(graph: DrawableGraph, path: Sequence[str] = ()) -> str:
    """The graph as an SVG element. ``path`` is the nodes a thread ran, in order: they and
    the edges between consecutive ones are highlighted, each node with its run count."""
    labels = {node: node.strip("_") for node in graph.nodes}
    vertices = {node: Vertex(node) for node in graph.nodes}
    for node, vertex in vertices.items():
        vertex.view = _Box(labels[node])
    edges = []
    for edge in graph.edges:
        line = Edge(vertices[edge.source], vertices[edge.target])
        line.view = _Line()
        edges.append((edge, line))
    layout_graph = Graph(list(vertices.values()), [line for _, line in edges])
    layout = SugiyamaLayout(layout_graph.C[0])
    roots = [v for v in layout_graph.C[0].sV if not v.e_in()]
    layout.init_all(roots=roots, optimize=True)
    layout.xspace, layout.yspace = 30, 40
    layout.route_edge = route_with_lines
    layout.draw()

    runs = Counter(path)
    walked = set(zip(["__start__", *path], [*path, "__end__"], strict=True)) if path else set()
    xs = [v.view.xy[0] for v in vertices.values()]
    ys = [v.view.xy[1] for v in vertices.values()]
    reach = max(v.view.w for v in vertices.values()) / 2 + _PAD
    extent = [min(xs) - reach, min(ys) - _NODE_HEIGHT, max(xs) + reach, max(ys) + _NODE_HEIGHT]
    for _, line in edges:  # back edges are routed outside the node columns
        for x, y in line.view.points:
            extent = [
                min(extent[0], x - _PAD),
                min(extent[1], y),
                max(extent[2], x + _PAD),
                max(extent[3], y),
            ]
    width, height = extent[2] - extent[0], extent[3] - extent[1]
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="graph" role="img" '
        f'aria-label="the SAGE graph" viewBox="{extent[0]:.0f} {extent[1]:.0f} '
        f'{width:.0f} {height:.0f}" width="{width:.0f}" height="{height:.0f}">',
        "<defs>"
        + "".join(
            f'<marker id="arrow-{kind}" viewBox="0 0 10 10" refX="9" refY="5" '
            'markerWidth="9" markerHeight="9" markerUnits="userSpaceOnUse" '
            'orient="auto-start-reverse">'
            f'<path d="M0,0 L10,5 L0,10 z" class="arrow {kind}"/></marker>'
            for kind in ("idle", "walked")
        )
        + "</defs>",
    ]
    for edge, line in edges:
        kind = "walked" if (edge.source, edge.target) in walked else "idle"
        points = " ".join(f"{x:.1f},{y:.1f}" for x, y in line.view.points)
        dashed = " conditional" if edge.conditional else ""
        parts.append(
            f'<polyline class="edge {kind}{dashed}" points="{points}" '
            f'marker-end="url(#arrow-{kind})"><title>{escape(edge.source)} → '
            f"{escape(edge.target)}</title></polyline>"
        )
    for node, vertex in vertices.items():
        (x, y), box = vertex.view.xy, vertex.view
        count = runs.get(node, 0)
        kind = "walked" if count or (path and node in ("__start__", "__end__")) else "idle"
        terminal = " terminal" if node in ("__start__", "__end__") else ""
        label = labels[node] + (f" ×{count}" if count > 1 else "")
        parts.append(
            f'<g class="node {kind}{terminal}"><title>{escape(node)}: ran {count} times'
            f'</title><rect x="{x - box.w / 2:.1f}" y="{y - box.h / 2:.1f}" width="{box.w:.1f}" '
            f'height="{box.h}" rx="8"/><text x="{x:.1f}" y="{y + 4:.1f}" '
            f'text-anchor="middle">{escape(label)}</text></g>'
        )
    parts.append("</svg>")
    return "\n".join(parts)
