"""Training recipes: named sets of the objective and optimisation flags of ``tinyclip.train``.

``report`` is the report's training exactly (Adam 5e-5, hard CLIP targets, no augmentation,
the best checkpoint by validation loss, the report's image tower). ``small-data`` is the combination measured best on
a few thousand real pairs (README, Results). A flag given on the command line always wins
over the recipe.
"""

from __future__ import annotations

RECIPES = {
    "report": {
        "optimizer": "adam", "lr": 5e-5, "weight_decay": 0.0, "warmup_steps": 0, "loss": "clip",
        "concept_alpha": 0.5, "concept_source": "cuis+modality", "augment": 0.0, "text_augment": 0.0,
        "accum_steps": 1, "ssl_weight": 0.0, "select": "val_loss", "temperature": 0.0, "logit_scale_lr": 1.0,
        "ema": 0.0, "image_tower": "report",
    },
    "small-data": {
        "optimizer": "adamw", "lr": 5e-4, "weight_decay": 0.05, "warmup_steps": 50, "loss": "concept",
        "concept_alpha": 0.5, "concept_source": "cuis+modality", "augment": 0.5, "text_augment": 0.5,
        "accum_steps": 1, "ssl_weight": 0.0, "select": "val_r10", "temperature": 0.0, "logit_scale_lr": 0.1,
        "ema": 0.0, "image_tower": "resnet",
    },
}
RECIPE_FLAGS = tuple(RECIPES["report"])
# What a run gets without --recipe: the generated data keeps the report's training (its tests and
# examples measure it); real data gets the recipe that learns most from little data.
DEFAULT_RECIPE = {"synthetic": "report", "roco": "small-data"}


def apply_recipe(args) -> None:
    """Fill every recipe flag left unset (None) from ``args.recipe``, itself defaulting by ``args.data``."""
    if getattr(args, "recipe", None) is None:
        args.recipe = DEFAULT_RECIPE[args.data]
    for key, value in RECIPES[args.recipe].items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
