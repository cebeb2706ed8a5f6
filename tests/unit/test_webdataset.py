"""WebDataset shards: writing, streaming to ranks x dataloader workers exactly once, bad data, resume, order.

Ranks are simulated one after another in this process, each with a real DataLoader and two worker processes.
"""

import io
import json
import os
import tarfile
from collections import Counter

import datasets
import numpy as np
import PIL.Image
import pytest
import torch

from vlp.processing.pretraining_data import decode_image
from vlp.processing.readers import webdataset as wds
from vlp.processing.readers.captions import CORRUPT_IMAGE, EMPTY_CAPTION, HUGE_IMAGE, NON_UTF8_CAPTION
from vlp.processing.worlds import shapes as shapes_world

NUM_SCENES = 26  # 8 shards of 3 and one of 2: uneven workers and ranks
PER_SHARD = 3


@pytest.fixture(scope="module")
def world():
    return shapes_world.build_dataset(shapes_world.WorldConfig(num_scenes=NUM_SCENES, seed=0, image_size=16))


@pytest.fixture(scope="module")
def shard_dir(world, tmp_path_factory):
    out = tmp_path_factory.mktemp("shapes") / "shapes"
    written = wds.write_shards(world, out, PER_SHARD)
    assert written.report.entries == []
    return str(out)


def run_rank(
    folder, rank, world_size=2, num_workers=2, batch_size=2, epoch=0, state=None, stop_after=None, **stream_args
):
    """Iterate one rank's loader: (batches as lists of (index, padding), the stream)."""
    stream = wds.ShardStream(
        folder, batch_size=batch_size, rank=rank, world_size=world_size, num_workers=num_workers, **stream_args
    )
    stream.set_epoch(epoch)
    if state is not None:
        stream.load_state_dict(state)
    batches = []
    for batch in stream.loader():
        stream.observe(batch)
        batches.append([sample["index"] for sample in batch["samples"]])
        assert len(batch["stream_positions"]) == batch_size  # padding keeps every batch whole
        if stop_after is not None and len(batches) == stop_after:
            break
    return batches, stream


def flat(batches):
    return [index for batch in batches for index in batch]


def test_write_shards_img2dataset_layout_and_manifest(world, shard_dir):
    with open(os.path.join(shard_dir, wds.MANIFEST_NAME), encoding="utf-8") as handle:
        manifest = json.load(handle)
    assert [s["samples"] for s in manifest["shards"]] == [3] * 8 + [2]
    assert manifest["samples"] == NUM_SCENES and manifest["shards"][0]["name"] == "00000.tar"
    with tarfile.open(os.path.join(shard_dir, "00001.tar")) as tar:
        assert tar.getnames()[:4] == ["000010.png", "000010.txt", "000010.json", "000011.png"]
        meta = json.load(tar.extractfile("000011.json"))
        assert tar.extractfile("000011.txt").read().decode() == world[4]["captions"][0]
    assert meta["captions"] == world[4]["captions"] and meta["index"] == 4 and meta["key"] == "000011"
    assert meta["scene"] == world[4]["scene"]

    # Read back: the same rows (image bytes untouched, all captions, the scene for the world's truth).
    shards = wds.read_manifest(shard_dir)
    rows = [row for shard in shards for _, row in wds.read_shard(shard)]
    assert [row["index"] for row in rows] == list(range(NUM_SCENES))
    assert rows[4]["captions"] == world[4]["captions"] and rows[4]["scene"] == world[4]["scene"]
    stored = world.cast_column("image", datasets.Image(decode=False))[4]["image"]["bytes"]
    assert rows[4]["image"]["bytes"] == stored
    assert rows[4]["image"]["path"] == "00001.tar/000011.png" and rows[4]["source"] == "shapes"
    # Starting inside a shard passes over the earlier samples.
    assert [offset for offset, _ in wds.read_shard(shards[1], start=2)] == [2]


def test_plan_pads_ranks_to_equal_batches():
    shards = [wds.Shard(f"/x/{i}.tar", f"{i}.tar", n, "s", 0) for i, n in enumerate([3, 3, 3, 3, 3, 3, 3, 3, 2])]
    plan = wds.plan_epoch(shards, world_size=2, num_workers=2, batch_size=2)
    # Shard j -> rank j % 2, worker (j // 2) % 2.
    assert [s.name for s in plan[(0, 0)].shards] == ["0.tar", "4.tar", "8.tar"]
    assert [s.name for s in plan[(1, 1)].shards] == ["3.tar", "7.tar"]
    assert {key: (p.samples, p.items) for key, p in plan.items()} == {
        (0, 0): (8, 8),
        (0, 1): (6, 6),
        (1, 0): (6, 8),
        (1, 1): (6, 6),
    }  # rank 1 gets one padding batch
    for rank in (0, 1):
        assert sum(plan[(rank, w)].items for w in (0, 1)) == 14


def test_too_few_shards_refused(shard_dir, tmp_path, world):
    small = tmp_path / "small"
    wds.write_shards(world.select(range(9)), small, 3)  # 3 shards
    with pytest.raises(
        ValueError,
        match=r"3 shard\(s\) cannot feed 2 process\(es\) x 2 dataloader worker\(s\).*"
        r"at least 4 shards are needed",
    ):
        wds.ShardStream(str(small), batch_size=2, rank=0, world_size=2, num_workers=2)
    wds.ShardStream(str(small), batch_size=2, rank=0, world_size=3, num_workers=0)  # 3 x 1 is fine


def test_two_ranks_two_workers_read_every_sample_once_per_epoch(shard_dir):
    orders = []
    for epoch in (0, 1):
        per_rank = [run_rank(shard_dir, rank, epoch=epoch, seed=5) for rank in (0, 1)]
        counts = [len(batches) for batches, _ in per_rank]
        assert counts[0] == counts[1] == per_rank[0][1].batches_per_epoch  # the same steps on every rank
        read = flat(per_rank[0][0]) + flat(per_rank[1][0])
        assert sorted(read) == list(range(NUM_SCENES))  # every sample exactly once, padding dropped
        assert sum(len(b) < 2 for batches, _ in per_rank for b in batches) >= 1  # some padding was needed
        orders.append(read)
    assert orders[0] != orders[1]


def test_order_is_deterministic_per_seed_and_epoch(shard_dir):
    def order(epoch, seed, buffer):
        batches, _ = run_rank(shard_dir, 0, world_size=1, num_workers=0, epoch=epoch, seed=seed, shuffle_buffer=buffer)
        return flat(batches)

    for buffer in (0, 4):
        first = order(0, 1, buffer)
        assert sorted(first) == list(range(NUM_SCENES))
        assert order(0, 1, buffer) == first
        assert order(1, 1, buffer) != first
        assert order(0, 2, buffer) != first
    assert order(0, 1, 4) != order(0, 1, 0)  # the buffer shuffles inside a worker


def jpeg_bytes(size=(6, 6), noise=False):
    pixels = np.full((size[1], size[0], 3), 120, dtype=np.uint8)
    if noise:  # incompressible: the entropy-coded data is most of the file, after a complete header
        pixels = np.random.default_rng(0).integers(0, 256, pixels.shape, dtype=np.uint8)
    buffer = io.BytesIO()
    PIL.Image.fromarray(pixels).save(buffer, format="JPEG")
    return buffer.getvalue()


def add(tar, name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def img2dataset_shard(path, samples):
    """A shard as img2dataset writes it: key.jpg, key.txt, key.json (url, caption, status, ...)."""
    with tarfile.open(path, "w") as tar:
        for key, image, caption in samples:
            add(tar, f"{key}.jpg", image)
            add(tar, f"{key}.txt", caption)
            meta = {
                "url": f"http://example.invalid/{key}.jpg",
                "caption": None,
                "key": key,
                "status": "success",
                "error_message": None,
                "width": 6,
                "height": 6,
                "original_width": 12,
                "original_height": 12,
            }
            add(tar, f"{key}.json", json.dumps(meta).encode())


def test_build_manifest_for_img2dataset_shards(tmp_path):
    folder = tmp_path / "laion"
    folder.mkdir()
    img2dataset_shard(folder / "00000.tar", [(f"0000000{i}", jpeg_bytes(), f"photo {i}".encode()) for i in range(3)])
    img2dataset_shard(folder / "00001.tar", [("000010000", jpeg_bytes(), b"a last photo")])
    manifest, report = wds.build_manifest(folder)
    assert [s["samples"] for s in manifest["shards"]] == [3, 1] and report.entries == []
    batches, _ = run_rank(str(folder), 0, world_size=1, num_workers=0, batch_size=4)
    rows = [row for shard in wds.read_manifest(folder) for _, row in wds.read_shard(shard)]
    assert sorted(flat(batches)) == [0, 1, 2, 3]
    assert rows[3]["captions"] == ["a last photo"] and rows[3]["source"] == "laion"
    assert json.loads(rows[0]["annotations"])["url"] == "http://example.invalid/00000000.jpg"


def test_bad_samples_are_counted_listed_per_source_and_the_run_goes_on(tmp_path, shard_dir):
    folder = tmp_path / "web"
    folder.mkdir()
    good = jpeg_bytes()
    noisy = jpeg_bytes(size=(30, 30), noise=True)
    truncated_jpeg = noisy[: len(noisy) - 300]  # a complete header: only a full decode finds it
    img2dataset_shard(
        folder / "00000.tar",
        [
            ("000000000", good, b"a fine photo"),
            ("000000001", b"\x00not an image at all", b"garbage image"),
            ("000000002", good, b""),  # empty caption
            ("000000003", good, b"caf\xe9 au lait"),  # Latin-1: not UTF-8
        ],
    )
    img2dataset_shard(
        folder / "00001.tar",
        [
            ("000010000", jpeg_bytes(size=(64, 64)), b"a huge photo"),  # above max_pixels
            ("000010001", truncated_jpeg, b"cut short"),
            ("000010002", good, b"another fine photo"),
        ],
    )
    img2dataset_shard(folder / "00002.tar", [(f"00002000{i}", good, b"in a shard that gets cut") for i in range(4)])
    img2dataset_shard(folder / "00003.tar", [("000030000", good, b"in a shard that disappears")])
    wds.build_manifest(folder, source="web")
    with tarfile.open(folder / "00002.tar") as tar:
        cut = tar.getmember("000020002.jpg").offset
    data = (folder / "00002.tar").read_bytes()
    (folder / "00002.tar").write_bytes(data[:cut])  # truncated after its first two samples
    os.remove(folder / "00003.tar")

    def transform(row, epoch):  # decodes fully, as the pretraining transform does
        return {"index": row["index"], "epoch": epoch, "size": decode_image(row["image"]).size}

    stream = wds.ShardStream(
        [str(folder), shard_dir], batch_size=4, num_workers=0, max_pixels=1000, transform=transform
    )
    kept = []
    for batch in stream.loader():
        stream.observe(batch)
        kept += [sample["index"] for sample in batch["samples"] if "skipped" not in sample]
    web_good = {0, 6, 7, 8}  # global indices: web's 12 samples come first, then shapes' 26
    assert sorted(kept) == sorted(web_good | set(range(12, 12 + NUM_SCENES)))
    assert stream.report.counts() == {
        "web": {
            CORRUPT_IMAGE: 1,
            EMPTY_CAPTION: 1,
            NON_UTF8_CAPTION: 1,
            HUGE_IMAGE: 1,
            wds.UNREADABLE_SAMPLE: 1,
            wds.CORRUPT_SHARD: 2,
            wds.SHARD_MISSING: 1,
        }
    }
    by_where = {entry["where"]: entry["reason"] for entry in stream.report.entries}
    assert by_where["00000.tar:000000003"] == NON_UTF8_CAPTION
    assert by_where["00001.tar:000010001"] == wds.UNREADABLE_SAMPLE
    assert by_where["00002.tar#2"] == by_where["00002.tar#3"] == wds.CORRUPT_SHARD
    assert by_where["00003.tar#0"] == wds.SHARD_MISSING


def test_resume_without_buffer_continues_with_exactly_the_unseen_samples(shard_dir):
    full = {rank: run_rank(shard_dir, rank, seed=3)[0] for rank in (0, 1)}
    states = {}
    before = {}
    for rank in (0, 1):
        before[rank], stream = run_rank(shard_dir, rank, seed=3, stop_after=3)
        states[rank] = json.loads(json.dumps(stream.state_dict()))  # the state is plain JSON
    merged = {**states[0], "ranks": {**states[0]["ranks"], **states[1]["ranks"]}}  # what `gather` produces
    read = []
    for rank in (0, 1):
        after, resumed = run_rank(shard_dir, rank, seed=3, state=merged)
        assert resumed.lost_on_resume == 0
        assert len(before[rank]) + len(after) == len(full[rank])  # equal step counts on both ranks
        assert sorted(flat(before[rank]) + flat(after)) == sorted(flat(full[rank]))
        assert set(flat(before[rank])).isdisjoint(flat(after))
        read += flat(before[rank]) + flat(after)
    assert sorted(read) == list(range(NUM_SCENES))

    with pytest.raises(ValueError, match="no cursors for rank 1"):
        wds.ShardStream(shard_dir, batch_size=2, rank=1, world_size=2, num_workers=2, seed=3).load_state_dict(states[0])
    with pytest.raises(ValueError, match="cannot resume the stream mid-epoch: workers was 2 and is 1"):
        wds.ShardStream(shard_dir, batch_size=2, rank=0, world_size=2, num_workers=0, seed=3).load_state_dict(merged)


def test_resume_with_a_shuffle_buffer_loses_at_most_one_buffer_per_worker(shard_dir):
    buffer = 4
    full, _ = run_rank(shard_dir, 0, seed=9, shuffle_buffer=buffer)
    before, stream = run_rank(shard_dir, 0, seed=9, shuffle_buffer=buffer, stop_after=2)
    after, resumed = run_rank(shard_dir, 0, seed=9, shuffle_buffer=buffer, state=stream.state_dict())
    assert len(before) + len(after) == len(full)  # lost samples are replaced by padding: no uneven end
    assert set(flat(before)).isdisjoint(flat(after))
    missing = set(flat(full)) - set(flat(before)) - set(flat(after))
    assert len(missing) == resumed.lost_on_resume == resumed.lost_total
    assert 0 < resumed.lost_on_resume <= buffer * 2  # at most one buffer per worker
    assert resumed.state_dict()["ranks"]["0"]["lost_total"] == len(missing)


def test_state_at_epoch_start_loads_under_any_layout(shard_dir):
    stream = wds.ShardStream(shard_dir, batch_size=2, rank=0, world_size=2, num_workers=2, seed=1)
    stream.set_epoch(4)
    other = wds.ShardStream(shard_dir, batch_size=3, num_workers=0, seed=1)
    other.load_state_dict(stream.state_dict())
    assert other.epoch == 4 and len(other) == 27  # 26 samples padded to 9 batches of 3


def test_weighted_sources_mix_per_shard():
    big = [wds.Shard(f"/a/{i}.tar", f"{i}.tar", 10, "big", 10 * i) for i in range(10)]
    small = [wds.Shard(f"/b/{i}.tar", f"{i}.tar", 10, "small", 100 + 10 * i) for i in range(2)]
    order = wds.epoch_shards([big, small], seed=0, epoch=0, weights=[1, 1], samples_per_epoch=100)
    by_source = Counter(shard.source for shard in order)
    assert by_source == {"big": 5, "small": 5}  # 50 samples each; the small source is cycled
    assert len({shard.name for shard in order if shard.source == "big"}) == 5  # no repeat within a pass
    assert max(Counter(s.name for s in order if s.source == "small").values()) == 3
    assert order == wds.epoch_shards([big, small], 0, 0, [1, 1], 100)
    assert order != wds.epoch_shards([big, small], 0, 1, [1, 1], 100)
    assert sorted(wds.epoch_shards([big, small], 0, 0), key=lambda s: s.first_index) == big + small


def test_stream_with_a_real_collate_function(shard_dir):
    def collate(samples):
        if not samples:  # a batch of padding only
            return {"index": torch.zeros(0, dtype=torch.long)}
        return {
            "index": torch.tensor([s["index"] for s in samples], dtype=torch.long),
            "pixels": torch.stack([torch.from_numpy(np.asarray(decode_image(s["image"]))) for s in samples]),
        }

    stream = wds.ShardStream(shard_dir, batch_size=5, num_workers=2, seed=0)
    batches = list(stream.loader(collate))
    assert len(batches) == len(stream) // 5 == stream.batches_per_epoch
    assert sorted(torch.cat([b["index"] for b in batches]).tolist()) == list(range(NUM_SCENES))
    assert batches[0]["pixels"].shape[1:] == (16, 16, 3)


def test_caption_bank_takes_the_first_readable_samples(world, shard_dir, tmp_path):
    bank = wds.caption_bank(shard_dir, 5)
    assert bank["captions"] == world["captions"][:5]
    assert bank["scene"] == world["scene"][:5]
    wds.write_shards(world.select(range(20, 26)), tmp_path / "tail", 2, source="tail")
    both = wds.caption_bank([shard_dir, str(tmp_path / "tail")], 4)  # split evenly between the sources
    assert both["captions"] == world["captions"][:2] + world["captions"][20:22]
