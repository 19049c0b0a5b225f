"""A corpus of made-up facts spread over documents of several kinds, among filler, for the retrieval tests."""

from __future__ import annotations

import random
from pathlib import Path

from tests.ingest_fixtures import docx_bytes, image_bytes, text_pdf, write, zip_bytes

WORDS = ["wren", "oak", "flint", "moss", "quill", "ember", "brook", "slate", "thorn", "cedar", "plume", "ridge"]
ATTRIBUTES = ["code", "owner", "budget", "colour"]
FILLER = [
    "The weather was mild and the committee met in the large hall.",
    "Several drafts were circulated before the final version was agreed.",
    "Minutes of the meeting are kept in the shared folder for reference.",
    "The building opens at eight and closes at six on weekdays.",
    "A new printer was ordered for the second floor office.",
    "Everyone is reminded to lock the doors when leaving late.",
]


def facts(seed: int = 0, n: int = 12) -> list[tuple[str, str, str]]:
    """n made-up (entity, attribute, value) facts, entities "vault 17" or "project Tovaru"."""
    rng = random.Random(seed)
    out, seen = [], set()
    while len(out) < n:
        noun = rng.choice(["vault", "project", "station"])
        entity = f"{noun} {rng.randint(2, 98)}" if noun != "project" else f"project {rng.choice(WORDS).capitalize()}a"
        attribute = rng.choice(ATTRIBUTES)
        if (entity, attribute) in seen:
            continue
        seen.add((entity, attribute))
        out.append((entity, attribute, f"{rng.choice(WORDS)}{rng.randint(10, 99)}"))
    return out


def sentence(entity: str, attribute: str, value: str) -> str:
    return f"The {attribute} of {entity} is {value}."


def question(entity: str, attribute: str) -> str:
    return f"What is the {attribute} of {entity}?"


def filler(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(FILLER) for _ in range(n))


def facts_corpus(root: Path, known: list[tuple[str, str, str]], ocr: bool = True) -> dict[str, tuple[str, int | None]]:
    """Write the documents; returns where each fact is: question -> (path as the index names it, page or None).

    A three-page PDF with facts on its later pages, a .docx, Markdown, a scanned image (OCR) and a Markdown member
    of a .zip hold the facts, each among filler; three filler documents hold none."""
    rng = random.Random(1)
    where: dict[str, tuple[str, int | None]] = {}
    name = root.name
    k = iter(known)

    def take(n: int) -> list[tuple[str, str, str]]:
        return [next(k) for _ in range(n)]

    pdf_facts = take(3)  # page 2 holds one, page 3 two; a line a sentence, as a page's text layer has them
    pages = [[filler(rng, 1), filler(rng, 1)], [filler(rng, 1), sentence(*pdf_facts[0]), filler(rng, 1)]]
    pages.append([sentence(*pdf_facts[1]), filler(rng, 1), sentence(*pdf_facts[2])])
    write(root / "reports" / "annual.pdf", text_pdf(pages))
    where |= {question(*f[:2]): (f"{name}/reports/annual.pdf", p) for f, p in zip(pdf_facts, (2, 3, 3), strict=True)}
    for kind, n in (("docx", 2), ("md", 3), ("zip", 2)):
        chosen = take(n)
        paragraphs = [f"{filler(rng, 1)} {sentence(*f)} {filler(rng, 1)}" for f in chosen]
        if kind == "docx":
            write(root / "office" / "minutes.docx", docx_bytes(paragraphs))
            path = f"{name}/office/minutes.docx"
        elif kind == "md":
            write(root / "notes" / "facts.md", "# Notes\n\n" + "\n\n".join(paragraphs) + "\n")
            path = f"{name}/notes/facts.md"
        else:
            member = ("# Archive\n\n" + "\n\n".join(paragraphs) + "\n").encode()
            write(root / "old" / "backup.zip", zip_bytes({"kept/register.md": member}))
            path = f"{name}/old/backup.zip!/kept/register.md"
        where |= {question(*f[:2]): (path, None) for f in chosen}
    if ocr:  # a scanned sign: short lines, as a photo of a notice holds
        chosen = take(1)
        write(root / "scans" / "notice.png", image_bytes([sentence(*chosen[0])], "PNG"))
        where |= {question(*f[:2]): (f"{name}/scans/notice.png", None) for f in chosen}
    for i in range(3):
        write(root / "misc" / f"filler{i}.txt", "\n\n".join(filler(rng, 3) for _ in range(4)) + "\n")
    return where
