"""Checks on the Android app's Kotlin sources, which cannot be compiled here (no Android SDK, ExecuTorch or
LiteRT AARs): every import of the project's own packages resolves to a public declaration that exists, no import
is repeated, and every Android API the app uses is available at the catalog's min-sdk or sits behind a
`Build.VERSION.SDK_INT >= N` check or `@RequiresApi(N)`.

Run on a file from the command line (the closing note ran it on the app's MainActivity.kt before the fix):
    python tests/kotlin_checks.py FILE.kt...
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ANDROID = REPO / "android_demo"
CORE_SOURCES = ANDROID / "core" / "src" / "main" / "kotlin"
APP_SOURCES = ANDROID / "app" / "src" / "main" / "java"
CATALOG = ANDROID / "gradle" / "libs.versions.toml"

# APIs newer than the app's min-sdk that an app like this one reaches for, by the API level that added them
# (developer.android.com reference, "Added in API level N"). Classes by fully qualified name; members by name.
CLASS_API = {
    "android.graphics.ImageDecoder": 28,
    "android.hardware.HardwareBuffer": 26,
    "android.os.FileUtils": 29,
    "android.graphics.ColorSpace": 26,
    "java.nio.file.Files": 26,
    "java.nio.file.Paths": 26,
    "java.nio.file.Path": 26,
    "java.time": 26,  # a package: every class in it
    "kotlin.io.path": 26,  # wraps java.nio.file
}
MEMBER_API = {"mainExecutor": 28, "getMainExecutor": 28, "readAllBytes": 33, "transferTo": 33, "HARDWARE": 26}
VERSION_CODES = {"N": 24, "N_MR1": 25, "O": 26, "O_MR1": 27, "P": 28, "Q": 29, "R": 30, "S": 31, "S_V2": 32,
                 "TIRAMISU": 33, "UPSIDE_DOWN_CAKE": 34, "VANILLA_ICE_CREAM": 35}


def parser():
    import tree_sitter_kotlin
    from tree_sitter import Language, Parser

    return Parser(Language(tree_sitter_kotlin.language()))


def min_sdk() -> int:
    m = re.search(r'^min-sdk\s*=\s*"(\d+)"', CATALOG.read_text(), re.M)
    assert m, f"{CATALOG} declares no min-sdk"
    return int(m.group(1))


def _walk(node):
    yield node
    for c in node.children:
        yield from _walk(c)


def _is_public(decl) -> bool:
    return not any(c.type == "modifiers" and re.search(rb"\b(private|internal)\b", c.text) for c in decl.children)


def public_declarations(sources: Path) -> dict[str, set[str]]:
    """package -> the names of its public top-level classes, objects, interfaces, functions, properties, aliases."""
    out: dict[str, set[str]] = {}
    p = parser()
    for path in sorted(sources.rglob("*.kt")):
        root = p.parse(path.read_bytes()).root_node
        pkg = next((c.child_by_field_name("name") or c.children[1]).text.decode()
                   for c in root.children if c.type == "package_header")
        names = out.setdefault(pkg, set())
        for decl in root.children:
            if not _is_public(decl):
                continue
            if decl.type in ("class_declaration", "object_declaration", "type_alias", "function_declaration"):
                ident = next((c for c in decl.children if c.type == "identifier"), None)
                if ident is not None:
                    names.add(ident.text.decode())
            elif decl.type == "property_declaration":
                for v in (c for c in decl.children if c.type == "variable_declaration"):
                    names.update(c.text.decode() for c in v.children if c.type == "identifier")
    return out


def imports(root) -> list[tuple[int, str, str | None]]:
    """(line, imported name, alias) for every import; a wildcard import is 'pkg.*'."""
    out = []
    for node in root.children:
        if node.type != "import":
            continue
        name = next(c for c in node.children if c.type == "qualified_identifier").text.decode()
        wildcard = any(c.type == "*" for c in node.children)
        alias = next((c.text.decode() for c in node.children if c.type == "identifier"), None)
        out.append((node.start_point[0] + 1, name + (".*" if wildcard else ""), alias))
    return out


def unresolved_imports(source: bytes, declarations: dict[str, set[str]]) -> list[str]:
    """Imports of the project's own packages that name no public top-level declaration, and repeated imports."""
    problems, seen = [], set()
    for line, name, alias in imports(parser().parse(source).root_node):
        if (name, alias) in seen:
            problems.append(f"line {line}: import {name} is repeated")
        seen.add((name, alias))
        pkg = next((p for p in sorted(declarations, key=len, reverse=True) if name.startswith(p + ".")), None)
        if pkg is None:
            continue
        first = name[len(pkg) + 1:].split(".")[0]  # Step.Run: a nested class of Step
        if first != "*" and first not in declarations[pkg]:
            problems.append(f"line {line}: import {name}: {pkg} declares no public {first}")
    return problems


def _guard_level(node) -> int:
    """The API level the code around `node` is known to run at: SDK_INT checks of enclosing ifs (their then-branch)
    and @RequiresApi on enclosing declarations."""
    level = 0
    child = node
    parent = node.parent
    while parent is not None:
        if parent.type == "if_expression":
            # The grammar names the condition but not the branches: the then-branch is the first block after it.
            cond = parent.child_by_field_name("condition")
            blocks = [c for c in parent.children if c.type in ("block", "control_structure_body")]
            if cond is not None and blocks and blocks[0].start_byte <= child.start_byte < blocks[0].end_byte:
                level = max(level, _sdk_check(cond.text.decode()))
        if parent.type in ("function_declaration", "class_declaration", "object_declaration"):
            ann = b"".join(c.text for c in parent.children if c.type == "modifiers")
            prev = parent.prev_sibling  # a top-level `@RequiresApi(N) fun` parses as an annotated expression before it
            if prev is not None and prev.type == "annotated_expression":
                ann += prev.text
            for m in re.finditer(rb"RequiresApi\(\s*(?:api\s*=\s*)?([\w.]+)\s*\)", ann):
                level = max(level, _level(m.group(1).decode()))
        child, parent = parent, parent.parent
    return level


def _level(token: str) -> int:
    token = token.rsplit(".", 1)[-1]
    return int(token) if token.isdigit() else VERSION_CODES.get(token, 0)


def _sdk_check(cond: str) -> int:
    m = re.search(r"SDK_INT\s*(>=|>)\s*([\w.]+)", cond)
    if not m:
        return 0
    n = _level(m.group(2))
    return n + 1 if m.group(1) == ">" else n


def api_level_problems(source: bytes, minimum: int) -> list[str]:
    """Uses of APIs newer than `minimum` outside a matching SDK_INT check or @RequiresApi."""
    root = parser().parse(source).root_node
    imported = {}
    for _, name, alias in imports(root):
        if not name.endswith(".*"):
            imported[alias or name.rsplit(".", 1)[-1]] = name
    problems = []
    for node in _walk(root):
        if node.type != "identifier" or (node.parent is not None and node.parent.type in ("import", "qualified_identifier")):
            continue
        name = node.text.decode()
        need = 0
        fqn = imported.get(name)
        if fqn is not None:
            need = max((lvl for api, lvl in CLASS_API.items() if fqn == api or fqn.startswith(api + ".")), default=0)
        prev = node.prev_sibling or (node.parent.prev_sibling if node.parent is not None else None)
        if name in MEMBER_API and prev is not None and prev.type in (".", "?."):
            need = max(need, MEMBER_API[name])
        if need > minimum and _guard_level(node) < need:
            problems.append(f"line {node.start_point[0] + 1}: {name} needs API {need} (min-sdk {minimum}): guard it with "
                            f"`if (Build.VERSION.SDK_INT >= {need})` or @RequiresApi({need})")
    return problems


def check_app_file(path: Path) -> list[str]:
    declarations = public_declarations(CORE_SOURCES)
    for pkg, names in public_declarations(APP_SOURCES).items():
        declarations.setdefault(pkg, set()).update(names | {"BuildConfig"})  # generated by the Android build
    source = path.read_bytes()
    return unresolved_imports(source, declarations) + api_level_problems(source, min_sdk())


if __name__ == "__main__":
    failed = False
    for arg in sys.argv[1:]:
        problems = check_app_file(Path(arg))
        failed |= bool(problems)
        print(f"{arg}: {'ok' if not problems else f'{len(problems)} problem(s)'}")
        for p in problems:
            print(f"  {p}")
    sys.exit(1 if failed else 0)
