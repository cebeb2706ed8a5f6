"""From a data config to training and validation datasets, the processor and the data loader."""

import functools
import os
from dataclasses import dataclass

import datasets
import torch

from ..processing import shapes_world
from ..processing.collator import PretrainingCollator
from ..processing.grouping import GroupConfig, GroupedMatchingDataset, collate_grouped
from ..processing.image_processing_vlp import VLPImageProcessor
from ..processing.pretraining_data import PretrainingDataset
from ..processing.processing_vlp import VLPProcessor
from ..processing.tokenization import train_wordpiece_tokenizer

VALIDATION_SEED_OFFSET = 1_000_003  # the validation world is drawn with world_seed + this


def default_cache_dir():
    return os.environ.get("VLP_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "vlp"))


class EpochIndexed(torch.utils.data.Dataset):
    """Lets a sampler address samples as (epoch, index), so dataloader workers need no shared epoch counter."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, key):
        epoch, index = key
        self.dataset.set_epoch(epoch)
        return self.dataset[index]


class WithGroups(torch.utils.data.Dataset):
    """Pretraining samples with, under "gitm", the grouped-matching sample of the same (epoch, index): one sampler
    drives both, so grouped matching is as independent of processes and workers as the rest."""

    def __init__(self, samples, groups):
        self.samples, self.groups = samples, groups

    def __len__(self):
        return len(self.samples)

    def set_epoch(self, epoch):
        self.samples.set_epoch(epoch)
        self.groups.set_epoch(epoch)

    def __getitem__(self, index):
        return {**self.samples[index], "gitm": self.groups[index]}


class CollateWithGroups:
    """The pretraining collator's batch plus `batch["gitm"]`, the grouped-matching batch; unreadable groups are
    listed in `skipped` with the reason prefixed 'grouped matching: '."""

    def __init__(self, collator, pad_token_id):
        self.collator, self.pad_token_id = collator, pad_token_id

    def __call__(self, samples):
        groups = [sample["gitm"] for sample in samples]
        batch = self.collator([{k: v for k, v in sample.items() if k != "gitm"} for sample in samples])
        batch["gitm"] = collate_grouped(groups, pad_token_id=self.pad_token_id)
        batch["skipped"] = batch["skipped"] + [(i, f"grouped matching: {why}") for i, why in batch["gitm"]["skipped"]]
        return batch


@dataclass
class PretrainingData:
    train: PretrainingDataset
    val: PretrainingDataset
    processor: VLPProcessor
    collator: PretrainingCollator
    val_collator: PretrainingCollator
    train_rows: datasets.Dataset
    val_rows: datasets.Dataset

    def loader(self, batch_sampler, num_workers=0):
        return torch.utils.data.DataLoader(
            EpochIndexed(self.train), batch_sampler=batch_sampler, collate_fn=self.collator,
            num_workers=num_workers, persistent_workers=num_workers > 0,
        )


@functools.lru_cache(maxsize=4096)
def _scene(scene_json):
    return shapes_world.Scene.from_dict(scene_json)


def holds_for_scene(caption, scene_json):
    """The world's truth for a caption and a stored scene (a JSON string, parsed once)."""
    return shapes_world.caption_holds(caption, _scene(scene_json))


def load_folder(path, val_scenes):
    """A folder saved by `vlp data` (or any datasets folder with image and captions): (train, validation) rows.

    The last `val_scenes` rows are the validation split.
    """
    if not os.path.isdir(path):
        raise FileNotFoundError(f"dataset={path!r}: expected 'shapes' or a folder written by `vlp data shapes`")
    rows = datasets.load_from_disk(path)
    if isinstance(rows, datasets.DatasetDict):
        rows = rows[list(rows.keys())[0]]
    missing = {"image", "captions"} - set(rows.column_names)
    if missing:
        raise ValueError(f"dataset {path}: missing column(s) {sorted(missing)}; has {rows.column_names}")
    if val_scenes >= len(rows):
        raise ValueError(f"val_scenes={val_scenes} leaves no training rows in {path} ({len(rows)} rows)")
    split = len(rows) - val_scenes
    return rows.select(range(split)), rows.select(range(split, len(rows)))


def world_rows(data_args, seed_offset=0, num_scenes=None, image_size=64):
    """The synthetic world, generated once and cached under a key derived from its config."""
    config = shapes_world.WorldConfig(
        num_scenes=num_scenes or data_args.num_scenes,
        seed=data_args.world_seed + seed_offset,
        image_size=image_size,
        max_objects=data_args.max_objects,
        zipf_exponent=data_args.zipf_exponent,
        held_out_pairs=tuple(data_args.held_out()),
        background_noise=data_args.background_noise,
        # Validation captions are clean: they measure what was learnt, not the noise.
        noise_rate=data_args.noise_rate if seed_offset == 0 else 0.0,
    )
    return shapes_world.build_dataset(config, cache_dir=data_args.cache_dir or default_cache_dir())


def load_rows(data_args, image_size=64):
    """(train, validation) rows: a separately seeded validation world, or the tail of a saved folder."""
    if data_args.dataset != "shapes":
        return load_folder(data_args.dataset, data_args.val_scenes)
    train = world_rows(data_args, image_size=image_size)
    val = world_rows(data_args, VALIDATION_SEED_OFFSET, data_args.val_scenes, image_size)
    return train, val


def object_patches_for_scene(scene_json, rows, cols, patch_size, min_cover=0.1):
    """(rows * cols,) bool: the patches whose area objects cover by at least `min_cover` (masking diagnostics)."""
    coverage = shapes_world.object_masks(_scene(scene_json), image_size=rows * patch_size)
    if cols != rows:
        raise ValueError(f"the synthetic world's images are square; got a {rows} x {cols} patch grid")
    covered = coverage.max(axis=0).reshape(rows, patch_size, cols, patch_size).mean(axis=(1, 3))
    return (covered >= min_cover).reshape(-1)


def build_processor(rows, model_args, data_args):
    tokenizer = train_wordpiece_tokenizer(
        (caption for captions in rows["captions"] for caption in captions), vocab_size=model_args.vocab_size
    )
    image_processor = VLPImageProcessor(size={"height": model_args.image_size, "width": model_args.image_size})
    return VLPProcessor(image_processor=image_processor, tokenizer=tokenizer)


def grouped_matching(rows, processor, model_args, data_args, seed):
    """The grouped-matching view of `rows`: the world's truth judges targets when the rows have scenes."""
    config = GroupConfig(rows=data_args.gitm_rows, cols=data_args.gitm_cols,
                         own_probability=data_args.gitm_own_probability, distractors=data_args.gitm_distractors)
    kwargs = {} if "scene" in rows.column_names else {"holds_fn": None}
    return GroupedMatchingDataset(rows, processor, config, mode=data_args.gitm_mode, patch_size=model_args.patch_size,
                                  image_size=model_args.image_size, seed=seed, max_length=data_args.gitm_max_length,
                                  strict=data_args.strict, **kwargs)


def build_pretraining_data(model_args, data_args, seed, output_dir, accelerator, objectives=("mlm", "itm"),
                           hard_negatives=False, policy_masked=()):
    """Datasets and processor for a run. The main process generates and saves; the others then load.

    `policy_masked`: the objectives ('mlm', 'mim') whose training masks the step draws (attention-guided masking);
    the training collator then leaves the captions unmasked. Validation always uses the collator's fixed-rate masks,
    so every run is measured on the same task.
    """
    processor_dir = os.path.join(output_dir, "processor")
    with accelerator.main_process_first():
        train_rows, val_rows = load_rows(data_args, image_size=model_args.image_size)
        if os.path.isdir(processor_dir):
            processor = VLPProcessor.from_pretrained(processor_dir)
        else:
            processor = build_processor(train_rows, model_args, data_args)
            if accelerator.is_main_process:
                processor.save_pretrained(processor_dir)
    holds = holds_for_scene if "scene" in train_rows.column_names else None
    concepts = shapes_world.concept_words() if data_args.dataset == "shapes" else None
    common = dict(processor=processor, max_length=data_args.max_length, holds_fn=holds, concept_words=concepts)
    train = PretrainingDataset(train_rows, seed=seed, itm_probability=data_args.itm_probability,
                               strict=data_args.strict, **common)
    val = PretrainingDataset(val_rows, seed=VALIDATION_SEED_OFFSET, itm_probability=0.5, **common)
    tokenizer = processor.tokenizer
    objects = object_patches_for_scene if "scene" in train_rows.column_names else None
    masking = dict(mlm_probability=data_args.mlm_probability, mim_probability=data_args.mim_probability,
                   mim_block=data_args.mim_block,
                   mim_patch_size=model_args.patch_size if "mim" in objectives else None,
                   holds_fn=holds if hard_negatives else None, object_patches_fn=objects)
    train_masking = dict(masking, mlm_probability=0.0) if "mlm" in policy_masked else masking
    collator = PretrainingCollator(tokenizer, seed=seed, **train_masking)
    val_collator = PretrainingCollator(tokenizer, seed=VALIDATION_SEED_OFFSET, **masking)
    if "gitm" in objectives:
        train = WithGroups(train, grouped_matching(train_rows, processor, model_args, data_args, seed))
        val = WithGroups(val, grouped_matching(val_rows, processor, model_args, data_args, VALIDATION_SEED_OFFSET))
        collator = CollateWithGroups(collator, tokenizer.pad_token_id)
        val_collator = CollateWithGroups(val_collator, tokenizer.pad_token_id)
    return PretrainingData(
        train=train,
        val=val,
        processor=processor,
        collator=collator,
        val_collator=val_collator,
        train_rows=train_rows,
        val_rows=val_rows,
    )
