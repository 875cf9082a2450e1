"""House rules that keep the layers apart (DESIGN.md, "Rules of the house").

- ``quality/`` outside ``quality/ui/`` never imports streamlit;
- ``pages/`` are thin: no SQL, numpy or DICOM code (``sqlalchemy``, ``numpy``, ``pydicom``);
- ``app.py`` is only a router: it imports nothing but streamlit and ``quality.ui``.

Imports are read with :mod:`ast`, so lazy imports inside functions count too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
QUALITY = ROOT / "quality"
PAGES = ROOT / "pages"
PAGE_FORBIDDEN = ("sqlalchemy", "numpy", "pydicom")


def imported_modules(path: Path) -> set[str]:
    """Top-level names of every module ``path`` imports (absolute imports only)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def _roots(modules: set[str]) -> set[str]:
    return {m.split(".", 1)[0] for m in modules}


def _library_files() -> list[Path]:
    return sorted(p for p in QUALITY.rglob("*.py") if (QUALITY / "ui") not in p.parents)


def test_helper_sees_lazy_and_dotted_imports(tmp_path: Path) -> None:
    f = tmp_path / "m.py"
    f.write_text(
        "import os\ndef f():\n    import streamlit.components.v1 as c\nfrom numpy import x\n"
    )
    assert _roots(imported_modules(f)) == {"os", "streamlit", "numpy"}


def test_library_does_not_import_streamlit() -> None:
    files = _library_files()
    assert files, "no library modules found"
    offenders = [
        str(p.relative_to(ROOT)) for p in files if "streamlit" in _roots(imported_modules(p))
    ]
    assert not offenders, f"only quality/ui/ may import streamlit: {offenders}"


@pytest.mark.parametrize("page", sorted(PAGES.glob("*.py")), ids=lambda p: p.name)
def test_pages_are_thin(page: Path) -> None:
    bad = _roots(imported_modules(page)) & set(PAGE_FORBIDDEN)
    assert not bad, f"{page.name} imports {sorted(bad)}: move that code into quality/"


def test_there_are_pages() -> None:
    assert {p.name for p in PAGES.glob("*.py")} >= {"overview.py", "browser.py"}


def test_app_is_only_a_router() -> None:
    mods = imported_modules(ROOT / "app.py")
    assert _roots(mods) <= {"__future__", "streamlit", "quality"}
    assert all(
        m == "quality.ui" or m.startswith("quality.ui.") for m in mods if m.startswith("quality")
    )
