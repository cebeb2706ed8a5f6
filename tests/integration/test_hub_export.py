"""A saved checkpoint loads with the Auto classes and trust_remote_code where the vlp package cannot be imported."""

import ast
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image
from remote_code import run_blocked
from safetensors.torch import load_file, save_file

import vlp.modeling_vlp as modeling
import vlp.processing as processing
from vlp.modeling_vlp import VLPConfig, VLPForPreTraining
from vlp.processing.image_processing_vlp import VLPImageProcessor
from vlp.processing.processing_vlp import VLPProcessor
from vlp.processing.tokenization import train_wordpiece_tokenizer

ALLOWED_TOP_LEVEL = {
    "torch",
    "transformers",
    "numpy",
    "PIL",
    "math",
    "dataclasses",
    "typing",
    "collections",
    "inspect",
    "__future__",
    "copy",
    "json",
    "os",
    "warnings",
    "functools",
    "itertools",
    "numbers",
    "re",
    "io",
    "sys",
    "abc",
    "enum",
}


def _exported_paths():
    folders = ((modeling, modeling.EXPORTED_FILES), (processing, processing.EXPORTED_FILES))
    return [os.path.join(os.path.dirname(package.__file__), name) for package, names in folders for name in names]


def test_export_list_has_unique_names_that_import_only_each_other():
    paths = _exported_paths()
    names = [os.path.basename(p) for p in paths]
    assert len(set(names)) == len(names)
    siblings = {os.path.splitext(n)[0] for n in names}
    for path in paths:
        tree = ast.parse(open(path, encoding="utf-8").read())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level:
                assert node.level == 1 and node.module in siblings, f"{path}: from {'.' * node.level}{node.module}"
            elif isinstance(node, ast.ImportFrom):
                assert node.module.split(".")[0] in ALLOWED_TOP_LEVEL, f"{path}: from {node.module}"
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    assert alias.name.split(".")[0] in ALLOWED_TOP_LEVEL, f"{path}: import {alias.name}"


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    folder = tmp_path_factory.mktemp("checkpoint")
    tokenizer = train_wordpiece_tokenizer(
        ["a red circle left of a blue square", "there are two green stars"] * 5, vocab_size=80
    )
    processor = VLPProcessor(image_processor=VLPImageProcessor(size={"height": 32, "width": 32}), tokenizer=tokenizer)
    torch.manual_seed(0)
    config = VLPConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        image_size=32,
        patch_size=8,
        max_position_embeddings=16,
    )
    model = VLPForPreTraining(config).eval()
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    rng = np.random.default_rng(0)
    images = [
        Image.fromarray(rng.integers(0, 255, (40, 30, 3), dtype=np.uint8)),
        Image.fromarray(rng.integers(0, 255, (32, 32, 4), dtype=np.uint8), mode="RGBA"),
    ]
    for i, image in enumerate(images):
        image.save(folder / f"image{i}.png")
    texts = ["a red circle left of a blue square", "there are two green stars"]
    inputs = processor(images=images, text=texts, padding=True, return_tensors="pt")
    labels = torch.full_like(inputs["input_ids"], -100)
    labels[:, 2] = inputs["input_ids"][:, 2]
    with torch.no_grad():
        out = model(**inputs, mlm_labels=labels, itm_labels=torch.tensor([1, 0]))
    reference = {f"input_{k}": v for k, v in inputs.items()}
    reference.update(mlm_logits=out.mlm_logits, itm_logits=out.itm_logits, hidden=out.last_hidden_state, labels=labels)
    save_file({k: v.contiguous() for k, v in reference.items()}, str(folder / "reference.safetensors"))
    (folder / "texts.json").write_text(json.dumps(texts))
    return folder


def test_saved_folder_has_code_and_complete_auto_map(saved):
    files = set(os.listdir(saved))
    assert set(modeling.EXPORTED_FILES) | set(processing.EXPORTED_FILES) <= files
    assert "model.safetensors" in files
    auto_map = json.loads((saved / "config.json").read_text())["auto_map"]
    for auto_class in ("AutoConfig", "AutoModel", "AutoModelForPreTraining"):
        assert auto_class in auto_map


def test_model_and_processor_load_without_the_package(saved, tmp_path):
    code = f"""
    import json, torch
    from PIL import Image
    from safetensors.torch import save_file
    from transformers import AutoModel, AutoModelForPreTraining, AutoProcessor, AutoConfig
    folder = {str(saved)!r}
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    model = AutoModelForPreTraining.from_pretrained(folder, trust_remote_code=True).eval()
    base = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
    config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
    assert type(model).__name__ == "VLPForPreTraining" and type(base).__name__ == "VLPModel", type(model)
    assert config.model_type == "vlp"
    images = [Image.open(folder + f"/image{{i}}.png") for i in range(2)]
    texts = json.load(open(folder + "/texts.json"))
    inputs = processor(images=images, text=texts, padding=True, return_tensors="pt")
    from safetensors.torch import load_file
    labels = load_file(folder + "/reference.safetensors")["labels"]
    with torch.no_grad():
        out = model(**inputs, mlm_labels=labels, itm_labels=torch.tensor([1, 0]))
        hidden = base(**inputs).last_hidden_state
    result = {{f"input_{{k}}": v for k, v in inputs.items()}}
    result.update(mlm_logits=out.mlm_logits, itm_logits=out.itm_logits, hidden=out.last_hidden_state,
                  base_hidden=hidden)
    save_file({{k: v.contiguous() for k, v in result.items()}}, {str(tmp_path / "remote.safetensors")!r})
    import sys
    print("vlp" in sys.modules, type(processor).__module__)
    """
    printed = run_blocked(code, str(tmp_path / "work"))
    assert printed.split()[0] == "False"
    expected = load_file(str(saved / "reference.safetensors"))
    remote = load_file(str(tmp_path / "remote.safetensors"))
    for key in [k for k in expected if k.startswith("input_")] + ["mlm_logits", "itm_logits", "hidden"]:
        assert torch.equal(remote[key], expected[key]), key
    assert torch.equal(remote["base_hidden"], expected["hidden"])


def test_installed_package_loads_the_folder_with_the_auto_classes_and_no_remote_code(saved, capfd):
    """With vlp imported, the registered classes load the checkpoint: no `trust_remote_code`, no dynamic module,
    the outputs of the blocked-process test above (both equal the saved reference)."""
    from transformers import AutoConfig, AutoModel, AutoModelForPreTraining, AutoProcessor

    from vlp.modeling_vlp import VLPModel

    processors = [
        VLPProcessor.from_pretrained(saved),
        AutoProcessor.from_pretrained(saved),
        AutoProcessor.from_pretrained(saved, trust_remote_code=False),
    ]
    for processor in processors:
        assert type(processor) is VLPProcessor and type(processor.image_processor) is VLPImageProcessor
    model = AutoModelForPreTraining.from_pretrained(saved, trust_remote_code=False).eval()
    base = AutoModel.from_pretrained(saved).eval()
    assert type(model) is VLPForPreTraining and type(base) is VLPModel
    assert type(AutoConfig.from_pretrained(saved)) is VLPConfig
    assert "custom code" not in "".join(capfd.readouterr()), "loading asked about remote code"

    expected = load_file(str(saved / "reference.safetensors"))
    texts = json.loads((saved / "texts.json").read_text())
    images = [Image.open(saved / f"image{i}.png") for i in range(2)]
    for processor in processors:
        inputs = processor(images=images, text=texts, padding=True, return_tensors="pt")
        for key, value in inputs.items():
            assert torch.equal(value, expected[f"input_{key}"]), key
    with torch.no_grad():
        out = model(**inputs, mlm_labels=expected["labels"], itm_labels=torch.tensor([1, 0]))
        hidden = base(**inputs).last_hidden_state
    for key in ("mlm_logits", "itm_logits"):
        assert torch.equal(getattr(out, key), expected[key]), key
    assert torch.equal(out.last_hidden_state, expected["hidden"]) and torch.equal(hidden, expected["hidden"])
