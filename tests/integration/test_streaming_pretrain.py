"""`vlp pretrain` on real-data sources: WebDataset shards streamed end to end (exact resume after a crash, two
processes with two dataloader workers each reading every sample once per epoch, an empty micro-batch on one process
at an epoch's uneven end), and caption / COCO files whose bad samples are counted and listed while the run goes on.

Shards are written by `vlp data shards` (in process) from the synthetic world; runs go through the CLI in
subprocesses, as in test_pretrain_loop.py.
"""

import io
import json
import os
import sys
import tarfile
from collections import Counter

import datasets
import pytest
import torch
from launch import run as launch_run
from safetensors.torch import load_file

from vlp.processing.readers import webdataset as wds
from vlp.processing.readers.captions import CORRUPT_IMAGE, EMPTY_CAPTION, MISSING_IMAGE, NON_UTF8_CAPTION
from vlp.processing.worlds import shapes as shapes_world
from vlp.training import cli
from vlp.training.config import ConfigError, parse_config, parse_sources
from vlp.training.logging_utils import read_jsonl
from vlp.training.pretrain.checkpointing import list_checkpoints

TINY = {
    "hidden_size": 32,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "image_size": 32,
    "patch_size": 8,
    "vocab_size": 200,
    "val_scenes": 16,
    "per_device_batch_size": 8,
    "eval_batches": 2,
    "log_every": 1,
    "eval_every": 0,
    "save_every": 4,
    "warmup_steps": 2,
    "progress_bar": False,
    "tensorboard": False,
    "keep_checkpoints": 2,
    "shuffle_buffer": 0,
    "num_workers": 2,
    "record_samples": True,
    "negative_bank": 64,
}
SCENES = 46  # shards of 10, 10, 10, 10 and 6: uneven workers and processes


def run_pretrain(output_dir, env=None, launcher=None, check=True, **overrides):
    values = dict(TINY, output_dir=str(output_dir), **overrides)
    args = [item for key, value in values.items() for item in (f"--{key}", str(value))]
    command = launcher or [sys.executable, "-m", "vlp.training.cli"]
    full_env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    full_env.update(env or {})
    return launch_run(command + ["pretrain"] + args, env=full_env, timeout=300, check=check)


def train_records(output_dir):
    return [r for r in read_jsonl(os.path.join(output_dir, "metrics.jsonl")) if r["split"] == "train"]


def recorded(output_dir, rank=0):
    """(step, epoch, indices) of every micro-batch the process trained on."""
    return [
        (r["step"], r["epoch"], r["index"])
        for r in read_jsonl(os.path.join(output_dir, "samples", f"rank{rank}.jsonl"))
    ]


CORRUPT = 21  # the second sample of shard 00002.tar: its image bytes are replaced by garbage


def corrupt_image(shard_path, position):
    """Rewrite a shard with the image of its sample at `position` replaced by bytes that are not an image."""
    with tarfile.open(shard_path) as tar:
        members = [(member, tar.extractfile(member).read()) for member in tar.getmembers()]
    keys = sorted({wds.split_key(member.name)[0] for member, _ in members})
    with tarfile.open(shard_path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for member, data in members:
            key, extension = wds.split_key(member.name)
            if key == keys[position] and extension == "png":
                data = b"\x00 not an image"
                member.size = len(data)
            tar.addfile(member, io.BytesIO(data))


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """Training shards written by `vlp data shards --from shapes` (one image then corrupted), and the world cache
    for the validation world."""
    root = tmp_path_factory.mktemp("streaming")
    out = root / "train"
    assert (
        cli.main(
            [
                "data",
                "shards",
                "--from",
                "shapes",
                "--out",
                str(out),
                "--samples-per-shard",
                "10",
                "--num-scenes",
                str(SCENES),
                "--image-size",
                "32",
                "--seed",
                "3",
            ]
        )
        == 0
    )
    assert [s.samples for s in wds.read_manifest(out)] == [10, 10, 10, 10, 6]
    corrupt_image(out / "00002.tar", CORRUPT - 20)
    return {"dataset": f"shards:{out}", "val_dataset": "shapes", "cache_dir": str(root / "cache")}


@pytest.fixture(scope="module")
def uninterrupted(shards, tmp_path_factory):
    output = tmp_path_factory.mktemp("uninterrupted")
    run_pretrain(output, max_steps=10, **shards)  # 46 samples: 7 batches of 8 per epoch (padding included)
    return str(output)


def test_sources_are_parsed_and_checked():
    assert parse_sources("shards:/a,/b") == [parse_sources("shards:/a")[0], parse_sources("shards:/b")[0]]
    caption, coco = parse_sources("captions:/d/c.jsonl@/img,coco:/k/captions.json")
    assert (caption.kind, caption.path, caption.root) == ("captions", "/d/c.jsonl", "/img")
    assert (coco.kind, coco.root) == ("coco", "/k")  # without @ROOT, images are beside the file
    assert parse_sources("shapes")[0].kind == "shapes" and parse_sources("data/w")[0].kind == "folder"
    _, data, _ = parse_config(
        values={"dataset": ["shards:/a", "shards:/b"], "val_dataset": "shapes", "source_weights": [1, 3]}
    )
    assert data.dataset == "shards:/a,shards:/b" and data.weights() == [1.0, 3.0] and data.streaming()
    with pytest.raises(ConfigError, match="val_dataset.*samples cannot be held out of shards"):
        parse_config(values={"dataset": "shards:/a"})
    with pytest.raises(ConfigError, match="shards stream while caption and COCO files are read into memory"):
        parse_config(values={"dataset": "shards:/a,captions:/c@/r", "val_dataset": "shapes"})
    with pytest.raises(ConfigError, match=r"source_weights='1' .*one weight per source \(2"):
        parse_config(values={"dataset": "captions:/c@/r,coco:/k@/r", "source_weights": "1"})
    with pytest.raises(ConfigError, match="'shapes' and a `vlp data shapes` folder cannot be combined"):
        parse_config(values={"dataset": "shapes,shards:/a"})


def test_streamed_rows_become_samples_with_negatives_from_the_bank():
    """`sample_from_row` is what `__getitem__` returns for the dataset's own rows; for streamed rows (any index, any
    epoch) ITM negatives come from the bank, never hold for the row's scene and are never its own caption."""
    from vlp.processing.image_processing_vlp import VLPImageProcessor
    from vlp.processing.pretraining_data import PretrainingDataset
    from vlp.processing.processing_vlp import VLPProcessor
    from vlp.processing.tokenization import train_wordpiece_tokenizer
    from vlp.training.pretrain.data import StreamSamples, holds_for_scene

    rows = shapes_world.build_dataset(shapes_world.WorldConfig(num_scenes=40, seed=2, image_size=16))
    tokenizer = train_wordpiece_tokenizer((c for cs in rows["captions"] for c in cs), vocab_size=200)
    processor = VLPProcessor(VLPImageProcessor(size={"height": 16, "width": 16}), tokenizer)
    common = dict(processor=processor, seed=4, holds_fn=holds_for_scene, itm_probability=0.9)
    own = PretrainingDataset(rows.select(range(20)), **common)
    own.set_epoch(3)
    sample = own[5]
    again = own.sample_from_row(own.rows[5], 5, epoch=3)
    assert all(
        torch.equal(sample[k], again[k]) if torch.is_tensor(sample[k]) else sample[k] == again[k] for k in sample
    )

    bank = rows.select(range(20, 40)).select_columns(["captions", "scene"])
    builder = PretrainingDataset(bank.add_column("image", [None] * len(bank)), **common)
    transform = StreamSamples(builder)
    encoded = {tuple(builder.encode_caption(c)["input_ids"].tolist()): c for cs in bank["captions"] for c in cs}
    negatives = 0
    for i in range(20):
        row = dict(rows[i], index=1000 + i)
        sample = transform(row, 7)
        assert sample["index"] == 1000 + i and sample["epoch"] == 7
        if sample["itm_label"] == 0:
            caption = encoded[tuple(sample["itm_input_ids"].tolist())]  # a bank caption
            assert caption not in row["captions"] and not holds_for_scene(caption, row["scene"])
            negatives += 1
    assert negatives >= 12  # itm_probability 0.9 over 20 rows


def test_streaming_run_reads_each_sample_once_per_epoch(shards, uninterrupted):
    files = set(os.listdir(uninterrupted))
    assert {
        "model",
        "processor",
        "metrics.jsonl",
        "run.yaml",
        "final_metrics.json",
        "checkpoints",
        "source_report.json",
    } <= files
    records = train_records(uninterrupted)
    assert [r["step"] for r in records] == list(range(1, 11))
    assert all(0 <= r["data_wait_share"] <= 1 and r["lost_samples"] == 0 for r in records)
    per_epoch = wds.ShardStream(shards["dataset"][len("shards:") :], batch_size=8, num_workers=2).batches_per_epoch
    assert per_epoch == 7  # 2 workers: shards 10 + 10 + 6 (4 batches of 8, padded) and 10 + 10 (3 batches)
    assert [r["epoch"] for r in records] == [0] * per_epoch + [1] * (10 - per_epoch)
    batches = recorded(uninterrupted)
    first_epoch = [i for _, epoch, indices in batches if epoch == 0 for i in indices]
    assert sorted(first_epoch) == list(range(SCENES))  # every sample once, padding dropped
    # samples_seen counts real samples: the whole first epoch, then the second epoch's batches so far.
    seen = SCENES + sum(len(indices) for _, epoch, indices in batches if epoch == 1)
    assert records[-1]["samples_seen"] == seen
    second = [i for _, epoch, indices in batches if epoch == 1 for i in indices]
    assert len(set(second)) == len(second)
    # The corrupt image: skipped, counted in the log, listed with its reason and source, and the run went on.
    listed = read_jsonl(os.path.join(uninterrupted, "skipped_samples.jsonl"))
    assert {r["index"] for r in listed} == {CORRUPT} and all("corrupt image" in r["reason"] for r in listed)
    assert records[-1]["skipped_samples"] == len(listed) == first_epoch.count(CORRUPT) + second.count(CORRUPT)
    with open(os.path.join(uninterrupted, "source_report.json"), encoding="utf-8") as handle:
        assert json.load(handle)["counts"] == {"train": {CORRUPT_IMAGE: len(listed)}}


def test_streaming_resume_after_a_crash_equals_the_uninterrupted_run(shards, uninterrupted, tmp_path):
    crashed = run_pretrain(tmp_path, max_steps=10, check=False, env={"VLP_FAULT_AT_STEP": "7"}, **shards)
    assert crashed.returncode != 0 and "fault injected at step 7" in crashed.stderr
    assert [step for step, _ in list_checkpoints(tmp_path)] == [4]  # mid-epoch: the stream resumes from cursors
    run_pretrain(tmp_path, max_steps=10, **shards)
    expected, resumed = (load_file(os.path.join(d, "model", "model.safetensors")) for d in (uninterrupted, tmp_path))
    assert expected.keys() == resumed.keys()
    for name in expected:
        assert torch.equal(expected[name], resumed[name]), name
    losses = [[(r["step"], r["mlm_loss"], r["itm_loss"]) for r in train_records(d)] for d in (uninterrupted, tmp_path)]
    assert losses[0] == losses[1]
    # The resumed run trained on exactly the samples the uninterrupted one did, none of them twice.
    assert recorded(tmp_path) == recorded(uninterrupted)
    # ... and lists the unreadable ones once, as the uninterrupted run does
    skipped = [read_jsonl(os.path.join(d, "skipped_samples.jsonl")) for d in (uninterrupted, tmp_path)]
    assert skipped[0] and skipped[0] == skipped[1]


def test_resume_with_a_shuffle_buffer_loses_at_most_one_buffer_per_worker_and_logs_it(shards, tmp_path):
    buffer, options = 6, dict(shards, max_steps=7, shuffle_buffer=6)  # 7 steps: exactly the first epoch
    crashed = run_pretrain(tmp_path, check=False, env={"VLP_FAULT_AT_STEP": "5"}, **options)
    assert crashed.returncode != 0
    run_pretrain(tmp_path, **options)
    records = train_records(tmp_path)
    lost = records[-1]["lost_samples"]
    assert [r["lost_samples"] for r in records] == [0] * 4 + [lost] * 3  # logged from the resumed steps on
    read = [i for _, epoch, indices in recorded(tmp_path) if epoch == 0 for i in indices]
    assert len(read) == len(set(read))  # nothing read twice
    assert SCENES - len(read) == lost and 0 < lost <= 2 * buffer  # at most one buffer per worker, all counted
    assert records[-1]["samples_seen"] == len(read)


@pytest.mark.distributed
def test_two_processes_two_workers_read_every_sample_once_and_survive_an_empty_micro_batch(shards, tmp_path):
    """Shards of 10, 10, 10, 10, 6 over 2 processes x 2 workers (batch 4): in each epoch one process has a batch
    of padding only while the other trains on real samples; ITC (gathered over processes) is left out of the
    steps whose micro-batches differ in size."""
    batch = 4
    stream = wds.ShardStream(
        shards["dataset"][len("shards:") :], batch_size=batch, rank=0, world_size=2, num_workers=2, seed=0
    )
    steps = 2 * stream.batches_per_epoch
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "vlp.training.cli",
    ]
    run_pretrain(
        tmp_path,
        launcher=torchrun,
        max_steps=steps,
        per_device_batch_size=batch,
        save_every=0,
        objectives="mlm,itm,itc",
        **shards,
    )
    per_rank = [recorded(tmp_path, rank) for rank in (0, 1)]
    assert [len(batches) for batches in per_rank] == [steps, steps]  # the same number of steps: no hang
    for epoch in (0, 1):
        read = [i for batches in per_rank for _, e, indices in batches if e == epoch for i in indices]
        assert sorted(read) == list(range(SCENES)), epoch
    empty = [(rank, step) for rank, batches in enumerate(per_rank) for step, _, indices in batches if not indices]
    assert empty, "the shard layout should leave one process a batch of padding only"
    records = train_records(tmp_path)
    assert len(records) == steps and all(isinstance(r["mlm_loss"], float) for r in records)
    assert records[-1]["samples_seen"] == 2 * SCENES
    skipped_itc = [r["step"] for r in records if r["itc_skipped_share"] > 0]
    assert skipped_itc and all("itc_loss" not in records[s - 1] for s in skipped_itc)
    assert sum("itc_loss" in r for r in records) >= steps // 2


# ---------------------------------------------------------------------------------------------------------------
# Caption and COCO files with bad samples
# ---------------------------------------------------------------------------------------------------------------


def _write_images(world, folder, count):
    """The world's first images as PNG files: image_<i>.png."""
    os.makedirs(folder, exist_ok=True)
    rows = world.cast_column("image", datasets.Image(decode=False))
    names = []
    for i in range(count):
        name = f"image_{i}.png"
        with open(os.path.join(folder, name), "wb") as handle:
            handle.write(rows[i]["image"]["bytes"])
        names.append(name)
    return names


def test_caption_and_coco_sources_skip_count_and_list_bad_samples(tmp_path, shards):
    world = shapes_world.build_dataset(shapes_world.WorldConfig(num_scenes=47, seed=5, image_size=32))
    albef_root, coco_root = tmp_path / "albef_images", tmp_path / "coco_images"
    albef_names = _write_images(world.select(range(23)), albef_root, 23)
    coco_names = _write_images(world.select(range(23, 47)), coco_root, 24)
    # ALBEF / BLIP layout: a JSON list of {"image", "caption", "image_id"}. Bad records first: a missing file, an
    # empty caption, a garbage image (its header does not parse) and a truncated PNG (its header parses: it only
    # fails when decoded in the loader).
    (albef_root / "garbage.png").write_bytes(b"\x00 not an image")
    (albef_root / "cut.png").write_bytes((albef_root / albef_names[0]).read_bytes()[:60])
    records = [
        {"image": "missing.png", "caption": "there is a red circle", "image_id": "gone"},
        {"image": albef_names[1], "caption": "   ", "image_id": "blank"},
        {"image": "garbage.png", "caption": "there is a blue star", "image_id": "bad"},
        {"image": "cut.png", "caption": "there is a green heart", "image_id": "cut"},
    ]
    records += [
        {"image": name, "caption": world[i]["captions"][0], "image_id": f"a{i}"} for i, name in enumerate(albef_names)
    ]
    albef = tmp_path / "pretrain.json"
    albef.write_text(json.dumps(records), encoding="utf-8")
    # COCO captions layout, with one caption that is not UTF-8 (written as raw Latin-1 bytes).
    images = [{"id": 100 + i, "file_name": name, "width": 32, "height": 32} for i, name in enumerate(coco_names)]
    annotations = [
        {"id": 1000 + i, "image_id": 100 + i, "caption": world[23 + i]["captions"][0]} for i in range(len(coco_names))
    ]
    annotations.append({"id": 9999, "image_id": 100, "caption": "CAFE_PLACEHOLDER"})
    text = json.dumps({"images": images, "annotations": annotations}).encode("utf-8")
    coco = tmp_path / "captions_train2017.json"
    coco.write_bytes(text.replace(b"CAFE_PLACEHOLDER", b"caf\xe9 au lait"))

    # 24 readable rows per source, the last 4 of each validate: 40 training rows, mixed 1:1 in epochs of 40, that is
    # every row once in the 5 steps of batch 8.
    output = tmp_path / "run"
    run_pretrain(
        output,
        max_steps=5,
        dataset=f"captions:{albef}@{albef_root},coco:{coco}@{coco_root}",
        source_weights="1,1",
        samples_per_epoch=40,
        val_scenes=8,
        num_workers=0,
        cache_dir=shards["cache_dir"],
    )
    with open(output / "source_report.json", encoding="utf-8") as handle:
        report = json.load(handle)
    assert report["counts"] == {
        "pretrain.json": {MISSING_IMAGE: 1, EMPTY_CAPTION: 1, CORRUPT_IMAGE: 1},
        "captions_train2017.json": {NON_UTF8_CAPTION: 1},
    }
    assert {entry["where"].rsplit(":", 1)[-1] for entry in report["entries"]} == {
        "record 0",
        "record 1",
        "record 2",
        "annotation 9999",
    }
    assert report["read"] == {"pretrain.json": 27, "captions_train2017.json": 25}
    assert report["kept"] == {"pretrain.json": 24, "captions_train2017.json": 24}
    # The truncated image passes the header check; decoding it in the loader fails: skipped, counted, listed.
    listed = read_jsonl(os.path.join(output, "skipped_samples.jsonl"))
    assert len(listed) == 1 and "cut.png" in listed[0]["reason"]
    records = train_records(output)
    assert len(records) == 5 and records[-1]["skipped_samples"] == 1
    assert records[-1]["samples_seen"] == 40
    trained = [i for _, _, indices in recorded(output) for i in indices]
    assert sorted(trained) == list(range(40))  # the mixture of two equal shares: every training row once


def test_vlp_data_shards_from_a_caption_file(tmp_path):
    world = shapes_world.build_dataset(shapes_world.WorldConfig(num_scenes=5, seed=1, image_size=16))
    names = _write_images(world, tmp_path / "images", 5)
    records = [{"image": name, "caption": world[i]["captions"][:2]} for i, name in enumerate(names)]
    records.append({"image": "missing.png", "caption": "there is a red circle"})
    (tmp_path / "c.jsonl").write_text("\n".join(json.dumps(r) for r in records), encoding="utf-8")
    out = tmp_path / "shards"
    assert (
        cli.main(
            [
                "data",
                "shards",
                "--from",
                f"captions:{tmp_path / 'c.jsonl'}@{tmp_path / 'images'}",
                "--out",
                str(out),
                "--samples-per-shard",
                "2",
            ]
        )
        == 0
    )
    rows = [row for shard in wds.read_manifest(out) for _, row in wds.read_shard(shard)]
    assert [row["captions"] for row in rows] == [world[i]["captions"][:2] for i in range(5)]
    with open(out / "skipped_samples.json", encoding="utf-8") as handle:
        assert Counter(json.load(handle)["counts"]["shards"]) == {MISSING_IMAGE: 1}
    assert cli.main(["data", "shards", "--from", "shards:/x", "--out", str(out)]) == 2  # not a reader
