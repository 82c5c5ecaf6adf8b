"""The caption grammar of the synthetic set: what each sample shows, written the way ROCO captions are.

``describe`` draws a body region and a finding for a modality and writes one
terse caption about them, in one of several templates and phrasings, with the
sample's CUIs in the order the caption mentions them. CUIs come from a fixed
table of made-up codes in the UMLS format (C + 7 digits); they are not real
UMLS identifiers. ``synthetic_render`` draws the matching images.
"""

from __future__ import annotations

import numpy as np

MODALITIES = ("ct", "mri", "ultrasound", "fluoroscopy", "xray", "angiography")

# The ways captions name each modality; each phrase names that modality only.
MODALITY_PHRASES = {
    "ct": ("CT", "ct", "CT scan", "axial CT scan", "computed tomography", "contrast-enhanced CT", "non-contrast CT"),
    "mri": (
        "MRI", "mri", "MR image", "magnetic resonance imaging", "T1-weighted MRI", "T2-weighted MRI", "FLAIR image",
    ),
    "ultrasound": ("ultrasound", "US", "sonography", "ultrasonography", "Doppler ultrasound", "ultrasound image"),
    "fluoroscopy": ("fluoroscopy", "fluoroscopic image", "fluoroscopic spot image", "barium study"),
    "xray": ("X-ray", "x-ray", "radiograph", "plain radiograph", "plain film", "frontal radiograph"),
    "angiography": ("angiography", "angiogram", "DSA", "digital subtraction angiogram", "catheter angiography"),
}
# Phrases that only make sense for one region.
_REGION_MODALITY_PHRASES = {
    ("fluoroscopy", "esophagus"): ("barium swallow",),
    ("fluoroscopy", "colon"): ("barium enema",),
}

REGIONS = {
    "ct": ("chest", "abdomen", "brain"),
    "mri": ("brain", "knee", "spine"),
    "ultrasound": ("abdomen", "liver", "kidney", "neck"),
    "fluoroscopy": ("esophagus", "stomach", "colon"),
    "xray": ("chest", "knee", "hand"),
    "angiography": ("brain", "kidney", "heart", "leg"),
}
# region -> (noun phrase, adjective), as in "CT of the abdomen" and "Abdominal CT".
_REGION_WORDS = {
    "chest": ("the chest", "chest"),
    "abdomen": ("the abdomen", "abdominal"),
    "brain": ("the brain", "brain"),
    "knee": ("the knee", "knee"),
    "spine": ("the lumbar spine", "lumbar spine"),
    "liver": ("the liver", "liver"),
    "kidney": ("the right kidney", "renal"),
    "neck": ("the neck", "neck"),
    "esophagus": ("the esophagus", "esophageal"),
    "stomach": ("the stomach", "gastric"),
    "colon": ("the colon", "colonic"),
    "hand": ("the hand", "hand"),
    "heart": ("the heart", "coronary"),
    "leg": ("the left leg", "lower limb"),
}


def _findings(modality: str, region: str) -> tuple[str, ...]:
    if modality == "xray":
        return ("normal", "consolidation") if region == "chest" else ("normal", "fracture")
    if modality in ("fluoroscopy", "angiography"):
        return ("normal", "stenosis", "diverticulum" if modality == "fluoroscopy" else "aneurysm")
    return ("normal", "mass", "cyst")


# How captions describe each finding; {side} is filled with "right" or "left".
_FINDING_PHRASES = {
    "mass": {
        "ct": ("a hypodense mass", "an enhancing mass", "a heterogeneous mass", "a soft tissue mass"),
        "mri": ("a hyperintense mass", "an enhancing lesion", "a heterogeneous mass", "a well-circumscribed mass"),
        "ultrasound": ("a hypoechoic mass", "a hyperechoic lesion", "a solid mass", "a heterogeneous mass"),
    },
    "cyst": {
        "ct": ("a hypodense cyst", "a simple cyst", "a well-defined cystic lesion"),
        "mri": ("a fluid-filled cyst", "a simple cyst", "a bright cystic lesion"),
        "ultrasound": ("an anechoic cyst", "a simple cyst", "a cyst with posterior enhancement"),
    },
    "consolidation": (
        "{side} lower lobe consolidation",
        "consolidation in the {side} lung",
        "patchy airspace opacity in the {side} lung",
        "{side} lower lobe pneumonia",
    ),
    "fracture": ("a fracture", "a displaced fracture", "a transverse fracture line", "a fracture of the bone"),
    "stenosis": ("a stenosis", "a focal narrowing", "a tight stenosis", "a short-segment stenosis"),
    "diverticulum": ("a diverticulum", "an outpouching", "a small diverticulum"),
    "aneurysm": ("an aneurysm", "a saccular aneurysm", "a small aneurysm"),
}
_NORMAL_TEMPLATES = (
    "Normal {mod} of {region}.",
    "{Mod} of {region} with no abnormality.",
    "{Region} {mod}: normal findings",
    "Unremarkable {mod} of {region}.",
    "{Mod} of {region} showing normal appearance.",
)
_FINDING_TEMPLATES = (
    "{Mod} of {region} showing {finding}.",
    "{Region} {mod}: {finding}",
    "{Mod} demonstrates {finding} in {region}.",
    "{Finding} on {mod} of {region} (arrow).",
    "{Region} {mod} shows {finding} (arrows).",
)

# Made-up concept codes: one per modality, region and finding.
_CUIS = {term: f"C9{i:06d}" for i, term in enumerate((*MODALITIES, *_REGION_WORDS, "normal", *_FINDING_PHRASES))}


def _capitalize(text: str) -> str:
    return text[:1].upper() + text[1:]


def _pick(rng: np.random.Generator, options: tuple):
    """One of ``options`` at random (faster than rng.choice for short tuples)."""
    return options[rng.integers(len(options))]


def describe(rng: np.random.Generator, modality: str) -> dict:
    """Draw region, finding and side for one sample and write its caption and CUIs."""
    region = _pick(rng, REGIONS[modality])
    finding = _pick(rng, _findings(modality, region))
    side = _pick(rng, ("right", "left"))
    mod = _pick(rng, MODALITY_PHRASES[modality] + _REGION_MODALITY_PHRASES.get((modality, region), ()))
    noun, adjective = _REGION_WORDS[region]
    if finding == "normal":
        template, finding_text = _pick(rng, _NORMAL_TEMPLATES), "normal"
    else:
        phrases = _FINDING_PHRASES[finding]
        finding_text = _pick(rng, phrases[modality] if isinstance(phrases, dict) else phrases).format(side=side)
        template = _pick(rng, _FINDING_TEMPLATES)
    caption = template.format(
        mod=mod, Mod=_capitalize(mod), region=noun, Region=_capitalize(adjective),
        finding=finding_text, Finding=_capitalize(finding_text),
    )
    # Like ROCO's cuis.txt, list the concepts in the order the caption mentions them.
    mentions = {modality: mod, region: adjective if "{Region}" in template else noun, finding: finding_text}
    order = sorted(mentions, key=lambda term: caption.lower().find(mentions[term].lower()))
    return {
        "caption": caption,
        "cuis": [_CUIS[term] for term in order],
        "modality": modality,
        "region": region,
        "finding": finding,
        "side": side,
        "label": int(finding == "consolidation") if (modality, region) == ("xray", "chest") else -1,
    }

