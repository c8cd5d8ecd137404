"""Real English sentences, offline: the calibration and evaluation text of benchmarks/accuracy_real.py.

Python's standard library ships the text of its language reference in `pydoc_data.topics`
(the pages `help("if")` prints): real technical prose, present wherever Python is, with
no download. `sentences()` cuts it into clean sentences and splits them into a
calibration set and a disjoint evaluation set:

1. Paragraphs (blank-line separated) of each topic, topics in sorted order. A paragraph
   is dropped when it is code or markup rather than prose: indented 4+ spaces (code and
   grammar blocks), a heading underline (******, ====), a table (| or +---), or an
   interactive session (>>>).
2. A paragraph's lines are joined; list markers ("1.", "*"), footnote marks ("[1]") and
   emphasis asterisks are removed, and the double quotes around single literals
   ("if" -> if) are dropped, since the plain-text docs quote every inline code literal.
3. Sentences: split after . ! or ? when whitespace and a capital letter follow.
4. A sentence is kept when it starts with a capital letter, ends with . ! or ?, has
   MIN_WORDS to MAX_WORDS words, at least 90% of its non-space characters are letters,
   and it holds none of the characters of code (= < > [ ] { } _ \\ | ` @ # $ % ^ ~ * ")
   nor a call such as f(x). Duplicates go.
5. Order: by the SHA-256 of the sentence text, an order that depends on no dict order and
   no Python version; the first CALIBRATION sentences calibrate, the next EVALUATION
   evaluate. The docs differ a little between Python versions; sorting by hash keeps
   every sentence both versions share in the same relative order, so the selection
   changes only where the text did. `SentenceSplit.source` records the version used and
   `digest` identifies the exact selection.
"""
from __future__ import annotations

import hashlib
import re
import sys
from dataclasses import dataclass

MIN_WORDS = 6
MAX_WORDS = 40
CALIBRATION = 200
EVALUATION = 500
MIN_LETTER_FRACTION = 0.9

_CODE_CHARS = frozenset('=<>[]{}_\\|`@#$%^~*"')
_UNDERLINE = re.compile(r"^\s*([*=\-^~#+])\1{2,}\s*$")
_LIST_MARKER = re.compile(r"^(?:\d+\.|[*\-+])\s+")
_FOOTNOTE = re.compile(r"\[\d+\]")
_EMPHASIS = re.compile(r"\*{1,2}([^*\s][^*]*?)\*{1,2}")
_QUOTED_LITERAL = re.compile(r'"([^"\s]+)"')
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
_CALL = re.compile(r"\w\(")


@dataclass(frozen=True, slots=True)
class SentenceSplit:
    """Disjoint calibration and evaluation sentences, and where they came from."""
    calibration: tuple[str, ...]
    evaluation: tuple[str, ...]
    source: str      # e.g. "pydoc_data.topics of Python 3.11.7"
    candidates: int  # clean distinct sentences the docs gave, before the cut
    digest: str      # SHA-256 of the selection (calibration then evaluation, one a line)

    def to_json(self) -> dict[str, object]:
        return {"source": self.source, "candidates": self.candidates, "calibration": len(self.calibration),
                "evaluation": len(self.evaluation), "digest": self.digest}


def _prose_paragraphs(text: str) -> list[str]:
    """Step 1 and 2: the prose paragraphs of one topic, each as one line of text."""
    out = []
    for para in re.split(r"\n\s*\n", text):
        lines = [ln for ln in para.splitlines() if ln.strip()]
        if not lines:
            continue
        indent = len(lines[0]) - len(lines[0].lstrip())
        if indent >= 4 or any(_UNDERLINE.match(ln) or ln.lstrip().startswith(("|", "+-", "+=", ">>>", "..."))
                              for ln in lines):
            continue
        joined = " ".join(ln.strip() for ln in lines)
        joined = _LIST_MARKER.sub("", joined)
        joined = _FOOTNOTE.sub("", joined)
        joined = _EMPHASIS.sub(r"\1", joined)
        joined = _QUOTED_LITERAL.sub(r"\1", joined)
        out.append(re.sub(r"\s+", " ", joined).strip())
    return out


def is_clean(sentence: str) -> bool:
    """Step 4: a prose sentence of MIN_WORDS..MAX_WORDS words, mostly letters, no code."""
    if not sentence or not sentence[0].isupper() or sentence[-1] not in ".!?":
        return False
    if not MIN_WORDS <= len(sentence.split()) <= MAX_WORDS:
        return False
    if any(c in _CODE_CHARS for c in sentence) or _CALL.search(sentence) or "..." in sentence:
        return False
    if sentence.count("(") != sentence.count(")"):
        return False
    chars = [c for c in sentence if not c.isspace()]
    return sum(c.isalpha() for c in chars) >= MIN_LETTER_FRACTION * len(chars)


def clean_sentences(topics: dict[str, str]) -> list[str]:
    """Steps 1-4 over every topic: distinct clean sentences (in no particular order)."""
    found: set[str] = set()
    for name in sorted(topics):
        for para in _prose_paragraphs(topics[name]):
            found.update(s for s in _SENTENCE_END.split(para) if is_clean(s))
    return list(found)


def _hash(sentence: str) -> str:
    return hashlib.sha256(sentence.encode("utf-8")).hexdigest()


def sentences(calibration: int = CALIBRATION, evaluation: int = EVALUATION) -> SentenceSplit:
    """`calibration` + `evaluation` distinct sentences of the installed Python's docs (step 5)."""
    from pydoc_data.topics import topics

    pool = sorted(clean_sentences(topics), key=_hash)
    wanted = calibration + evaluation
    if len(pool) < wanted:
        raise ValueError(f"pydoc_data.topics of Python {sys.version.split()[0]} gives {len(pool)} clean sentences, "
                         f"fewer than the {wanted} asked for; ask for fewer.")
    chosen = pool[:wanted]
    digest = hashlib.sha256("\n".join(chosen).encode("utf-8")).hexdigest()
    return SentenceSplit(tuple(chosen[:calibration]), tuple(chosen[calibration:]),
                         f"pydoc_data.topics of Python {sys.version.split()[0]}", len(pool), digest)
