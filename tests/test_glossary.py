"""Every term a notebook defines appears in the glossary (book/glossary.md).

The rule (stated in the glossary page's header and in CONTRIBUTING): a notebook *defines* a term by writing
it in **bold** in a markdown cell. A bold phrase is a defined term unless

1. it is a run-in heading or label: it ends with ``.``, ``:``, ``?`` or ``!``, or is a quoted sentence;
2. it holds code, math or only digits and symbols (a backtick, a ``$``, no letter);
3. it is listed in ``EMPHASIS`` below: bold used for emphasis (``**not**``), a label in a list or a table
   (``**Sum**``), a name of the book's toy data, or a phrase that is not a term.

A defined term is found when, compared case-insensitively (en dashes read as hyphens, a final plural "s"
optional), it equals a term of the glossary: a term line of a ``{glossary}`` entry (every line of an entry
is a name of it, so aliases are listed there: "tokenizer" next to "tokeniser") or either column of the
abbreviation table. To fix a failure, add the term (with its Chinese name) or an alias line to the
glossary, or, when the bold is emphasis, un-bold it or add it to ``EMPHASIS``.
"""

from __future__ import annotations

import re
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
BOLD = re.compile(r"\*\*([^*]+?)\*\*")
FENCE = re.compile(r"```.*?```|~~~.*?~~~", re.S)

EMPHASIS = {
    # emphasis inside a sentence
    "above", "accumulate", "adapted from", "added", "additive", "and settles on", "at chance", "average", "before",
    "below", "bend", "both", "both directions", "central", "centre", "connect", "connected", "constant", "count",
    "different", "distinct", "early", "every", "exact", "exactly zero", "exponentially", "first", "flipped",
    "forward", "in frequency", "in time", "input", "interacting", "intermediate", "invariant", "is", "jointly",
    "judge", "late", "layers", "leaks", "learns", "left", "left to right", "linear", "log", "loss", "measures",
    "memory", "method", "multiplicative", "negative", "never seen", "no", "not", "note", "one", "opposite", "or",
    "pair", "pairs", "recomputes", "resolved", "reverse", "same", "single", "strictly", "sum", "three", "ties",
    "true", "truncated", "two", "unseen", "without", "zeros", "nine", "stack", "score", "peaky", "ramps",
    "collapse", "blur", "noisy", "lower-case", "reflection", "transpose", "training", "train", "test",
    "validation", "generation", "feed-forward", "dilated", "bidirectional", "overfit", "regularised",
    "confidence", "confidently wrong", "largest weight", "one head", "one layer", "one head in one layer",
    "one linear map", "one row per query", "multiple heads", "no forget gate", "its own learned projections",
    "its gain is additive", "each modality does on its own", "when pretrained on very large datasets",
    "within 4 standard errors", "without autograd", "start of training", "sum over time", "three seeds",
    "sum over ranks of element-wise products", "measured number", "living example of the notebook template",
    "one configuration object", "one scene per distinct caption", "freeze the state on padded steps",
    "fill in a caption", "reuse clip's convolutional layers from demo 1", "each cjk character is a word",
    "attention mass on the object", "vertical order", "twins", "population", "lossy", "hybrid", "bimodal",
    "weighted sum", "number of filters", "keys", "queries", "values", "concat + mlp", "concat + linear",
    "synthesis", "stacking", "spoken", "click", "normaliser", "pre-tokenised", "byte-level", "bytes per token",
    "frozen encoders", "head on frozen encoders", "intermediate fusion end to end", "alone", "less", "compete",
    "intermediate fusion trained end to end", "mlb is the special case", "colour of the leftmost object",
    "under-optimised", "unique", "shared", "topmost", "untrained", "specific information",
    "effective per-coordinate step sizes", "blend of all the values", "deliberately attenuating the top of the band",
    "full-scale sine reads 0 dbfs", "greedily, longest match first", "in the order they were learned", "one mode",
    "mean absolute off-diagonal correlation", "mean of the token embeddings", "same effective rate",
    "merge the most frequent pair of adjacent units into a new unit", "the leftmost object",
    "test that every parameter changes after one step", "stage 1", "stage 2", "stage 1 + stage 2", "stage 2 only",
    "stage 1 alone already answers questions", "question only", "text only", "true caption",
    "the difference of means", "with warm-up", "without warm-up",
    # shapes and dimensions written in bold
    "(c, h, w)", "(n, c, h, w)", "(channels, time)", "2-d", "4-d",
    # labels in lists and tables
    "a new canvas colour", "article 000", "article 001", "article 004", "at matched effective rates",
    "bilinear", "canonical", "check", "check against the library", "compatibility", "complementary",
    "concatenation", "contrastive pre-training at scale", "cross-attention with one position per modality",
    "diversity", "each at its best rate", "each modality alone carries no information", "encoding",
    "extract features", "flattening", "fuse", "generation across modalities", "greedy", "held-out pairs",
    "language models with eyes", "larger images", "no single modality comes close to the three "
    "together", "no softmax", "noise", "open problems", "preprocess", "product", "redundant",
    "removing the audio costs the most", "removing the image costs little", "solve the task", "synergistic",
    "systems that make the scale possible", "text and audio", "the book makes the same choice", "the image",
    "the loss", "the model", "true = blocked", "true = may attend", "audio missing", "audio–image agreement",
    "caption–image agreement", "image → text", "text → image", "colour → pitch", "shape → waveform",
    "size → loudness", "model size", "amount of data", "new canvas colour", "held-out", "shuffled partner",
    "training mean", "data preparation → model construction → training → evaluation", "red triangle, green "
    "square, blue circle", "circles taken for triangles or the reverse", "colour predicts shape", "colour stream",
    "shape stream", "two-head", "shape of the leftmost object by ear", "leftmost object", "same colour",
    "shannon", "sobel", "feed-forward network, layernorm and residual connections", "cross-attending",
    # the book's toy data, the parts of a scene and the modalities named as such
    "a checkpoint", "a seizure", "labs", "lesion", "marker", "record", "caption", "image", "text", "sound",
    "colour", "shape", "word", "byte", "bytes", "character", "solution", "frames",
}


def entry_term_lines() -> list[str]:
    """The term lines of the ``{glossary}`` block, normalised, in order (an entry has one or more)."""
    lines, inside = [], False
    for line in (ROOT / "book" / "glossary.md").read_text(encoding="utf-8").splitlines():
        if line.startswith("```{glossary}"):
            inside = True
        elif inside and line.startswith("```"):
            inside = False
        elif inside and line.strip() and not line.startswith((" ", ":")):
            lines.append(normalise(line))
    return lines


def glossary_terms() -> set[str]:
    text = (ROOT / "book" / "glossary.md").read_text(encoding="utf-8")
    terms = set(entry_term_lines())
    for row in re.finditer(r"^\|([^|\n]+)\|([^|\n]+)\|$", text, re.M):
        terms.update(normalise(cell) for cell in row.groups() if set(cell.strip()) - set("-"))
    return terms


def normalise(term: str) -> str:
    return " ".join(term.replace("–", "-").lower().split())


def defined_terms(path: Path) -> set[str]:
    """The bold phrases of a notebook's markdown cells that the rule counts as defined terms."""
    found = set()
    for cell in nbformat.read(path, as_version=4).cells:
        if cell.cell_type != "markdown":
            continue
        for match in BOLD.finditer(FENCE.sub("", cell.source)):
            phrase = " ".join(match.group(1).split())            # a bold phrase may wrap a line
            if (not phrase or phrase[-1] in ".:?!" or phrase[0] in "\"“" or "`" in phrase or "$" in phrase
                    or not re.search(r"[^\W\d_]", phrase) or normalise(phrase) in EMPHASIS_NORMALISED):
                continue
            found.add(phrase)
    return found


EMPHASIS_NORMALISED = {normalise(p) for p in EMPHASIS}


def missing_terms() -> dict[str, list[str]]:
    terms = glossary_terms()
    missing: dict[str, list[str]] = {}
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        for phrase in defined_terms(path):
            n = normalise(phrase)
            if n not in terms and n.removesuffix("s") not in terms and n + "s" not in terms:
                missing.setdefault(phrase, []).append(path.name)
    return missing


def test_every_defined_term_is_in_the_glossary():
    missing = missing_terms()
    assert not missing, ("bold terms missing from book/glossary.md (add an entry or an alias line, or un-bold "
                         "emphasis / add it to EMPHASIS in tests/test_glossary.py):\n"
                         + "\n".join(f"  {t!r} ({', '.join(nbs)})" for t, nbs in sorted(missing.items())))


def test_rule_on_examples():
    terms = glossary_terms()
    assert {"attention", "注意力机制", "bpe", "byte-pair encoding"} <= terms
    assert "not" in EMPHASIS_NORMALISED and normalise("Kullback–Leibler divergence") in terms


def test_emphasis_list_has_no_glossary_term():
    """A phrase cannot be both a glossary term and 'emphasis': keep the list honest."""
    assert not EMPHASIS_NORMALISED & glossary_terms()


def test_no_term_names_two_entries():
    """Sphinx warns (and the strict build fails) when one term names two glossary entries."""
    seen, duplicates = set(), set()
    for term in entry_term_lines():
        (duplicates if term in seen else seen).add(term)
    assert not duplicates, f"glossary terms listed twice: {sorted(duplicates)}"
