"""Zero-shot imaging modality: which of six modalities is this image, from text prompts alone?

Ground truth comes from the captions (``modality_from_caption``); the model never
sees a modality label in training. For each class the model embeds one or more
prompts ("ct scan", "a t2 weighted mri", ...) and an image is given the class
whose prompts it matches best. Three ways are compared:

* **single prompt** per class: ``p(c | x) = softmax_c(s · cos(x, t_c))`` with the
  learned scale ``s``;
* **ensemble, mean of probabilities** (the report's way): one softmax over the
  prompts of *all* classes, then each class gets the mean probability of its own
  prompts, renormalised over the classes. Equivalently, a class's logit is the
  log-mean-exp of its prompts' logits;
* **ensemble, mean of embeddings** (OpenCLIP's way): each class's prompt
  embeddings are normalised, averaged and normalised again into one class
  vector; then as with a single prompt.

Prompts come from a JSON file (default ``tinyclip/prompts/modality.json``)
``{"set name": {"class": ["prompt", ...], ...}, ...}``; a set with one prompt per
class is scored once, a set with more is scored both ensemble ways (``--prompts FILE``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..backend import manual_seed
from ..data.synthetic import MODALITIES  # the six the synthetic captions name; this task scores them
from ..io import read_json
from . import TaskSkipped, figures, softmax
from .common import option
from .metrics import accuracy, balanced_accuracy, confusion_matrix, per_class_scores

OTHER = "other"  # a modality outside the six (PET, SPECT, scintigraphy, OCT, ophthalmic angiography)
DEFAULT_PROMPTS = Path(__file__).resolve().parent.parent / "prompts" / "modality.json"

# ---------------------------------------------------------------------------
# modality names in a caption
# ---------------------------------------------------------------------------
#
# Captions are matched raw. Abbreviations are case-sensitive (MR, US, DSA: "us"
# and "Mr" are ordinary words), except "ct", which is no word and does occur in
# lower case; spelled-out words are matched in any case via (?i:...). Every
# pattern sits between word boundaries, so "angiography" does not fire inside
# "cholangiography" or "lymphangiography".
#
# Decisions for compound names (matched first; their text is then blanked so
# the parts do not count again):
# * CT angiography / CTA / CT venography / angio-CT → ct; MR angiography / MRA /
#   MRCP / MR urography / MR mammography → mri. The acquisition is a CT or MR
#   scan and the image looks like one; "angiography" means catheter angiography.
# * CT fluoroscopy and C-arm CT → ct; X-ray fluoroscopy → fluoroscopy.
# * Fluorescein / indocyanine green / OCT angiography (ophthalmology), PET,
#   SPECT, scintigraphy, optical coherence tomography → "other": a modality
#   outside the six, so PET/CT counts as two modalities and is dropped.
# * Mammography, orthopantomograms and cephalograms are X-ray radiographs → xray.
# * Barium studies, cholangiograms, ERCP, cystograms, C-arm images → fluoroscopy;
#   "barium X-ray" names both and is dropped (no precedence rules).
# * "MR" alone means mitral regurgitation in echocardiography captions, so it
#   counts as MRI only when the caption does not mention "mitral"/"regurgitation".

_ANGIO = r"(?i:angiogra\w*|arteriogra\w*|venogra\w*|aortogra\w*|angio)\b"
_COMPOUND_RULES = [
    ("ct", r"\b(?:MD|HR|CB|CE)?(?i:CT)[- ]?(?:(?i:pulmonary|coronary|cerebral|abdominal|aortic|renal|mesenteric)[- ])?"
           + _ANGIO),
    ("ct", r"\b(?i:computed|computeri[sz]ed)[- ](?i:tomograph\w*)[- ](?:(?i:pulmonary|coronary)[- ])?" + _ANGIO),
    ("ct", r"\bCT(?:A|PA)s?\b|\bCCTA\b|\b(?i:angio)[- ]?CT\b"),  # not CTV: a radiotherapy target volume
    ("ct", r"\b(?i:CT)[- ](?i:fluoroscop\w*|myelogra\w*|cholangiogra\w*|urogra\w*|colonogra\w*|enterogra\w*|"
           r"arthrogra\w*|cystogra\w*)"),
    ("ct", r"\b(?i:c-arm(?:ed)?)[- ](?:CT|(?i:computed tomograph\w*))"),
    ("mri", r"\bMRI?[- ]?(?:" + _ANGIO + r"|(?i:cholangio\w*|urogra\w*|enterogra\w*|arthrogra\w*|myelogra\w*|"
            r"mammogra\w*|elastogra\w*)\b)"),
    ("mri", r"\b(?i:magnetic resonance)[- ](?:" + _ANGIO + r"|(?i:cholangio\w*|urogra\w*|enterogra\w*|"
            r"arthrogra\w*|myelogra\w*|mammogra\w*|elastogra\w*)\b)"),
    ("mri", r"\bMR(?:A|V|CP)s?\b"),
    ("fluoroscopy", r"\b(?i:x[- ]?ray)[- ](?i:fluoroscop\w*)"),
    (OTHER, r"\b(?:(?i:fluorescein|indocyanine[- ]green)|ICG|OCT|OCTA)[- ]?" + _ANGIO),
]
_SIMPLE_RULES = [
    ("ct", r"\b(?:MD|HR|CB|CE|NC|MS)?CTs?\b|\b(?i:ct)\b|\bCAT[- ]scan|"
           r"\b(?i:computed|computeri[sz]ed)[- ](?:(?i:axial)[- ])?(?i:tomograph\w*)|"
           r"\b(?i:cone[- ]beam)\b|\b(?i:tomodensitometr\w*)"),
    ("mri", r"\b(?i:f?MRIs?)\b|\b(?i:magnetic[- ]resonance)\b|\b(?i:T[12](?:\*|[- ]?(?:weighted|W|WI)\b))|"
            r"\bT[12][- ](?i:axial|coronal|sagittal|sagital|image|images|sequence|MR|MRI)\b|\bFLAIR\b|\bDWI\b|"
            r"\bSTIR\b|\bSWI\b|\b(?i:diffusion|susceptibility|proton[- ]density)[- ](?i:weighted)\b|"
            r"\b(?i:gadolinium)\b"),
    ("ultrasound", r"\b(?i:ultrasound\w*|ultrasonogra\w*|sonogra\w*|echocardiogra\w*|echogra\w*|"
                   r"echo[- ]?endoscop\w*|endosonogra\w*|doppler|duplex|(?:hyper|hypo|an|iso)echoic|"
                   r"echogenic\w*)\b|\b(?:E|IV|TR|CE|TV)?USG?\b|\bT[TE]E\b|\bTOE\b"),
    ("fluoroscopy", r"\b(?i:(?:video)?fluoroscop\w*|barium|(?:o?e)?sophagogra\w*|cholangiogra\w*|"
                    r"cystogra\w*|cystourethrogra\w*|urethrogra\w*|hysterosalpingogra\w*|sialogra\w*|"
                    r"fistulogra\w*|defecogra\w*|pyelogra\w*|c-arm\w*|swallow study|contrast enema)\b|\bERCP\b"),
    ("xray", r"\b(?i:x[- ]?rays?|radiogra(?:ph|phs|phy|phic|phically)|plain films?|chest films?|"
             r"roentgenogra\w*|orthopantomogra\w*|panorex|cephalogra\w*|mammogra\w*)\b|\bCXR\b|\bOPG\b"),
    ("angiography", r"\b(?i:angiogra\w*|arteriogra\w*|aortogra\w*|venogra\w*|phlebogra\w*|coronarogra\w*|"
                    r"ventriculogra\w*|digital subtraction)\b|\bDSA\b"),
    (OTHER, r"\bPET\b|\bSPECT\b|\b(?i:scintigra\w*|bone scan|radionuclide|nuclear medicine|"
            r"optical coherence tomography)\b|\bOCT\b"),
]
_COMPOUND = [(name, re.compile(p)) for name, p in _COMPOUND_RULES]
_SIMPLE = [(name, re.compile(p)) for name, p in _SIMPLE_RULES]
_MR_ALONE = re.compile(r"\bMR\b")
_MITRAL = re.compile(r"(?i:mitral|regurgita)")


def modalities_in_caption(caption: str) -> set:
    """Every modality a caption names: a subset of ``MODALITIES`` plus ``"other"``."""
    text = str(caption)
    found = set()
    for name, pattern in _COMPOUND:
        if pattern.search(text):
            found.add(name)
            text = pattern.sub(lambda m: " " * len(m.group()), text)
    for name, pattern in _SIMPLE:
        if pattern.search(text):
            found.add(name)
    if _MR_ALONE.search(text) and not _MITRAL.search(text):
        found.add("mri")
    return found


def _single(found: set) -> str | None:
    return next(iter(found)) if len(found) == 1 and OTHER not in found else None


def modality_from_caption(caption: str) -> str | None:
    """The one modality of ``MODALITIES`` a caption names, or None (none named, or several)."""
    return _single(modalities_in_caption(caption))


def label_captions(captions) -> tuple[list, dict]:
    """``modality_from_caption`` of each caption, and how many were ``kept``, named ``none`` of the
    six (possibly another modality only, such as PET) or ``several`` modalities (PET/CT counts as two)."""
    labels, counts = [], {"kept": 0, "none": 0, "several": 0}
    for caption in captions:
        found = modalities_in_caption(caption)
        label = _single(found)
        labels.append(label)
        counts["kept" if label else "none" if len(found) <= 1 else "several"] += 1
    return labels, counts


# ---------------------------------------------------------------------------
# prompts and zero-shot classifiers
# ---------------------------------------------------------------------------

def load_prompts(path=None) -> dict:
    """``{set name: {class: [prompts]}}`` from a JSON file, checked; all sets must share their classes."""
    path = Path(path) if path else DEFAULT_PROMPTS
    sets = read_json(path, "prompt file")
    if not isinstance(sets, dict) or not sets:
        raise ValueError(f"prompt file {path}: expected {{\"set\": {{\"class\": [\"prompt\", ...]}}}}")
    classes = None
    for name, prompts in sets.items():
        if not isinstance(prompts, dict) or not prompts or not all(
                isinstance(v, list) and v and all(isinstance(p, str) and p.strip() for p in v)
                for v in prompts.values()):
            raise ValueError(f"prompt file {path}: set {name!r} must map each class to a non-empty list of prompts")
        unknown = sorted(set(prompts) - set(MODALITIES))
        if unknown:
            raise ValueError(f"prompt file {path}: unknown classes {unknown} in set {name!r} "
                             f"(known: {', '.join(MODALITIES)})")
        if classes is None:
            classes = list(prompts)
        elif set(prompts) != set(classes):
            raise ValueError(f"prompt file {path}: set {name!r} has classes {sorted(prompts)}, "
                             f"but the first set has {sorted(classes)}")
    if len(classes) < 2:
        raise ValueError(f"prompt file {path}: need at least two classes, got {classes}")
    # Keep one class order for all sets: the order of MODALITIES.
    return {name: {c: list(prompts[c]) for c in MODALITIES if c in prompts} for name, prompts in sets.items()}


def embed_prompts(model, prompts: dict) -> list:
    """Per class, the unit embeddings ``(P_c, D)`` of its prompts (one forward pass for all)."""
    flat = [p for ps in prompts.values() for p in ps]
    emb = model.embed_texts(flat).astype(np.float64)
    cuts = np.cumsum([len(ps) for ps in prompts.values()])[:-1]
    return np.split(emb, cuts)


def probs_mean_probability(image_emb: np.ndarray, class_prompts: list, scale: float) -> np.ndarray:
    """Ensemble by probabilities: softmax over all prompts, mean within each class, renormalised. ``(N, C)``"""
    logits = scale * image_emb @ np.concatenate(class_prompts).T          # (N, P_total)
    p = softmax(logits, axis=1)
    cuts = np.cumsum([len(e) for e in class_prompts])[:-1]
    per_class = np.stack([part.mean(axis=1) for part in np.split(p, cuts, axis=1)], axis=1)
    return per_class / per_class.sum(axis=1, keepdims=True)


def class_vectors(class_prompts: list) -> np.ndarray:
    """OpenCLIP's classifier: normalise each prompt embedding, average, normalise again. ``(C, D)``"""
    vectors = []
    for emb in class_prompts:
        emb = emb / np.linalg.norm(emb, axis=1, keepdims=True)
        mean = emb.mean(axis=0)
        vectors.append(mean / max(np.linalg.norm(mean), 1e-12))
    return np.stack(vectors)


def probs_mean_embedding(image_emb: np.ndarray, class_prompts: list, scale: float) -> np.ndarray:
    """Ensemble by embeddings (and the single-prompt case): ``softmax(s · x · w_c)``. ``(N, C)``"""
    return softmax(scale * image_emb @ class_vectors(class_prompts).T, axis=1)


def classify(image_emb: np.ndarray, class_prompts: list, scale: float, method: str) -> np.ndarray:
    """Class probabilities ``(N, C)`` with ``method`` ``"mean_prob"`` or ``"mean_emb"``."""
    if method == "mean_prob":
        return probs_mean_probability(image_emb, class_prompts, scale)
    if method == "mean_emb":
        return probs_mean_embedding(image_emb, class_prompts, scale)
    raise ValueError(f"unknown ensemble method {method!r}")


# ---------------------------------------------------------------------------
# the task
# ---------------------------------------------------------------------------

def methods_for(prompt_sets: dict) -> list:
    """``(method name, set name, ensemble way)`` to score: one per single-prompt set, two per ensemble set."""
    out = []
    for name, prompts in prompt_sets.items():
        if all(len(p) == 1 for p in prompts.values()):
            out.append((name, name, "mean_emb"))  # with one prompt per class both ways agree
        else:
            out += [(f"{name}_mean_prob", name, "mean_prob"), (f"{name}_mean_emb", name, "mean_emb")]
    return out


def _probe(ctx, classes, image_emb, labels) -> dict:
    """A logistic-regression probe on the frozen image embeddings, fit to the training part's parsed labels.

    The ceiling of zero-shot: if the probe is far better, the image side knows the modality and the
    text side (the prompts) holds zero-shot back; if not, the image embeddings lack it.
    """
    from .heads import fit, linear_head, predict, standardize  # heads import tinyclip.nn: loaded when needed

    parsed, _ = label_captions([str(c) for c in ctx.train_frame["caption"]])
    rows = np.array([i for i, p in enumerate(parsed) if p in classes], dtype=np.int64)
    train_labels = np.array([classes.index(parsed[i]) for i in rows], dtype=np.int64)
    if len(np.unique(train_labels)) < 2:
        return {"probe_skipped": "fewer than two modalities named in the training part"}
    train_emb = ctx.model.embed_images(ctx.train_images[rows], ctx.batch_size).astype(np.float64)
    train_x, eval_x = standardize(train_emb, train_emb, image_emb)
    manual_seed(ctx.seed)
    head = linear_head(train_x.shape[1], len(classes))
    fit(head, train_x, train_labels, "multiclass", seed=ctx.seed, weight_decay=1e-3, balance=True)
    predicted = predict(head, eval_x).argmax(axis=1)
    return {"accuracy_probe": accuracy(labels, predicted), "balanced_accuracy_probe":
            balanced_accuracy(labels, predicted), "probe_train_n": int(len(rows))}


@dataclass(frozen=True)
class Options:
    """The zero-shot modality task's options."""

    prompts: Path | None = option(None, Path, "JSON prompt sets {set: {class: [prompts]}}", "FILE",
                                  shown="tinyclip/prompts/modality.json")


def run(ctx, options: Options = Options()) -> dict:
    prompts_file = options.prompts
    prompt_sets = load_prompts(prompts_file)
    classes = list(next(iter(prompt_sets.values())))

    captions = [str(c) for c in ctx.frame["caption"]]
    parsed, counts = label_captions(captions)
    keep = np.array([p is not None and p in classes for p in parsed], dtype=bool)
    counts["not_in_prompts"] = int(sum(p is not None and p not in classes for p in parsed))
    counts["kept"] -= counts["not_in_prompts"]
    if not keep.any():
        raise TaskSkipped(f"no caption among {len(captions)} names exactly one of {', '.join(classes)} "
                          f"({counts['none']} name none, {counts['several']} several)")
    labels = np.array([classes.index(p) for p, k in zip(parsed, keep) if k])
    index = np.flatnonzero(keep)
    image_emb = ctx.image_embeddings()[index].astype(np.float64)
    scale = ctx.model.temperature()

    class_counts = np.bincount(labels, minlength=len(classes))
    majority = int(np.argmax(class_counts))
    result = {
        "n": int(len(labels)),
        "n_captions": len(captions),
        "n_none": counts["none"],
        "n_several": counts["several"],
        "counts": counts,
        "classes": classes,
        "class_counts": {c: int(k) for c, k in zip(classes, class_counts)},
        "majority_class": classes[majority],
        "majority_baseline": float(class_counts[majority] / len(labels)),
        "prompts_file": str(prompts_file or DEFAULT_PROMPTS),
    }
    embedded = {name: embed_prompts(ctx.model, prompts) for name, prompts in prompt_sets.items()}
    matrices, per_class, all_probs = {}, {}, {}
    for method, set_name, way in methods_for(prompt_sets):
        probs = classify(image_emb, embedded[set_name], scale, way)
        predicted = probs.argmax(axis=1)
        result[f"accuracy_{method}"] = accuracy(labels, predicted)
        result[f"balanced_accuracy_{method}"] = balanced_accuracy(labels, predicted)
        matrices[method] = confusion_matrix(labels, predicted, len(classes))
        all_probs[method] = probs
        scores = per_class_scores(labels, predicted, range(len(classes)))
        per_class[method] = {name: {k: scores[c][k] for k in ("precision", "recall", "support")}  # no F1 here
                             for c, name in enumerate(classes)}
    result["per_class"] = per_class
    result["confusion"] = {m: matrix.tolist() for m, matrix in matrices.items()}
    result.update(_probe(ctx, classes, image_emb, labels))

    figures.confusion_matrices(ctx.out / "modality_confusion.png", matrices, classes,
                               title=f"zero-shot modality on {len(labels)} images "
                                     f"(majority baseline {result['majority_baseline']:.3f})")
    # A few examples of each class, scored by the last method (an ensemble with the default prompts).
    last = list(all_probs)[-1]
    show = np.concatenate([np.flatnonzero(labels == c)[:2] for c in range(len(classes))])[:12]
    figures.image_grid(ctx.out / "modality_examples.png", ctx.images[index[show]], labels[show], all_probs[last][show],
                       classes, title=f"zero-shot modality ({last})")
    result["figures"] = ["modality_confusion.png", "modality_examples.png"]
    return result
