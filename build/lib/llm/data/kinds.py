"""Which ingester reads a file: by extension (or name, for Makefile and friends), then by content.

For PDFs, images and unknown extensions the first bytes win, so a PNG named `.pdf` is read as an image
and a `.pdf` that is neither is reported by the PDF ingester ("not a PDF").
"""

from __future__ import annotations

from pathlib import Path

CODE = {
    ".py": "python", ".pyi": "python", ".pyx": "python", ".ipynb": "notebook",
    ".c": "c", ".h": "c", ".cc": "cpp", ".cpp": "cpp", ".cxx": "cpp", ".hpp": "cpp", ".hh": "cpp", ".hxx": "cpp",
    ".cu": "cuda", ".cuh": "cuda", ".rs": "rust", ".go": "go", ".java": "java", ".kt": "kotlin", ".kts": "kotlin",
    ".scala": "scala", ".js": "javascript", ".mjs": "javascript", ".cjs": "javascript", ".jsx": "javascript",
    ".ts": "typescript", ".tsx": "typescript", ".mts": "typescript", ".cts": "typescript",
    ".sh": "shell", ".bash": "shell", ".zsh": "shell", ".fish": "shell", ".ps1": "powershell",
    ".sql": "sql", ".rb": "ruby", ".php": "php", ".swift": "swift", ".m": "objective-c", ".mm": "objective-c",
    ".cs": "csharp", ".fs": "fsharp", ".vb": "vbnet", ".lua": "lua", ".r": "r", ".jl": "julia", ".hs": "haskell",
    ".ml": "ocaml", ".mli": "ocaml", ".ex": "elixir", ".exs": "elixir", ".erl": "erlang", ".clj": "clojure",
    ".dart": "dart", ".zig": "zig", ".nim": "nim", ".pl": "perl", ".pm": "perl", ".vim": "vim",
    ".toml": "toml", ".yaml": "yaml", ".yml": "yaml", ".json": "json", ".ini": "ini", ".cfg": "ini",
    ".css": "css", ".scss": "css", ".less": "css", ".proto": "protobuf", ".f90": "fortran", ".f": "fortran",
    ".tex": "latex", ".cmake": "cmake", ".mk": "make", ".gradle": "groovy", ".groovy": "groovy",
    ".vue": "vue", ".svelte": "svelte", ".graphql": "graphql", ".tf": "terraform", ".nix": "nix",
}  # fmt: skip
CODE_NAMES = {
    "Makefile": "make", "GNUmakefile": "make", "Dockerfile": "docker", "CMakeLists.txt": "cmake",
    "Jenkinsfile": "groovy", "Vagrantfile": "ruby", "Rakefile": "ruby", "Gemfile": "ruby",
}  # fmt: skip
TEXT = {".txt", ".md", ".markdown", ".rst", ".text", ".org", ".adoc", ".csv", ".tsv", ".log"}
PDF = {".pdf"}
IMAGE = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp", ".gif", ".heic", ".heif"}
# formats read by unstructured's partitioners (office.py); kind -> extensions
OFFICE = {
    "html": {".html", ".htm", ".xhtml", ".xml"},
    "office": {".docx", ".doc", ".pptx", ".ppt", ".xlsx", ".xls", ".odt", ".rtf", ".epub"},
    "email": {".eml", ".msg"},
}

_MAGIC = (
    (b"%PDF-", "pdf"), (b"\x89PNG\r\n\x1a\n", "image"), (b"\xff\xd8\xff", "image"), (b"GIF87a", "image"),
    (b"GIF89a", "image"), (b"II*\x00", "image"), (b"MM\x00*", "image"), (b"BM", "image"),
)  # fmt: skip


def kind_of(path: Path, head: bytes = b"") -> tuple[str, str | None]:
    """(kind, language) from the name and the first bytes; kind 'unknown' when nothing reads it."""
    kind, language = _by_name(path)
    if kind in ("pdf", "image", "unknown"):
        return sniff(head) or kind, language
    if kind == "text" and not path.suffix and not head.startswith(b"BM"):  # a README-like name on a PDF or
        return sniff(head) or kind, language  # image saved without extension (text may begin "BM": not a bitmap)
    return kind, language


def _by_name(path: Path) -> tuple[str, str | None]:
    if path.name in CODE_NAMES:
        return "code", CODE_NAMES[path.name]
    suffix = path.suffix.lower()
    if suffix in PDF:
        return "pdf", None
    if suffix in IMAGE:
        return "image", None
    if suffix in CODE:
        return "code", CODE[suffix]
    if suffix in TEXT or (not suffix and path.name.isupper()):  # README, LICENSE, AUTHORS
        return "text", None
    for kind, suffixes in OFFICE.items():
        if suffix in suffixes:
            return kind, None
    return "unknown", None


def sniff(head: bytes) -> str | None:
    """'pdf' or 'image' from magic bytes, else None. A file that starts like an image is one, even if
    "%PDF-" appears in its first kilobyte (where PDF readers accept the header)."""
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image"
    if kind := next((kind for magic, kind in _MAGIC if head.startswith(magic)), None):
        return kind
    return "pdf" if b"%PDF-" in head[:1024] else None
