"""What a run's config says about the published model: objectives, data sources, pipeline tag, repo name."""

from __future__ import annotations

import os

# Short descriptions of the objectives, by their config names.
OBJECTIVES = {
    "mlm": "masked language modelling: whole words of the caption masked and predicted from the image and the "
    "rest of the caption",
    "itm": "image-text matching: does the caption hold for the image (negatives are captions the data says are "
    "false for it)",
    "mim": "masked image modelling: masked patches reconstructed from the visible ones and the caption",
    "itc": "image-text contrastive: symmetric InfoNCE between text-only and image-only features",
    "wra": "word-region alignment: optimal-transport distance between word and patch states (UNITER)",
    "gitm": "grouped image-text matching: several images in one canvas and several captions in one text; each "
    "caption is assigned to its image or to none",
}

# The pipeline a class of the checkpoint fits, by architecture. The pretraining model has none: it scores image-text
# pairs and fills masked words given an image, which no Hub pipeline does.
PIPELINE_TAGS = {
    "VLPForQuestionAnswering": "visual-question-answering",
    "VLPForConditionalGeneration": "image-text-to-text",
    "VLPForImageTextRetrieval": "zero-shot-image-classification",
}

# Validation metrics of `vlp pretrain` (final_metrics.json): label, metric type, task.


def repo_name(repo_id):
    """The model's name: the part of the repo id after the namespace."""
    return repo_id.rsplit("/", 1)[-1]


def pipeline_tag_for(architectures):
    """The Hub pipeline tag of the first architecture that has one, else None."""
    for name in architectures or ():
        if name in PIPELINE_TAGS:
            return PIPELINE_TAGS[name]
    return None


def objective_weights(config):
    """run.yaml's `objectives` ('mlm,itm:0.5') as {name: weight}."""
    weights = {}
    for item in filter(None, (part.strip() for part in str(config.get("objectives", "")).split(","))):
        name, _, weight = item.partition(":")
        weights[name] = float(weight) if weight else 1.0
    return weights


def data_sources(config):
    """[(kind, name)] of the run's training data: ('shapes', ''), ('folder', basename) or real sources by basename."""
    sources = []
    kind = None
    for part in filter(None, (p.strip() for p in str(config.get("dataset", "shapes")).split(","))):
        prefix, colon, rest = part.partition(":")
        if colon and prefix in ("shards", "captions", "coco"):
            kind, part = prefix, rest
        if kind is None:
            sources.append(("shapes", "") if part == "shapes" else ("folder", os.path.basename(part.rstrip("/"))))
        else:
            sources.append((kind, os.path.basename(part.split("@")[0].rstrip("/"))))
    return sources or [("shapes", "")]


def is_synthetic(config):
    """Whether the run trained on the synthetic shapes world (embedded, or a `vlp data shapes` folder)."""
    return all(kind in ("shapes", "folder") for kind, _ in data_sources(config))
