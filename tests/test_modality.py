"""Zero-shot classification: modality labels from real captions, prompt ensembles and prompt files
(the metrics the task reports: test_metrics.py)."""

import json

import numpy as np
import pytest

from tinyclip.data.synthetic import MODALITY_PHRASES, make_synthetic
from tinyclip.tasks import softmax
from tinyclip.tasks.modality import (MODALITIES, class_vectors, label_captions, load_prompts, methods_for,
                                     modalities_in_caption, modality_from_caption, probs_mean_embedding,
                                     probs_mean_probability)
from tinyclip.tasks.pneumonia import parse_prompts

# Real ROCO caption phrasings (test split), some shortened, with the modality they name; None when
# they name none of the six or several modalities.
CAPTIONS = [
    ("Axial MRI (coronal view).", "mri"),
    ("Arterial phase dynamic CT shows homogenous enhancement of the mass (arrow).", "ct"),
    ("Brain magnetic resonance imaging (MRI) after gadolinium injection showed an image in the axial "
     "(FLAIR sequence) showing hyper-intensity lesions in the white matter of the frontal lobes.", "mri"),
    ("T2-weighted MR sagittal image shows an isointense schwannoma with cauda equina compression at the S3 level.",
     "mri"),
    ("T1 Coronal image: There is a well defined mass (long white arrow) inferior to the right parotid gland.", "mri"),
    ("Computed tomography showing large bilateral adrenal masses", "ct"),
    ("Twelve-year-old boy presented with nasopharyngeal angiofi broma diagnosed with unilateral meningo-ophthalmic "
     "artery anomaly. Computed tomography scan shows midline nasopharyngeal angiofi broma (black arrow)", "ct"),
    ("Panoramic X ray taken four years later showing a unilocular radiolucent area in the left ramus.", "xray"),
    ("The chest X-ray showed mild increase of transverse cardiac diameter.", "xray"),
    ("Initial radiograph shows a right femoral neck fracture with sclerotic superior cortex.", "xray"),
    ("Orthopantomograph posttreatment", "xray"),
    ("Left craniocaudal mammogram shows a 6-cm lobulated, circumscribed mass in the inner quadrant.", "xray"),
    ("Transoesophageal echocardiogram demonstrating a mass (fibroelastoma) of the left ventricular outflow tract",
     "ultrasound"),
    ("Sagittal transperineal sonography showing the recurrent mass in the same patient.", "ultrasound"),
    ("Gray-scale US image showing the distal portion of right hepatic vein (marked by calipers).", "ultrasound"),
    ("Color Doppler usltasonography one week after treatment shows loss of the blood flow signal.", "ultrasound"),
    ("Follow-up radiologic ultrasound showing presence of mild intrahepatic biliary ductal dilatation.", "ultrasound"),
    ("Posterioanterior fluoroscopic image of lumbosacral spine showing fusion of vertebral bodies.", "fluoroscopy"),
    ("Follow-up barium enema revealing no evidence of distal obstruction.", "fluoroscopy"),
    ("Cholangiographic finding. Endoscopic retrograde cholangiography using carbon dioxide insufflation shows "
     "kinking of the common bile duct.", "fluoroscopy"),
    ("Lesion was located during surgery using a C-arm fluoroscopic device.", "fluoroscopy"),
    ("Cerebral angiogram after CAS demonstrates ophthalmic artery occlusion (arrow).", "angiography"),
    ("Digital subtraction angiography (iv-DSA) of superior vena cava (SVC) in patient A.", "angiography"),
    ("Selective coronary angiography shows multiple fistulae from the middle and distal right coronary artery.",
     "angiography"),
    ("Postthrombosis venogram", "angiography"),
    # compound names: the acquisition decides
    ("Computed tomography angiography (CTA). Sagittal reconstruction showing a 3 mm aneurysm (arrow).", "ct"),
    ("Reformatted CT angiography image shows the anomaly in the venous phase.", "ct"),
    ("Image from CT fluoroscopic guidance rhizotomy demonstrates the radiofrequency cannular tip.", "ct"),
    ("MRA showing marked reduction in the caliber of the left internal carotid artery.", "mri"),
    ("Magnetic resonance cholangiography of a child with autoimmune sclerosing cholangitis.", "mri"),
    ("The T2 and FLAIR CTVs are outlined in red and cyan respectively.", "mri"),  # CTV: a target volume, not CT
    # none of the six
    ("Dosimetric results obtained with RapidArc.", None),
    ("Pre-operative radiological view of case 1", None),
    ("Vitiligo (red arrows) (seen under Wood’s lamp).", None),
    ("Bone scintigraphy showing increased sacral uptake bilaterally (hollow arrows).", None),
    ("Retinal vascular anatomy seen on fluorescein angiography during venous filling.", None),
    ("Distension digestive avec niveaux hydro-aériques coliques et vacuité pelvienne", None),
    # several
    ("On X-ray and US, the metallic foreign body is seen in the right hepatic lobe.", None),
    ("Axial fused PET-CT demonstrating FDG accumulation in a right middle lobe mass.", None),
    ("CT scan taken on the day after angiography indicated GGO patch lesion in the right lower lung.", None),
]


@pytest.mark.parametrize("caption, expected", CAPTIONS)
def test_modality_from_real_captions(caption, expected):
    assert modality_from_caption(caption) == expected


def test_case_sensitive_abbreviations():
    assert modality_from_caption("Renal US long R kidney demonstrating atrophy and cysts.") == "ultrasound"
    assert modality_from_caption("The patient was referred to us with abdominal pain.") is None
    assert modality_from_caption("Sagittal MR of the lumbar spine.") == "mri"
    # In echocardiography "MR" is mitral regurgitation, not MRI.
    assert modality_from_caption("Transthoracic echocardiography showing severe MR (mitral regurgitation).") \
        == "ultrasound"
    assert modalities_in_caption("Fused PET/CT image") == {"ct", "other"}


def test_every_synthetic_phrase_names_its_modality():
    for modality, phrases in MODALITY_PHRASES.items():
        for phrase in phrases:
            assert modality_from_caption(f"{phrase[:1].upper()}{phrase[1:]} of the chest.") == modality, phrase
    frame, _ = make_synthetic(num_samples=120, image_size=8, seed=3)
    labels, counts = label_captions(frame["caption"])
    assert labels == list(frame["modality"]) and counts == {"kept": 120, "none": 0, "several": 0}


def test_label_counts():
    labels, counts = label_captions([c for c, _ in CAPTIONS])
    assert labels == [e for _, e in CAPTIONS]
    assert counts == {"kept": 31, "none": 6, "several": 3}


# ---------------------------------------------------------------------------
# prompt ensembles
# ---------------------------------------------------------------------------

def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_single_prompts_give_the_same_probabilities_both_ways():
    rng = np.random.default_rng(0)
    images, prompts = _unit(rng.normal(size=(7, 5))), [_unit(rng.normal(size=(1, 5))) for _ in range(3)]
    expected = softmax(20.0 * images @ np.concatenate(prompts).T, axis=1)
    np.testing.assert_allclose(probs_mean_probability(images, prompts, 20.0), expected)
    np.testing.assert_allclose(probs_mean_embedding(images, prompts, 20.0), expected)


def test_mean_probability_ensemble_by_definition():
    rng = np.random.default_rng(1)
    images = _unit(rng.normal(size=(4, 6)))
    prompts = [_unit(rng.normal(size=(k, 6))) for k in (1, 3, 2)]
    got = probs_mean_probability(images, prompts, 10.0)
    for i, x in enumerate(images):
        all_logits = [10.0 * x @ p for ps in prompts for p in ps]
        z = sum(np.exp(all_logits))
        means = [np.mean([np.exp(10.0 * x @ p) / z for p in ps]) for ps in prompts]
        np.testing.assert_allclose(got[i], np.array(means) / sum(means))
        # the same as a softmax over the classes' log-mean-exp logits
        lme = [np.log(np.mean(np.exp(10.0 * ps @ x))) for ps in prompts]
        np.testing.assert_allclose(got[i], softmax(np.array(lme)))


def test_mean_embedding_ensemble_by_definition():
    rng = np.random.default_rng(2)
    prompts = [rng.normal(size=(k, 6)) for k in (2, 4)]  # not yet unit length: class_vectors normalises each
    vectors = class_vectors(prompts)
    for v, ps in zip(vectors, prompts):
        mean = np.mean([p / np.linalg.norm(p) for p in ps], axis=0)
        np.testing.assert_allclose(v, mean / np.linalg.norm(mean))
    images = _unit(rng.normal(size=(3, 6)))
    np.testing.assert_allclose(probs_mean_embedding(images, prompts, 5.0), softmax(5.0 * images @ vectors.T, axis=1))


def test_default_prompt_file():
    sets = load_prompts()
    assert set(sets) == {"single", "ensemble"}
    assert list(sets["single"]) == list(MODALITIES)
    assert sets["single"]["ct"] == ["ct scan"] and sets["single"]["xray"] == ["xray"]
    assert all(len(p) > 1 for p in sets["ensemble"].values())
    assert [m[0] for m in methods_for(sets)] == ["single", "ensemble_mean_prob", "ensemble_mean_emb"]


@pytest.mark.parametrize("content, message", [
    ("{not json", "not valid JSON"),
    ({"single": {"ct": ["ct"], "pet": ["pet"]}}, "unknown classes"),
    ({"a": {"ct": ["ct"], "mri": ["mri"]}, "b": {"ct": ["ct"], "xray": ["x"]}}, "first set has"),
    ({"a": {"ct": [], "mri": ["mri"]}}, "non-empty list"),
    ({"a": {"ct": ["ct"]}}, "at least two classes"),
])
def test_bad_prompt_files(tmp_path, content, message):
    path = tmp_path / "prompts.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(ValueError, match=message):
        load_prompts(path)
    with pytest.raises(FileNotFoundError):
        load_prompts(tmp_path / "missing.json")


def test_pneumonia_prompts(tmp_path):
    assert parse_prompts(None) == {"normal": ["normal"], "pneumonia": ["pneumonia"]}
    assert parse_prompts("a normal chest x ray; pneumonia") == {"normal": ["a normal chest x ray"],
                                                                "pneumonia": ["pneumonia"]}
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"normal": ["normal", "clear lungs"], "pneumonia": "consolidation"}))
    assert parse_prompts(str(path)) == {"normal": ["normal", "clear lungs"], "pneumonia": ["consolidation"]}
    with pytest.raises(ValueError):
        parse_prompts("only one prompt")


def test_logistic_probe_on_frozen_image_embeddings(tmp_path):
    """The probe (trained on the run's training part, scored on its test part) beats the majority class."""
    import json
    from tinyclip import evaluate, train
    from test_train import TINY
    run = tmp_path / "run"
    assert train.main(TINY + ["--num-samples", "200", "--epochs", "1", "--out", str(run)]) == 0
    assert evaluate.main(["--run", str(run), "--task", "modality", "--out", str(tmp_path / "eval"),
                          "--device", "cpu"]) == 0
    m = json.loads((tmp_path / "eval" / "metrics.json").read_text())["modality"]
    assert m["probe_train_n"] == 128
    assert m["majority_baseline"] < m["accuracy_probe"] <= 1 and 0 < m["balanced_accuracy_probe"] <= 1
