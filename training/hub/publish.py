"""`vlp push RUN_DIR --repo-id NAME`: publish a pretraining run the Hugging Face way.

`assemble` writes the exact folder that is uploaded: the weights (safetensors only), config.json with a complete
`auto_map`, the model's and the processor's code (the Hub-exported files), the processor (tokenizer, image processor,
processor config), a README.md model card filled from the run (`vlp.model_cards`), and the run's record and logs
under `run/` (machine-specific paths removed) with the evaluation results. `--dry-run DIR` stops there; otherwise
the folder goes up through `huggingface_hub` (`create_repo(exist_ok=True)`, then `upload_folder`).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field

import yaml
from huggingface_hub import HfApi
from huggingface_hub.utils import HFValidationError, validate_repo_id

from ... import model_cards, modeling_vlp, processing
from ...modeling_vlp.configuration_vlp import VLP_AUTO_MAP
from ...processing import strict_json
from ..cli_args import parse_command
from ..config import ConfigError

CODE_FILES = tuple(modeling_vlp.EXPORTED_FILES) + tuple(processing.EXPORTED_FILES)
WEIGHTS = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"
PROCESSOR_CONFIGS = ("processor_config.json", "preprocessor_config.json")
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
# run.yaml keys that hold paths of the machine the run was on; they are dropped (or cut to a name) when published.
LOCAL_PATH_KEYS = ("output_dir", "cache_dir")
NAMED_PATH_KEYS = ("init_from",)


class PublishError(ConfigError):
    """A run folder that cannot be published as it is, or a bad argument; the message says what is expected."""


@dataclass
class RunFolder:
    """What `vlp pretrain` left in RUN_DIR, read and checked."""

    run_dir: str
    model_dir: str
    model_config: dict  # model/config.json
    run_record: dict  # run.yaml
    final_metrics: dict | None = None
    train_log: list = field(default_factory=list)  # metrics.jsonl records
    evaluation: dict | None = None  # RUN_DIR/evaluation.json (`vlp evaluate`, as a study writes it)
    model_files: dict = field(default_factory=dict)  # published name -> source path (weights, config, processor)
    code_files: dict = field(default_factory=dict)  # published name -> source path
    code_from_package: bool = False  # the run's model/ lacked some code files: the installed ones are used


def check_repo_id(repo_id):
    """The repo id, checked: 'name' or 'namespace/name' of letters, digits, '-', '_', '.' (the Hub's rules)."""
    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise PublishError(
            f"--repo-id {repo_id!r} is not a valid Hub repo id: expected 'name' or 'namespace/name' "
            f"(letters, digits, '-', '_', '.'; at most 96 characters; no '--' or '..'; not starting or "
            f"ending with '-' or '.'); {error}"
        ) from None
    if not repo_id:
        raise PublishError("--repo-id is empty: expected 'name' or 'namespace/name'")
    return repo_id


def _read_json(path, what):
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except json.JSONDecodeError as error:
        raise PublishError(f"{path}: not valid JSON ({error}); expected {what}") from None


def _read_jsonl(path):
    records = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut short by a crash
    return records


def _weights(model_dir):
    """{name: path} of the safetensors weights (single file, or an index with its shards)."""
    index = os.path.join(model_dir, WEIGHTS_INDEX)
    if os.path.isfile(index):
        shards = sorted(set(_read_json(index, "a safetensors index")["weight_map"].values()))
        missing = [s for s in shards if not os.path.isfile(os.path.join(model_dir, s))]
        if missing:
            raise PublishError(f"{index} names shards that are missing: {missing}")
        return {WEIGHTS_INDEX: index, **{s: os.path.join(model_dir, s) for s in shards}}
    single = os.path.join(model_dir, WEIGHTS)
    if os.path.isfile(single):
        return {WEIGHTS: single}
    pickles = [n for n in os.listdir(model_dir) if n.endswith(PICKLE_SUFFIXES)]
    found = f"; found only pickled weights {pickles}, which are not published" if pickles else ""
    raise PublishError(
        f"{model_dir} has no {WEIGHTS} (or {WEIGHTS_INDEX} with its shards): expected the weights "
        f"saved by `save_pretrained` in safetensors{found}"
    )


def _processor_files(run_dir, model_dir):
    """{name: path} of the processor: from model/ (where `vlp pretrain` saves it), else from RUN_DIR/processor/."""
    for folder in (model_dir, os.path.join(run_dir, "processor")):
        if not os.path.isdir(folder):
            continue
        names = set(os.listdir(folder))
        config = next((n for n in PROCESSOR_CONFIGS if n in names), None)
        tokenizer = next((n for n in TOKENIZER_FILES if n in names), None)
        if config and tokenizer and "tokenizer_config.json" in names:
            wanted = [
                n
                for n in names
                if n in PROCESSOR_CONFIGS
                or n.startswith(("tokenizer", "vocab"))
                or n in ("special_tokens_map.json", "added_tokens.json")
            ]
            return {n: os.path.join(folder, n) for n in sorted(wanted)}
    raise PublishError(
        f"{model_dir} (and {os.path.join(run_dir, 'processor')}) holds no complete processor: expected "
        f"{' or '.join(PROCESSOR_CONFIGS)}, tokenizer_config.json and {' or '.join(TOKENIZER_FILES)}, "
        f"as written by VLPProcessor.save_pretrained"
    )


def _code_files(model_dir):
    """({name: path} of the Hub-exported code, taken from the installed package?). The run's own copies are used
    when model/ holds all of them; otherwise the installed package's whole set, so that the files match each other."""
    present = {n: os.path.join(model_dir, n) for n in CODE_FILES if os.path.isfile(os.path.join(model_dir, n))}
    if len(present) == len(CODE_FILES):
        return present, False
    folders = {n: os.path.dirname(modeling_vlp.__file__) for n in modeling_vlp.EXPORTED_FILES}
    folders.update({n: os.path.dirname(processing.__file__) for n in processing.EXPORTED_FILES})
    return {n: os.path.join(folders[n], n) for n in CODE_FILES}, True


def read_run(run_dir):
    """Reads and checks a `vlp pretrain` output folder; raises PublishError naming what is missing."""
    if not os.path.isdir(run_dir):
        raise PublishError(
            f"run folder {run_dir} does not exist: expected a `vlp pretrain` output folder "
            f"(run.yaml, model/, final_metrics.json, metrics.jsonl)"
        )
    record_path = os.path.join(run_dir, "run.yaml")
    if not os.path.isfile(record_path):
        raise PublishError(
            f"{run_dir} has no run.yaml: expected a `vlp pretrain` output folder (run.yaml with the "
            f"config, code version and seed; model/ with the final model)"
        )
    with open(record_path, encoding="utf-8") as handle:
        record = yaml.safe_load(handle) or {}
    if not isinstance(record, dict) or not isinstance(record.get("config"), dict):
        raise PublishError(f"{record_path}: expected a mapping with a 'config' mapping (as `vlp pretrain` writes it)")
    model_dir = os.path.join(run_dir, "model")
    if not os.path.isdir(model_dir):
        raise PublishError(
            f"{run_dir} has no model/ folder: expected the final model saved by `vlp pretrain` at the "
            f"end of the run (config.json, {WEIGHTS}, the code and the processor); has the run "
            f"finished?"
        )
    config_path = os.path.join(model_dir, "config.json")
    if not os.path.isfile(config_path):
        raise PublishError(f"{model_dir} has no config.json: expected a folder written by save_pretrained")
    model_config = _read_json(config_path, "the model's config.json")
    if model_config.get("model_type") != "vlp":
        raise PublishError(f"{config_path}: model_type={model_config.get('model_type')!r}; expected 'vlp'")
    files = {"config.json": config_path, **_weights(model_dir), **_processor_files(run_dir, model_dir)}
    skipped = set(files) | set(CODE_FILES) | {"README.md"}
    for name in sorted(os.listdir(model_dir)):  # other files save_pretrained wrote, e.g. generation_config.json
        path = os.path.join(model_dir, name)
        if (
            name not in skipped
            and os.path.isfile(path)
            and not name.startswith(".")
            and not name.endswith(PICKLE_SUFFIXES)
            and not name.endswith(".safetensors")
        ):
            files[name] = path
    code, from_package = _code_files(model_dir)
    metrics_path = os.path.join(run_dir, "final_metrics.json")
    log_path = os.path.join(run_dir, "metrics.jsonl")
    evaluation_path = os.path.join(run_dir, "evaluation.json")
    return RunFolder(
        run_dir=run_dir,
        model_dir=model_dir,
        model_config=model_config,
        run_record=record,
        final_metrics=_read_json(metrics_path, "final validation metrics") if os.path.isfile(metrics_path) else None,
        train_log=_read_jsonl(log_path) if os.path.isfile(log_path) else [],
        evaluation=_read_json(evaluation_path, "`vlp evaluate` results") if os.path.isfile(evaluation_path) else None,
        model_files=files,
        code_files=code,
        code_from_package=from_package,
    )


def complete_auto_map(config):
    """config.json's dict with every VLP class in `auto_map` (entries the run's config lacks are added)."""
    config = dict(config)
    config["auto_map"] = {**VLP_AUTO_MAP, **(config.get("auto_map") or {})}
    return config


def check_auto_maps(folder):
    """Every `auto_map` entry of the folder's JSON configs names a class in a code file of the folder."""
    for name in ("config.json", *PROCESSOR_CONFIGS, "tokenizer_config.json"):
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            continue
        found = _read_json(path, "a JSON config")
        maps = [found.get("auto_map") or {}, (found.get("image_processor") or {}).get("auto_map") or {}]
        for auto_map in maps:
            for auto_class, target in auto_map.items():
                targets = target if isinstance(target, (list, tuple)) else [target]
                for item in filter(None, targets):
                    module = item.split("--")[-1].rsplit(".", 1)[0]
                    if not os.path.isfile(os.path.join(folder, f"{module}.py")):
                        raise PublishError(
                            f"{name}: auto_map {auto_class} -> {item} needs {module}.py, which the "
                            f"published folder lacks"
                        )


def count_parameters(folder):
    """Parameters stored in the folder's safetensors files (tied weights are stored, and counted, once)."""
    from safetensors import safe_open

    total = 0
    for name in sorted(os.listdir(folder)):
        if name.endswith(".safetensors"):
            with safe_open(os.path.join(folder, name), framework="pt") as handle:
                for key in handle.keys():
                    size = 1
                    for dim in handle.get_slice(key).get_shape():
                        size *= dim
                    total += size
    return total


def public_config(config):
    """The run's config without the machine's paths: output and cache folders dropped, other paths cut to a name."""
    cleaned = {k: v for k, v in config.items() if k not in LOCAL_PATH_KEYS}
    for key in NAMED_PATH_KEYS:
        if isinstance(cleaned.get(key), str) and os.path.isabs(cleaned[key]):
            cleaned[key] = os.path.basename(cleaned[key].rstrip("/"))
    for key in ("dataset", "val_dataset"):
        value = cleaned.get(key)
        if isinstance(value, str) and os.sep in value:
            parts = []
            for part in value.split(","):
                prefix, colon, rest = part.partition(":")
                head, body = (prefix + ":", rest) if colon and prefix in ("shards", "captions", "coco") else ("", part)
                parts.append(head + "@".join(os.path.basename(p.rstrip("/")) for p in body.split("@")))
            cleaned[key] = ",".join(parts)
    return cleaned


def infer_mix(run_dir, results):
    """A study's mix of this run: the folder name above `seed<k>` (a study writes runs/<mix>/seed<k>/)."""
    mixes = (results or {}).get("mixes") or {}
    candidate = os.path.basename(os.path.dirname(os.path.abspath(run_dir)))
    if candidate in mixes:
        return candidate
    return next(iter(mixes)) if len(mixes) == 1 else None


def _copy(source, target):
    os.makedirs(os.path.dirname(target), exist_ok=True)
    shutil.copyfile(source, target)


def _write_json(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    strict_json.write_json(path, data, indent=2)


def assemble(run_dir, out_dir, repo_id, results_path=None, mix=None, license=None, datasets=(), include_run=True):
    """Writes the folder `vlp push` uploads into `out_dir` (new or empty); returns its files, relative, sorted."""
    check_repo_id(repo_id)
    run = read_run(run_dir)
    results = [run.evaluation] if run.evaluation is not None else []
    extra = None
    if results_path is not None:
        extra, mix = _extra_results(results_path, run_dir, mix)
        results.append(extra)
    if os.path.exists(out_dir) and (not os.path.isdir(out_dir) or os.listdir(out_dir)):
        raise PublishError(
            f"{out_dir} exists and is not an empty folder: expected a new or empty folder for the files to publish"
        )
    os.makedirs(out_dir, exist_ok=True)
    _write_model_files(run, out_dir)
    published = _write_run_files(run, run_dir, out_dir) if include_run else []
    if extra is not None:
        _copy(results_path, os.path.join(out_dir, "results.json"))
        published.append("results.json")
    inputs = model_cards.CardInputs(
        repo_id=repo_id,
        model_config=complete_auto_map(run.model_config),
        run_record=run.run_record,
        final_metrics=run.final_metrics,
        train_log=run.train_log,
        results=results,
        mix=mix,
        num_parameters=count_parameters(out_dir),
        license=license,
        datasets=tuple(datasets),
        files=tuple(published),
        code_files=CODE_FILES,
    )
    with open(os.path.join(out_dir, "README.md"), "w", encoding="utf-8") as handle:
        handle.write(model_cards.render_model_card(inputs))
    if run.code_from_package:
        print(f"note: {run.model_dir} lacks some of {list(CODE_FILES)}; the installed VLP's code files are published")
    return sorted(
        os.path.relpath(os.path.join(root, name), out_dir).replace(os.sep, "/")
        for root, _, names in os.walk(out_dir)
        for name in names
    )


def _extra_results(results_path, run_dir, mix):
    """(the --results file, checked to hold figures, the mix it describes): a study's results need the mix."""
    if not os.path.isfile(results_path):
        raise PublishError(
            f"--results {results_path} does not exist: expected a results.json of `vlp evaluate` or `vlp study`"
        )
    extra = _read_json(results_path, "a results.json of `vlp evaluate` or `vlp study`")
    if not isinstance(extra, dict):
        raise PublishError(f"--results {results_path}: expected a JSON object, got {type(extra).__name__}")
    if extra.get("format") == "vlp-study-results":
        mix = mix or infer_mix(run_dir, extra)
        try:
            model_cards.study_figures(extra, mix)
        except ValueError as error:
            raise PublishError(f"--results {results_path}: {error}") from None
    elif not model_cards.results_figures(extra):
        raise PublishError(
            f"--results {results_path}: no figures found; expected a results.json of `vlp "
            f"evaluate` or `vlp study`, or any JSON whose figures are {{value, low, high}}"
        )
    return extra, mix


def _write_model_files(run, out_dir):
    """Weights, code files and configs, each config's auto_map completed and checked."""
    for name, source in {**run.model_files, **run.code_files}.items():
        _copy(source, os.path.join(out_dir, name))
    _write_json(os.path.join(out_dir, "config.json"), complete_auto_map(run.model_config))
    processor_config = os.path.join(out_dir, "processor_config.json")
    if os.path.isfile(processor_config):
        data = _read_json(processor_config, "the processor's config")
        data["auto_map"] = {"AutoProcessor": "processing_vlp.VLPProcessor", **(data.get("auto_map") or {})}
        _write_json(processor_config, data)
    check_auto_maps(out_dir)


def _write_run_files(run, run_dir, out_dir):
    """run/: the run record (public config), the pretraining config and the run's logs; returns their names."""
    published = []
    record = dict(run.run_record, config=public_config(run.run_record["config"]))
    os.makedirs(os.path.join(out_dir, "run"), exist_ok=True)
    for name, data in (("run/run.yaml", record), ("run/pretrain_config.yaml", record["config"])):
        with open(os.path.join(out_dir, name), "w", encoding="utf-8") as handle:
            yaml.safe_dump(data, handle, sort_keys=False)
        published.append(name)
    for name in ("final_metrics.json", "metrics.jsonl", "evaluation.json"):
        if os.path.isfile(os.path.join(run_dir, name)):
            _copy(os.path.join(run_dir, name), os.path.join(out_dir, "run", name))
            published.append(f"run/{name}")
    return published


def upload(folder, repo_id, private=False, token=None, commit_message=None, api=None):
    """Creates the model repo if needed and uploads `folder` as one commit; returns the commit's URL.

    Without `private` the Hub's default visibility applies (public, unless an organisation defaults to private).
    """
    api = api or HfApi(token=token)
    try:
        api.create_repo(repo_id=repo_id, repo_type="model", private=True if private else None, exist_ok=True)
        commit = api.upload_folder(
            folder_path=folder,
            repo_id=repo_id,
            repo_type="model",
            commit_message=commit_message or "Upload VLP model, processor, code and card",
        )
    except Exception as error:
        from huggingface_hub.errors import OfflineModeIsEnabled

        if isinstance(error, OfflineModeIsEnabled):
            raise PublishError(
                "uploading needs the network but HF_HUB_OFFLINE is set: unset it, or write the folder "
                "with --dry-run DIR"
            ) from None
        raise
    return getattr(commit, "commit_url", None) or str(commit)


def push(
    run_dir,
    repo_id,
    dry_run=None,
    private=False,
    token=None,
    results_path=None,
    mix=None,
    license=None,
    datasets=(),
    include_run=True,
    api=None,
):
    """`vlp push`: assembles the folder (into `dry_run`, or a temporary folder that is uploaded and removed)."""
    check_repo_id(repo_id)
    options = dict(results_path=results_path, mix=mix, license=license, datasets=datasets, include_run=include_run)
    if dry_run:
        files = assemble(run_dir, dry_run, repo_id, **options)
        return {"folder": dry_run, "files": files, "uploaded": False}
    with tempfile.TemporaryDirectory(prefix="vlp-push-") as folder:
        files = assemble(run_dir, os.path.join(folder, "upload"), repo_id, **options)
        url = upload(os.path.join(folder, "upload"), repo_id, private=private, token=token, api=api)
    return {"folder": None, "files": files, "uploaded": True, "url": url}


@dataclass
class PushArguments:
    """`vlp push RUN_DIR --repo-id ID`: the options, parsed by `HfArgumentParser`."""

    run_dir: str = field(metadata={"help": "a `vlp pretrain` output folder (run.yaml, model/, final_metrics.json)"})
    repo_id: str = field(metadata={"help": "'name' or 'namespace/name' of the model repo"})
    private: bool = field(default=False, metadata={"help": "create the repo as private"})
    dry_run: str | None = field(
        default=None, metadata={"help": "write the folder that would be uploaded into this folder, upload nothing"}
    )
    results: str | None = field(
        default=None, metadata={"help": "a results.json of `vlp evaluate` or `vlp study` to show and publish"}
    )
    mix: str | None = field(
        default=None, metadata={"help": "this run's mix in a study's results.json (default: the folder above seed<k>)"}
    )
    license: str | None = field(default=None, metadata={"help": "license id for the card, e.g. apache-2.0"})
    datasets: str = field(default="", metadata={"help": "comma-separated Hub dataset ids for the card's metadata"})
    no_run_files: bool = field(default=False, metadata={"help": "do not publish run/ (run.yaml, config, logs)"})
    token: str | None = field(default=None, metadata={"help": "Hub token (default: `hf auth login`'s, or HF_TOKEN)"})


def cli(argv):
    description = (
        "Publish a pretraining run on the Hugging Face Hub: the model (safetensors), its config with a complete "
        "auto_map, the model and processor code, the processor, a model card and the run's record and results. "
        "--dry-run DIR writes exactly that folder and uploads nothing."
    )
    args = parse_command(PushArguments, argv, "vlp push", description, positional=("run_dir",))
    datasets = tuple(d.strip() for d in args.datasets.split(",") if d.strip())
    summary = push(
        args.run_dir,
        args.repo_id,
        dry_run=args.dry_run,
        private=args.private,
        token=args.token,
        results_path=args.results,
        mix=args.mix,
        license=args.license,
        datasets=datasets,
        include_run=not args.no_run_files,
    )
    if summary["uploaded"]:
        print(f"uploaded {len(summary['files'])} files to {args.repo_id}: {summary['url']}")
    else:
        print(f"wrote {len(summary['files'])} files to {summary['folder']} (dry run, nothing uploaded):")
        for name in summary["files"]:
            print(f"  {name}")
    return summary
