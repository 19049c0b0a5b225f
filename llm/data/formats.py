"""The one registry of file kinds: each format's extensions and magic bytes, its reader, whether it is heavy,
and its version. Discovery (`Registry.kind_of`), the workers (`Format.read`) and the cache (`Format.kind`,
`.version`, `.settings`) all read REGISTRY below.

A file's format comes from its name (a whole name for Makefile and friends, else its extension), then, for
PDFs, images, archives, unknown extensions and README-like names without extension, from its first bytes: a PNG
named `.pdf` is read as an image, a PDF saved as `SUMMARY` as a PDF, and a `.pdf` that is neither is reported by
the PDF reader ("not a PDF"). The file inside a compressed single file is also read as text when its first bytes
are text (`changelog.gz`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llm.data import archive, code, image, office, pdf, text
from llm.data.office import Partition
from llm.data.reader import Read, Settings


def _no_settings(settings: Settings) -> None:
    return None


@dataclass(frozen=True)
class Format:
    """One row of the registry. Several formats may count as one kind (html: .html and .xml)."""

    kind: str  # the manifest's `kind`
    read: Read  # runs in a worker process, which receives it by reference (module and name)
    version: int  # part of the cache key: raise it when the same bytes would give different text
    extensions: Mapping[str, str | None]  # lower-case suffix -> language handed to the reader (code), else None
    names: Mapping[str, str | None] = field(default_factory=dict)  # whole file names (Makefile) -> language
    capitalised_names: bool = False  # README, LICENSE, AUTHORS: a name in capitals without extension
    # regular expressions searched in the first kilobyte; where several formats match, the earliest match wins
    magic: tuple[bytes, ...] = ()
    heavy: bool = False  # read through unstructured: workers import it first, and these files are scheduled first
    settings: Callable[[Settings], Any] = _no_settings  # the settings its text depends on (part of the cache key)
    container: bool = False  # archives and compressed files: unpacked, each member read as a file (archive.py)


class Registry:
    """The formats, indexed by file name and by extension."""

    def __init__(self, formats: Iterable[Format]) -> None:
        self.formats = tuple(formats)
        self._by_name: dict[str, tuple[Format, str | None]] = {}
        self._by_suffix: dict[str, tuple[Format, str | None]] = {}
        for f in self.formats:
            for index, keys in ((self._by_name, f.names), (self._by_suffix, f.extensions)):
                for key, language in keys.items():
                    if key in index:
                        raise ValueError(f"{key!r} is claimed by two formats: {index[key][0].kind} and {f.kind}")
                    index[key] = (f, language)
        self._capitalised = next((f for f in self.formats if f.capitalised_names), None)
        self._magic = [(re.compile(m, re.DOTALL), f) for f in self.formats for m in f.magic]

    def kind_of(self, path: Path, head: bytes = b"") -> tuple[Format | None, str | None]:
        """(format, language) from the name and the first bytes; no format when no reader takes the file."""
        fmt, language = self._from_name(path)
        bare = fmt is not None and not path.suffix and path.name not in self._by_name
        # a README-like name on a PDF or an image saved without extension; text may begin "BM": not a bitmap
        if fmt is None or fmt.magic or (bare and not head.startswith(b"BM")):
            return self.sniff(head) or fmt, language
        return fmt, language

    def kind_of_inner(self, path: Path, head: bytes) -> tuple[Format | None, str | None]:
        """As kind_of, for the file inside a compressed single file: text when nothing else claims it and its
        first bytes read as text (`changelog.gz`, `changelog.Debian.gz`)."""
        fmt, language = self.kind_of(path, head)
        if fmt is None and head and text.read_text(head)[1] is None:
            return self._capitalised, None
        return fmt, language

    def _from_name(self, path: Path) -> tuple[Format | None, str | None]:
        if path.name in self._by_name:
            return self._by_name[path.name]
        suffix = path.suffix.lower()
        if suffix in self._by_suffix:
            return self._by_suffix[suffix]
        if not suffix and path.name.isupper():
            return self._capitalised, None
        return None, None

    def sniff(self, head: bytes) -> Format | None:
        """The format whose magic appears first in the first kilobyte: a file that starts like an image is one,
        even if "%PDF-" appears later (where PDF readers accept the header)."""
        found = [(m.start(), i, f) for i, (pattern, f) in enumerate(self._magic) if (m := pattern.search(head[:1024]))]
        return min(found)[2] if found else None


def _languages(table: str) -> dict[str, str]:
    """'python .py .pyi' lines -> {'.py': 'python', '.pyi': 'python'}."""
    return {ext: line.split()[0] for line in table.strip().splitlines() for ext in line.split()[1:]}


def _none(extensions: str) -> dict[str, None]:
    return dict.fromkeys(extensions.split())


CODE = _languages(
    """
    python .py .pyi .pyx
    notebook .ipynb
    c .c .h
    cpp .cc .cpp .cxx .hpp .hh .hxx
    cuda .cu .cuh
    rust .rs
    go .go
    java .java
    kotlin .kt .kts
    scala .scala
    javascript .js .mjs .cjs .jsx
    typescript .ts .tsx .mts .cts
    shell .sh .bash .zsh .fish
    powershell .ps1
    sql .sql
    ruby .rb
    php .php
    swift .swift
    objective-c .m .mm
    csharp .cs
    fsharp .fs
    vbnet .vb
    lua .lua
    r .r
    julia .jl
    haskell .hs
    ocaml .ml .mli
    elixir .ex .exs
    erlang .erl
    clojure .clj
    dart .dart
    zig .zig
    nim .nim
    perl .pl .pm
    vim .vim
    toml .toml
    yaml .yaml .yml
    json .json
    ini .ini .cfg
    css .css .scss .less
    protobuf .proto
    fortran .f90 .f
    latex .tex
    cmake .cmake
    make .mk
    groovy .gradle .groovy
    vue .vue
    svelte .svelte
    graphql .graphql
    terraform .tf
    nix .nix
    """
)
CODE_NAMES = {
    "Makefile": "make",
    "GNUmakefile": "make",
    "Dockerfile": "docker",
    "CMakeLists.txt": "cmake",
    "Jenkinsfile": "groovy",
    "Vagrantfile": "ruby",
    "Rakefile": "ruby",
    "Gemfile": "ruby",
}
TEXT = _none(".txt .md .markdown .rst .text .org .adoc .csv .tsv .log")
IMAGE = _none(".png .jpg .jpeg .tif .tiff .bmp .webp .gif .heic .heif")
IMAGE_MAGIC = (
    rb"\A\x89PNG\r\n\x1a\n",
    rb"\A\xff\xd8\xff",  # JPEG
    rb"\AGIF8[79]a",
    rb"\AII\*\x00",  # TIFF, little-endian
    rb"\AMM\x00\*",  # TIFF, big-endian
    rb"\ABM",  # BMP
    rb"\ARIFF....WEBP",
)
PDF_MAGIC = (rb"%PDF-",)  # anywhere in the first kilobyte, as PDF readers accept it
ARCHIVE = _none(".zip .tar .gz .bz2 .xz .tgz .tbz .tbz2 .txz")  # .tar.gz and friends end in .gz
ARCHIVE_MAGIC = (
    rb"\A\x1f\x8b",  # gzip
    rb"\ABZh[1-9]1AY&SY",  # bzip2
    rb"\A\xfd7zXZ\x00",  # xz
    rb"\A.{257}ustar",  # POSIX tar (zip-based formats, .docx and .jar, are zips too: a zip is known by name only)
)


def _office(kind: str, extensions: str, module: str, needs: str, attachments: bool = False) -> Format:
    read = Partition(module, needs, attachments)
    return Format(kind, read, version=2, extensions=_none(extensions), heavy=True, settings=office.settings_used)


REGISTRY = Registry(
    [
        Format("code", code.read, version=3, extensions=CODE, names=CODE_NAMES),
        Format("text", text.read, version=2, extensions=TEXT, capitalised_names=True),
        Format(
            "pdf",
            pdf.read,
            version=4,  # 4: where each page starts is kept (page_starts)
            extensions=_none(".pdf"),
            magic=PDF_MAGIC,
            heavy=True,
            settings=pdf.settings_used,
        ),
        Format(
            "image",
            image.read,
            version=5,
            extensions=IMAGE,
            magic=IMAGE_MAGIC,
            heavy=True,
            settings=image.settings_used,
        ),
        _office("html", ".html .htm .xhtml", "html", "pip install beautifulsoup4 lxml"),
        _office("html", ".xml", "xml", "pip install lxml"),
        _office("office", ".docx", "docx", "pip install python-docx"),
        _office("office", ".doc", "doc", "LibreOffice (soffice) and python-docx"),
        _office("office", ".pptx", "pptx", "pip install python-pptx"),
        _office("office", ".ppt", "ppt", "LibreOffice (soffice) and python-pptx"),
        Format("office", office.spreadsheet, version=3, extensions=_none(".xlsx .xlsm")),
        _office("office", ".xls", "xlsx", "pip install openpyxl xlrd pandas"),
        _office("office", ".odt", "odt", "pip install pypandoc-binary python-docx"),  # pandoc inside the wheel
        _office("office", ".rtf", "rtf", "pip install pypandoc-binary"),
        _office("office", ".epub", "epub", "pip install pypandoc-binary"),
        _office("email", ".eml", "email", "unstructured's base install", attachments=True),
        _office("email", ".msg", "msg", "pip install python-oxmsg", attachments=True),
        Format(
            "archive",
            archive.Unpack(),
            version=1,
            extensions=ARCHIVE,
            magic=ARCHIVE_MAGIC,
            settings=archive.settings_used,
            container=True,
        ),
    ]
)
