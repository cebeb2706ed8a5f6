"""From a data config to training and validation datasets, the processor and the data loader.

Three kinds of training data (`DataArguments.dataset`):

- the synthetic world ('shapes') or a folder written by `vlp data shapes`: map-style, as before;
- caption files and COCO captions (`captions:FILE@ROOT`, `coco:FILE@ROOT`): read into memory, each source's skipped
  records counted and listed (`source_report.json`), concatenated, optionally mixed with weights per epoch
  (`MixedEpochDataset`); validation takes the last `val_scenes` rows (split evenly between the sources) unless
  `val_dataset` is given;
- WebDataset shards (`shards:DIR`): streamed by a `ShardStream` (split by process and dataloader worker, resumable);
  the samples are built in the workers by `StreamSamples`, with ITM negatives drawn from a caption bank (the first
  `negative_bank` readable captions), on which the tokenizer is also trained. Validation comes from `val_dataset`.
"""

import functools
import os
from dataclasses import dataclass, field

import datasets
import torch

from ...processing import strict_json
from ...processing.collator import PretrainingCollator
from ...processing.grouping import GroupConfig, GroupedMatchingDataset, collate_grouped
from ...processing.image_processing_vlp import VLPImageProcessor
from ...processing.pretraining_data import PretrainingDataset
from ...processing.processing_vlp import VLPProcessor
from ...processing.readers import webdataset as wds
from ...processing.readers.captions import (
    MixedEpochDataset,
    SkipReport,
    concatenate_sources,
    mixture_quotas,
    read_caption_file,
    read_coco_captions,
)
from ...processing.tokenization import train_wordpiece_tokenizer
from ...processing.worlds import shapes as shapes_world

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


class StreamSamples:
    """A `ShardStream` transform: the rows it reads become pretraining samples in its workers, ITM negatives drawn
    from the caption bank (`builder` is a `PretrainingDataset` over the bank; it holds the tokenizer, the image
    processor and the draws' seed)."""

    def __init__(self, builder):
        self.builder = builder

    def __call__(self, row, epoch):
        return self.builder.sample_from_row(row, row["index"], epoch, negatives=self.builder.texts)


@dataclass
class PretrainingData:
    """Training and validation data of a run. Map-style: `train` is indexed by the sampler. Streaming
    (`shard_sources`): `train` builds samples from streamed rows (`StreamSamples`) and `train_rows` is the caption
    bank; `stream()` gives the process's `ShardStream`."""

    train: PretrainingDataset
    val: PretrainingDataset
    processor: VLPProcessor
    collator: PretrainingCollator
    val_collator: PretrainingCollator
    train_rows: datasets.Dataset
    val_rows: datasets.Dataset
    shard_sources: tuple = ()
    source_report: SkipReport = field(default_factory=SkipReport)

    @property
    def holds_fn(self):
        """The world's truth per (caption, scene) that the training collator judges pairs with, or None."""
        collator = self.collator.collator if isinstance(self.collator, CollateWithGroups) else self.collator
        return collator.holds_fn

    @property
    def streaming(self):
        return bool(self.shard_sources)

    def loader(self, batch_sampler, num_workers=0):
        return torch.utils.data.DataLoader(
            EpochIndexed(self.train),
            batch_sampler=batch_sampler,
            collate_fn=self.collator,
            num_workers=num_workers,
            persistent_workers=num_workers > 0,
        )

    def stream(self, data_args, batch_size, seed, rank=0, world_size=1, gather=None):
        """This process's `ShardStream` over the training shards; batches come from `stream.loader(collator)`."""
        return wds.ShardStream(
            list(self.shard_sources),
            batch_size=batch_size,
            rank=rank,
            world_size=world_size,
            num_workers=data_args.num_workers,
            seed=seed,
            weights=data_args.weights(),
            samples_per_epoch=data_args.samples_per_epoch or None,
            shuffle_buffer=data_args.shuffle_buffer,
            max_pixels=data_args.max_pixels or None,
            transform=StreamSamples(self.train),
            gather=gather,
        )

    def placeholder_batch(self):
        """A one-sample validation batch: what a process whose micro-batch is empty runs, with its loss times zero,
        so that every process makes the same forward and backward passes (DDP and FSDP communicate in them)."""
        for index in range(len(self.val)):
            sample = self.val[index]
            if "skipped" not in sample:
                return self.val_collator([sample])
        raise ValueError("no readable validation sample to stand in for an empty micro-batch")


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


def source_names(sources):
    """A distinct name per source: the folder or file name, numbered when two sources share it."""
    names = []
    for source in sources:
        base = os.path.basename(os.path.normpath(source.path)) or source.kind
        name, number = base, 2
        while name in names:
            name, number = f"{base}#{number}", number + 1
        names.append(name)
    return names


def read_source(source, name, max_pixels=0):
    """(rows, SkipReport) of one caption or COCO source; images are checked for existence (and, with `max_pixels`,
    their headers opened once, so that non-images and huge images are skipped here rather than in every epoch)."""
    if not os.path.isfile(source.path):
        raise ValueError(f"{source.kind} source {source.path!r}: file not found")
    if not os.path.isdir(source.root):
        raise ValueError(f"{source.kind} source {source.path!r}: image root {source.root!r} is not a folder")
    reader = read_caption_file if source.kind == "captions" else read_coco_captions
    return reader(source.path, source.root, source=name, max_pixels=max_pixels or None)


def shard_rows(sources, limit, max_pixels=0):
    """The first readable samples of shard folders as map-style rows, `limit` in all, split evenly between the
    folders (validation from shards). Rows are numbered from 0 in `index`."""
    folders = [source.path for source in sources]
    columns = {"image": [], "captions": [], "source": [], "annotations": [], "scene": []}
    for folder, quota in zip(folders, mixture_quotas(int(limit), [1.0] * len(folders))):
        taken = 0
        for shard in wds.read_manifest(folder):
            if taken == quota:
                break
            for _, item in wds.read_shard(shard, max_pixels=max_pixels or None):
                if taken == quota:
                    break
                if "skipped" not in item:
                    for key, column in columns.items():
                        column.append(item.get(key))
                    taken += 1
    if not columns["image"]:
        raise ValueError(f"no readable samples in the shard folder(s) {folders}")
    if any(scene is None for scene in columns["scene"]):
        del columns["scene"]
    columns["index"] = list(range(len(columns["image"])))
    rows = datasets.Dataset.from_dict(columns)
    return rows.cast_column("image", datasets.Image(decode=False))


def _rows_of(sources, data_args, image_size, limit=None, seed_offset=0):
    """(rows, SkipReport) of map-style sources ('shapes', a folder, captions, coco; shards: their first `limit`)."""
    kind = sources[0].kind
    if kind == "shapes":
        return world_rows(data_args, seed_offset, limit, image_size), SkipReport()
    if kind == "folder":
        if not os.path.isdir(sources[0].path):
            raise FileNotFoundError(f"{sources[0].path!r}: expected 'shapes' or a folder written by `vlp data shapes`")
        rows = datasets.load_from_disk(sources[0].path)
        if isinstance(rows, datasets.DatasetDict):
            rows = next(iter(rows.values()))
        return (rows if limit is None else rows.select(range(min(limit, len(rows))))), SkipReport()
    if kind == "shards":
        return shard_rows(sources, limit or data_args.val_scenes, data_args.max_pixels), SkipReport()
    parts, report = read_sources(sources, data_args.max_pixels)
    rows, _ = concatenate_sources(parts)
    return (rows if limit is None else rows.select(range(min(limit, len(rows))))), report


def read_sources(sources, max_pixels=0):
    """({name: rows}, SkipReport) of caption / COCO sources, each read with `read_source`."""
    report, parts = SkipReport(), {}
    for source, name in zip(sources, source_names(sources)):
        rows, skipped = read_source(source, name, max_pixels)
        report.merge(skipped)
        parts[name] = rows
    return parts, report


def split_tail(parts, val_rows):
    """Hold out the last rows of each source for validation, `val_rows` in all, split evenly: (train parts, val
    parts)."""
    train, val = {}, {}
    for (name, rows), quota in zip(parts.items(), mixture_quotas(int(val_rows), [1.0] * len(parts))):
        quota = int(quota)
        if quota >= len(rows):
            raise ValueError(
                f"val_scenes={val_rows} takes {quota} validation rows from source {name!r}, which has "
                f"only {len(rows)} readable rows; lower val_scenes or give val_dataset"
            )
        train[name] = rows.select(range(len(rows) - quota))
        val[name] = rows.select(range(len(rows) - quota, len(rows)))
    return train, val


def load_real_rows(data_args, sources):
    """(train rows, validation rows, source sizes, SkipReport) of caption / COCO sources read into memory."""
    parts, report = read_sources(sources, data_args.max_pixels)
    val = None
    if not data_args.val_sources():
        parts, held_out = split_tail(parts, data_args.val_scenes)
        val, _ = concatenate_sources(held_out)
    for name, rows in parts.items():
        if len(rows) == 0:
            raise ValueError(f"source {name!r} has no readable rows (see source_report.json)")
    train, _ = concatenate_sources(parts)
    return train, val, [len(rows) for rows in parts.values()], report


def load_rows(data_args, image_size=64):
    """(train, validation) rows of the map-style sources: the world (a separately seeded validation world), a saved
    folder (its tail validates), caption / COCO sources (the tail of each, or `val_dataset`)."""
    rows, _, _ = _load(data_args, image_size)
    return rows


def _load(data_args, image_size):
    """((train, validation) rows, source sizes or None, SkipReport)."""
    sources, val_sources = data_args.sources(), data_args.val_sources()
    kind = sources[0].kind
    report, sizes, val = SkipReport(), None, None
    if kind == "shapes":
        train = world_rows(data_args, image_size=image_size)
    elif kind == "folder":
        if val_sources:
            train, val = _rows_of(sources, data_args, image_size)[0], None
        else:
            train, val = load_folder(data_args.dataset, data_args.val_scenes)
    else:
        train, val, sizes, report = load_real_rows(data_args, sources)
    if val_sources:
        val, skipped = _rows_of(val_sources, data_args, image_size, data_args.val_scenes, VALIDATION_SEED_OFFSET)
        report.merge(skipped)
    elif val is None:
        val = world_rows(data_args, VALIDATION_SEED_OFFSET, data_args.val_scenes, image_size)
    return (train, val), sizes, report


def write_source_report(path, report):
    """Per source: samples read, kept and skipped by reason, and every skipped entry (file:record or shard:key)."""
    with open(path, "w", encoding="utf-8") as handle:
        strict_json.dump(report.to_dict(), handle, indent=1)


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
    config = GroupConfig(
        rows=data_args.gitm_rows,
        cols=data_args.gitm_cols,
        own_probability=data_args.gitm_own_probability,
        distractors=data_args.gitm_distractors,
    )
    kwargs = {} if "scene" in rows.column_names else {"holds_fn": None}
    return GroupedMatchingDataset(
        rows,
        processor,
        config,
        mode=data_args.gitm_mode,
        patch_size=model_args.patch_size,
        image_size=model_args.image_size,
        seed=seed,
        max_length=data_args.gitm_max_length,
        strict=data_args.strict,
        **kwargs,
    )


def _read_rows(model_args, data_args, shard_sources):
    """(train rows, validation rows, source sizes or None, skip report). For shards, the train rows are the bank:
    captions (and scenes) of the first readable samples, for the tokenizer and ITM negatives."""
    if not shard_sources:
        (train_rows, val_rows), sizes, report = _load(data_args, model_args.image_size)
        return train_rows, val_rows, sizes, report
    bank = wds.caption_bank(list(shard_sources), data_args.negative_bank)
    train_rows = bank.add_column("image", [None] * len(bank))
    val_rows, _ = _rows_of(
        data_args.val_sources(), data_args, model_args.image_size, data_args.val_scenes, VALIDATION_SEED_OFFSET
    )
    return train_rows, val_rows, None, SkipReport()


def _processor(processor_dir, train_rows, model_args, data_args, accelerator):
    """The run's saved processor, or a new one (tokenizer trained on the train captions) saved by the main process."""
    if os.path.isdir(processor_dir):
        return VLPProcessor.from_pretrained(processor_dir)
    processor = build_processor(train_rows, model_args, data_args)
    if accelerator.is_main_process:
        processor.save_pretrained(processor_dir)
    return processor


def _collators(tokenizer, train_rows, model_args, data_args, seed, objectives, holds, hard_negatives, policy_masked):
    """(train collator, validation collator): the same fixed-rate masks, except that the train collator leaves the
    captions unmasked when the step draws MLM masks (attention-guided masking)."""
    objects = object_patches_for_scene if "scene" in train_rows.column_names else None
    masking = dict(
        mlm_probability=data_args.mlm_probability,
        mim_probability=data_args.mim_probability,
        mim_block=data_args.mim_block,
        mim_patch_size=model_args.patch_size if "mim" in objectives else None,
        # The world's truth per pair: hard negatives never draw a true pair, ITC never punishes one.
        holds_fn=holds if hard_negatives or "itc" in objectives else None,
        object_patches_fn=objects,
    )
    train_masking = dict(masking, mlm_probability=0.0) if "mlm" in policy_masked else masking
    collator = PretrainingCollator(tokenizer, seed=seed, **train_masking)
    return collator, PretrainingCollator(tokenizer, seed=VALIDATION_SEED_OFFSET, **masking)


def build_pretraining_data(
    model_args,
    data_args,
    seed,
    output_dir,
    accelerator,
    objectives=("mlm", "itm"),
    hard_negatives=False,
    policy_masked=(),
):
    """Datasets and processor for a run. The main process generates and saves; the others then load.

    `policy_masked`: the objectives ('mlm', 'mim') whose training masks the step draws (attention-guided masking);
    the training collator then leaves the captions unmasked. Validation always uses the collator's fixed-rate masks,
    so every run is measured on the same task.
    """
    processor_dir = os.path.join(output_dir, "processor")
    sources = data_args.sources()
    shard_sources = tuple(source.path for source in sources if source.streaming)
    if shard_sources and "gitm" in objectives:
        raise ValueError(
            "grouped matching (gitm) draws other rows at random and needs map-style data; it cannot "
            "train on streamed shards (dataset=shards:...)"
        )
    with accelerator.main_process_first():
        train_rows, val_rows, sizes, report = _read_rows(model_args, data_args, shard_sources)
        processor = _processor(processor_dir, train_rows, model_args, data_args, accelerator)
    holds = holds_for_scene if "scene" in train_rows.column_names else None
    # Concept words (colours, shapes, ...) mark the world's vocabulary: for the world itself and for real-source
    # runs whose rows carry its scenes (shards written from it); a saved folder keeps its earlier behaviour.
    world_like = sources[0].kind in ("shards", "captions", "coco") and holds is not None
    concepts = shapes_world.concept_words() if data_args.dataset == "shapes" or world_like else None
    common = dict(processor=processor, max_length=data_args.max_length, holds_fn=holds, concept_words=concepts)
    train = PretrainingDataset(
        train_rows, seed=seed, itm_probability=data_args.itm_probability, strict=data_args.strict, **common
    )
    if sizes is not None and data_args.weights() is not None:
        if "gitm" in objectives:
            raise ValueError(
                "grouped matching (gitm) indexes the rows directly and cannot train on a weighted mixture "
                "(source_weights); leave source_weights empty"
            )
        train = MixedEpochDataset(
            train, sizes, data_args.weights(), seed=seed, length=data_args.samples_per_epoch or None
        )
    val = PretrainingDataset(val_rows, seed=VALIDATION_SEED_OFFSET, itm_probability=0.5, **common)
    tokenizer = processor.tokenizer
    collator, val_collator = _collators(
        tokenizer, train_rows, model_args, data_args, seed, objectives, holds, hard_negatives, policy_masked
    )
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
        shard_sources=shard_sources,
        source_report=report,
    )
