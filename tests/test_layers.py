"""The package's floors: a module imports only from its own floor's packages without a cycle,
or from the floors below it (docs/architecture.md). Every import counts, also one inside a
function; an import inside a function must say on its line why it is not at the top."""

import ast
import itertools
from pathlib import Path

import dhat

ROOT = Path(dhat.__file__).parent

# top to bottom; a unit is a subpackage (dhat.train) or a base module (dhat.errors)
FLOORS: list[set[str]] = [
    {"cli"},
    {"analysis", "export"},
    {"train", "eval"},
    {"config"},
    {"methods"},
    {"data"},
    {"attacks", "cam"},
    {"checkpoint"},
    {"models"},
    {
        "errors",
        "io",
        "schema",
        "modes",
        "pixels",
        "rundir",
        "distributed",
        "trackers",
        "__version__",
    },
]
FLOOR = {unit: i for i, units in enumerate(FLOORS) for unit in units}


def unit_of(module: str) -> str:
    """dhat.train.loop -> train; dhat.errors -> errors; dhat -> dhat (the public facade)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "dhat"


def imports() -> list[tuple[str, int, str, str, bool]]:
    """(file, line, importing unit, imported dhat module, at module top) for every import."""
    out = []
    for f in sorted(ROOT.rglob("*.py")):
        rel = f.relative_to(ROOT.parent).with_suffix("")
        module = ".".join(rel.parts)
        if f.name == "__init__.py":
            module = package = module[: -len(".__init__")]
        else:
            package = module.rsplit(".", 1)[0]
        tree = ast.parse(f.read_text())
        top = {id(n) for n in tree.body} | {
            id(n)  # `if TYPE_CHECKING:` imports are for the type checker: at the top too
            for block in tree.body
            if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test)
            for n in block.body
        }
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                targets = [target] if node.module else [f"{target}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            for t in targets:
                if t == "dhat" or t.startswith("dhat."):
                    out.append((str(rel), node.lineno, unit_of(module), t, id(node) in top))
    return out


def test_every_unit_has_a_floor():
    units = {a for _, _, a, _, _ in imports()} | {unit_of(t) for _, _, _, t, _ in imports()}
    assert units - {"dhat"} <= set(FLOOR), sorted(units - set(FLOOR) - {"dhat"})


def test_no_upward_import():
    up = [
        f"{f}:{line} ({a} imports {t})"
        for f, line, a, t, _ in imports()
        if a != "dhat" and unit_of(t) not in ("dhat", a) and FLOOR[unit_of(t)] < FLOOR[a]
    ]
    assert not up, "upward imports:\n" + "\n".join(up)


def test_no_cycle_between_packages():
    edges = {(a, unit_of(t)) for _, _, a, t, _ in imports() if a != unit_of(t) and a != "dhat"}
    two = [f"{a} <-> {b}" for (a, b) in edges if (b, a) in edges and a < b]
    assert not two, two
    # longer cycles can only run within a floor: no edge goes up
    for floor in FLOORS:
        inner = {(a, b) for a, b in edges if a in floor and b in floor}
        for a, b, c in itertools.permutations(floor, 3):
            assert not {(a, b), (b, c), (c, a)} <= inner, (a, b, c)


def test_an_import_inside_a_function_says_why():
    lines = {}
    bare = []
    for f, line, _, t, at_top in imports():
        if at_top:
            continue
        text = lines.setdefault(f, (ROOT.parent / f"{f}.py").read_text().splitlines())
        if "#" not in text[line - 1]:
            bare.append(f"{f}:{line} ({t})")
    assert not bare, "imports inside functions without a reason:\n" + "\n".join(bare)


def test_the_checker_sees_an_upward_import(tmp_path):
    """The check can fail: a lower unit importing a higher one is on the wrong side."""
    assert FLOOR["models"] > FLOOR["train"] > FLOOR["cli"]
    assert unit_of("dhat.train.loop") == "train" and unit_of("dhat.errors") == "errors"
