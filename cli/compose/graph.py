"""Service dependencies: start order, the services an `up web` also needs, and cycles."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from cli.compose.errors import ComposeError


def check(services: Mapping[str, dict]) -> None:
    """Every dependency exists and there is no cycle (the cycle is named, in order)."""
    for name, svc in services.items():
        for dep in svc.get("depends_on", {}):
            if dep not in services:
                raise ComposeError(f'service "{name}" depends on undefined service "{dep}"')
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(name: str) -> None:
        state[name] = 1
        path.append(name)
        for dep in sorted(services[name].get("depends_on", {})):
            if state.get(dep) == 1:
                cycle = path[path.index(dep):] + [dep]
                raise ComposeError(f"dependency cycle detected: {' -> '.join(cycle)}")
            if dep not in state:
                visit(dep)
        path.pop()
        state[name] = 2

    for name in sorted(services):
        if name not in state:
            visit(name)


def with_dependencies(services: Mapping[str, dict], selected: Iterable[str]) -> set[str]:
    """The selected services and everything they depend on, transitively."""
    out: set[str] = set()
    todo = list(selected)
    while todo:
        name = todo.pop()
        if name in out:
            continue
        out.add(name)
        todo.extend(services[name].get("depends_on", {}))
    return out


def start_order(services: Mapping[str, dict], only: Iterable[str] | None = None) -> list[str]:
    """Dependencies before dependents; ties in name order so runs are repeatable."""
    names = set(services) if only is None else set(only)
    order: list[str] = []
    done: set[str] = set()

    def visit(name: str) -> None:
        if name in done:
            return
        done.add(name)
        for dep in sorted(services[name].get("depends_on", {})):
            if dep in names:
                visit(dep)
        order.append(name)

    for name in sorted(names):
        visit(name)
    return order


def stop_order(services: Mapping[str, dict], only: Iterable[str] | None = None) -> list[str]:
    """Dependents before their dependencies."""
    return list(reversed(start_order(services, only)))
