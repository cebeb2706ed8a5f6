"""VLP: a Hugging Face-compatible toolkit for studying vision-language pretraining objectives.

The four top-level folders install under one namespace, ``vlp``:
``modeling_vlp/`` -> ``vlp.modeling_vlp``, ``processing/`` -> ``vlp.processing``,
``training/`` -> ``vlp.training``, ``model_cards/`` -> ``vlp.model_cards``.
(``processing`` and ``training`` are names taken by other distributions on PyPI.)
"""

from setuptools import find_namespace_packages, setup

FOLDERS = ("modeling_vlp", "processing", "training", "model_cards")
# Every folder below them too (training/metrics/<module>/, training/configs/...), so that a regular (non-editable)
# install holds the same files as the source tree.
PACKAGES = [f"vlp.{name}" for name in FOLDERS] + [
    f"vlp.{name}.{sub}" for name in FOLDERS for sub in find_namespace_packages(where=name, exclude=["*__pycache__*"])
]

setup(
    name="vlp",
    version="0.1.0",
    description="Pretrain and evaluate single-stream vision-language transformers with any mix of objectives.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=PACKAGES,
    package_dir={f"vlp.{name}": name for name in FOLDERS},
    package_data={
        "vlp.training.evaluation": ["*.json"],
        "vlp.training": ["configs/*.yaml", "configs/*/*.yaml"],
        "vlp.model_cards": ["*.md"],
    },
    include_package_data=True,
    install_requires=[
        "torch>=2.3,<3",
        "transformers>=5.25,<6",  # 5.3 mis-loads the tied MLM decoder; 5.25 is the oldest tested
        "accelerate>=1.0,<2",
        "datasets>=3.0",
        "evaluate>=0.4",
        "safetensors>=0.4",
        "huggingface-hub>=1.0",
        "tokenizers>=0.20",
        "numpy>=1.26",
        "pillow>=10",
        "pyyaml>=6",
        "tqdm>=4.66",
        "tensorboard>=2.15",
        "scipy>=1.11",
        "scikit-learn>=1.4",
        "matplotlib>=3.8",
        "jsonschema>=4.18",  # Draft202012Validator, ValidationError.json_path
    ],
    extras_require={
        "test": ["pytest>=8", "pytest-timeout>=2.3", "pot>=0.9.4"],
        "captioning": ["pycocoevalcap>=1.2"],
        # The formatter's output changes between releases: `make lint` checks the code against this exact version.
        "lint": ["ruff==0.17.6"],
    },
    entry_points={"console_scripts": ["vlp=vlp.training.cli:main"]},
)
