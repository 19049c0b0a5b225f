"""Which ingester reads a file, decided by its extension (or its name, for Makefile and friends)."""

from __future__ import annotations

from pathlib import Path

CODE = {
    ".py": "python", ".pyi": "python", ".c": "c", ".h": "c", ".cc": "cpp", ".cpp": "cpp", ".cxx": "cpp",
    ".hpp": "cpp", ".hh": "cpp", ".rs": "rust", ".go": "go", ".java": "java", ".kt": "kotlin",
    ".scala": "scala", ".js": "javascript", ".mjs": "javascript", ".cjs": "javascript", ".jsx": "javascript",
    ".ts": "typescript", ".tsx": "typescript", ".sh": "shell", ".bash": "shell", ".zsh": "shell",
    ".sql": "sql", ".rb": "ruby", ".php": "php", ".swift": "swift", ".cs": "csharp", ".lua": "lua",
    ".r": "r", ".jl": "julia", ".hs": "haskell", ".ml": "ocaml", ".ex": "elixir", ".erl": "erlang",
    ".toml": "toml", ".yaml": "yaml", ".yml": "yaml", ".json": "json", ".ini": "ini", ".cfg": "ini",
    ".css": "css", ".scss": "css", ".proto": "protobuf", ".cu": "cuda", ".f90": "fortran", ".tex": "latex",
}  # fmt: skip
CODE_NAMES = {"Makefile": "make", "Dockerfile": "docker", "CMakeLists.txt": "cmake"}
TEXT = {".txt", ".md", ".rst", ".text", ".markdown", ".org", ".csv", ".tsv", ".log"}


def kind_of(path: Path) -> tuple[str, str | None]:
    """(kind, language): kind is 'code', 'text' or 'unknown'; language only for code."""
    if path.name in CODE_NAMES:
        return "code", CODE_NAMES[path.name]
    suffix = path.suffix.lower()
    if suffix in CODE:
        return "code", CODE[suffix]
    if suffix in TEXT or (not suffix and path.name.isupper()):  # README, LICENSE, AUTHORS
        return "text", None
    return "unknown", None
