"""Measuring a YAML node tree before anything is built from it: how deep it nests, how many
nodes and bytes it expands to through aliases (measured without expanding: a "billion laughs"
bomb costs nothing to measure), repeated keys, and which field a position is in.

Pure functions over PyYAML nodes; `core.spec_loading` turns what they find into SpecProblems.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import yaml


@dataclass
class _Shape:
    """One node after alias expansion (measured without expanding: a node aliased N times is
    measured once and counted N times)."""

    depth: int  # how deeply collections nest (1 for a scalar)
    nodes: int
    size: int  # bytes of the scalars (keys and values) in it
    own: int  # bytes of this node itself (a scalar's text)


class _Recursive(Exception):
    """An alias inside its own anchor; the message is the field it is in."""


def _children(node: yaml.Node) -> list:
    if isinstance(node, yaml.MappingNode):
        return [child for pair in node.value for child in pair]
    return list(node.value) if isinstance(node, yaml.SequenceNode) else []


def _shapes(root: yaml.Node) -> dict[int, _Shape]:
    """Every node's _Shape by id, depth first without recursion (aliases can nest a document far
    deeper than it is written). An alias inside its own anchor raises _Recursive."""
    shapes: dict[int, _Shape] = {}
    open_nodes: set[int] = set()  # the current node's ancestors
    stack: list = [(root, False, ())]
    while stack:
        node, children_done, keys = stack.pop()
        key = id(node)
        if children_done:
            open_nodes.discard(key)
            kids = [shapes[id(child)] for child in _children(node)]
            if isinstance(node, yaml.ScalarNode):
                own = len(node.value.encode("utf-8", "replace"))
                shapes[key] = _Shape(1, 1, own, own)
            else:
                shapes[key] = _Shape(1 + max((k.depth for k in kids), default=0), 1 + sum(k.nodes for k in kids),
                                     sum(k.size for k in kids), 0)
        elif key not in shapes:
            if key in open_nodes:
                raise _Recursive(".".join(keys[:4]))
            open_nodes.add(key)
            stack.append((node, True, keys))
            if isinstance(node, yaml.MappingNode):  # keys (mapping keys only) name the field
                stack.extend(item for k, v in node.value
                             for item in ((k, False, keys), (v, False, keys + (k.value if isinstance(k, yaml.ScalarNode) else "?",))))
            else:
                stack.extend((child, False, keys) for child in _children(node))
    return shapes


def _where(node: yaml.Node, shapes: dict[int, _Shape], measure: str) -> str:
    """The field holding most of a too-large value: follow the child that holds over half of
    it (mapping keys only, at most 4: a spec field, not a path into the bad value)."""
    keys: list[str] = []
    while len(keys) < 4 and isinstance(node, (yaml.MappingNode, yaml.SequenceNode)):
        pairs = node.value if isinstance(node, yaml.MappingNode) else [(None, child) for child in node.value]
        if not pairs:
            break
        key, child = max(pairs, key=lambda pair: getattr(shapes[id(pair[1])], measure))
        if 2 * getattr(shapes[id(child)], measure) <= getattr(shapes[id(node)], measure):
            break
        if isinstance(key, yaml.ScalarNode):
            keys.append(key.value)
        node = child
    return ".".join(keys)


def shape_problem(root: yaml.Node, in_value: bool, *, max_depth: int, max_nodes: int, max_bytes: int) -> Optional[tuple[str, str]]:
    """(field, reason) when the document nests too deeply or expands past the node or byte
    budget; aliases are blamed only when they are the cause."""
    try:
        shapes = _shapes(root)
    except _Recursive as cycle:
        return str(cycle), "a YAML alias refers to its own anchor (a recursive structure); refused"
    top = shapes[id(root)]
    if top.depth > max_depth:
        return _where(root, shapes, "depth"), f"nested more than {max_depth} levels deep; refused"
    for measure, limit, unit in (("nodes", max_nodes, "nodes"), ("size", max_bytes, "bytes")):
        if getattr(top, measure) <= limit:
            continue
        where = _where(root, shapes, measure)
        written = len(shapes) if measure == "nodes" else sum(shape.own for shape in shapes.values())
        if written <= limit:  # small as written: the aliases blow it up
            return where, f"YAML aliases expand to more than {limit} {unit}; refused"
        what = "value" if in_value or where else "spec"
        amount = f"more than {limit} YAML nodes (keys, values, list items)" if measure == "nodes" else \
            f"more than {limit} bytes of keys and values"
        return where, f"{what} is too large: {amount}; refused"
    return None


def duplicate_key(root: yaml.Node) -> Optional[tuple[str, int]]:
    """(path, line) of the first key repeated in its mapping: YAML and JSON would silently keep
    the last value. Merge keys (<<) are not duplicates."""
    seen, stack = set(), [(root, ())]
    while stack:
        node, prefix = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            keys, children = set(), []
            for key_node, value_node in node.value:
                path = prefix + (key_node.value if isinstance(key_node, yaml.ScalarNode) else "?",)
                if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                    if (key_node.tag, key_node.value) in keys:
                        return ".".join(map(str, path)), key_node.start_mark.line + 1
                    keys.add((key_node.tag, key_node.value))
                children.append((value_node, path))
            stack.extend(reversed(children))
        elif isinstance(node, yaml.SequenceNode):
            stack.extend(reversed([(child, prefix + (i,)) for i, child in enumerate(node.value)]))
    return None


def path_at(root: yaml.Node, index: int) -> str:
    """The path (keys and list indices) of the value that starts at character `index`."""
    found: tuple = ()
    seen, stack = set(), [(root, ())]
    while stack:
        node, path = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if node.start_mark.index == index and len(path) >= len(found):  # the innermost value there
            found = path
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                key = key_node.value if isinstance(key_node, yaml.ScalarNode) else "?"
                stack += [(key_node, path), (value_node, path + (key,))]
        elif isinstance(node, yaml.SequenceNode):
            stack += [(child, path + (i,)) for i, child in enumerate(node.value)]
    return ".".join(map(str, found))
