"""The backend interface check shared by the CPU and GPU primitive tests: a backend module provides
every name of core/primitives.Primitives, each op with the Protocol's parameters (self dropped)."""

import inspect
from types import ModuleType

from llmc.core.primitives import REQUIRED_OPS, Primitives

ATTRIBUTES = tuple(Primitives.__annotations__)  # name, xp, act_dtype, asynchronous


def protocol_parameters(op: str) -> list[tuple[str, object, inspect._ParameterKind]]:
    """(name, default, kind) of the Protocol method `op`, without self."""
    params = list(inspect.signature(getattr(Primitives, op)).parameters.values())[1:]
    return [(p.name, p.default, p.kind) for p in params]


def check_backend_interface(module: ModuleType) -> None:
    """Assert that `module` implements exactly the primitive set; the message names every mismatch."""
    problems = []
    for attr in ATTRIBUTES:
        if not hasattr(module, attr):
            problems.append(f"missing attribute {attr}")
    for op in REQUIRED_OPS:
        fn = getattr(module, op, None)
        if fn is None or not callable(fn):
            problems.append(f"missing op {op}")
            continue
        got = [(p.name, p.default, p.kind) for p in inspect.signature(fn).parameters.values()]
        want = protocol_parameters(op)
        if got != want:
            problems.append(f"{op}{inspect.signature(fn)} differs from the Protocol's "
                            f"({', '.join(n if d is inspect.Parameter.empty else f'{n}={d!r}' for n, d, _ in want)})")
    exported = getattr(module, "__all__", None)
    if exported is not None:  # nothing beyond the interface is advertised, nothing of it left out
        extra = sorted(set(exported) - set(REQUIRED_OPS) - set(ATTRIBUTES))
        missing = sorted((set(REQUIRED_OPS) | set(ATTRIBUTES)) - set(exported))
        if extra:
            problems.append(f"__all__ has names outside the interface: {extra}")
        if missing:
            problems.append(f"__all__ lacks {missing}")
    assert not problems, f"{module.__name__} does not implement core/primitives.py:\n  " + "\n  ".join(problems)
