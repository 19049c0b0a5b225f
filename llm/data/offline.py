"""Keep unstructured off the network: telemetry off, model hubs offline, no spaCy model download.

unstructured classifies elements with spaCy and, on first use, downloads `en_core_web_sm` from the
internet (`unstructured/nlp/tokenize.py::_load_spacy_model`). We replace that loader: the installed
model when there is one, else a blank English pipeline with a sentencizer (element categories get
coarser; the extracted text is the same).
"""

from __future__ import annotations

import importlib.util
import logging
import os

log = logging.getLogger(__name__)

SPACY_MODEL = "en_core_web_sm"
_SPACY_EXCLUDE = ["ner", "lemmatizer", "attribute_ruler"]  # what unstructured itself excludes


def set_environment() -> None:
    """Call before importing unstructured (its telemetry runs at import time)."""
    os.environ["DO_NOT_TRACK"] = "1"
    os.environ["SCARF_NO_ANALYTICS"] = "true"
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # hub look-ups fail at once instead of retrying
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("UNSTRUCTURED_DISABLE_NOTICE", "1")
    os.environ.setdefault("OMP_THREAD_LIMIT", "1")  # tesseract: one thread per worker process


def spacy_model_installed() -> bool:
    return importlib.util.find_spec(SPACY_MODEL) is not None


_warned = False


def warn_if_no_spacy_model() -> None:
    """The one warning, from the parent process, once."""
    global _warned
    if not _warned and not spacy_model_installed():
        _warned = True
        log.warning(
            "spaCy model %s is not installed: unstructured uses a blank English pipeline instead "
            "(coarser element types, same text). Install it with `python -m spacy download %s`.",
            SPACY_MODEL,
            SPACY_MODEL,
        )


def _load_spacy_offline():
    import spacy

    if spacy_model_installed():
        return spacy.load(SPACY_MODEL, exclude=_SPACY_EXCLUDE)
    nlp = spacy.blank("en")
    nlp.add_pipe("sentencizer")
    return nlp


def patch_unstructured() -> None:
    """Install the offline spaCy loader where unstructured looks for it. Idempotent."""
    set_environment()
    from unstructured.nlp import tokenize

    if tokenize._load_spacy_model is not _load_spacy_offline:
        tokenize._load_spacy_model = _load_spacy_offline
        tokenize._get_nlp.cache_clear()
